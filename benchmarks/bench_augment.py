"""Benchmark: augment 584 image/mask pairs x4 (GeoTIFF and JPEG images, GeoTIFF masks).

    .venv/bin/python benchmarks/bench_augment.py [--quick] [--pairs N] [--copies 4]

A synthetic RGB scene (EPSG:32606, 0.75 m) is cut into 256x256 tiles by the gridtiles engine
(GeoTIFF + JPEG, as published); masks are cut from the scene's ground truth with GDAL. To reach
584 pairs without generating a huge scene, the scene is repeated 3 x 4 times in a VRT mosaic
(the pixels repeat; the work per pair does not change). Then, each in its own child process
(time and peak memory, ru_maxrss):

- gullyseg: ``augment.augment_dataset`` (COPIES variants per pair: one geometric transform and a
  brightness factor, the published set), including the manifest, card and radiometric range;
- peer (naive numpy + GDAL loop, same variant plan): for every variant, open the source image
  and mask again, read them, transform with numpy, and write each file with GDAL's CreateCopy
  from a MEM dataset; no manifest.

Prints seconds per sample (one variant = image .tif + image .jpg + mask .tif) for both, the
ratio peer / gullyseg, and the peak memory of each child. --quick uses 60 pairs.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _register():
    """Import the checkout as package ``gullyseg`` (tools/gullyseg_cli.py does it for every tool)."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from gullyseg_cli import register_package

    register_package()


def build(workdir, pairs, scene_size, repeat):
    """A dataset folder with ``pairs`` kept tiles (+ masks); cached in ``workdir``."""
    from osgeo import gdal

    from gullyseg.processing.engine import dataset, synthetic, tiling

    gdal.UseExceptions()
    root = os.path.join(workdir, f"dataset_{pairs}")
    if os.path.exists(os.path.join(root, "ready")):
        return root
    scene = os.path.join(workdir, f"scene_{scene_size}.tif")
    mask = os.path.join(workdir, f"scene_{scene_size}_mask.tif")
    if not os.path.exists(mask):
        print(f"making a {scene_size}x{scene_size} synthetic scene ...", flush=True)
        synthetic.make_scene(scene, width=scene_size, height=scene_size, seed=11, mask_path=mask, overwrite=True)
    mosaics = []
    for src, name in ((scene, "mosaic.vrt"), (mask, "mosaic_mask.vrt")):
        ds = gdal.Open(src)
        gt = ds.GetGeoTransform()
        parts = []
        for r in range(repeat[0]):
            for c in range(repeat[1]):
                part = os.path.join(workdir, f"{name}_{r}_{c}.vrt")
                x0 = gt[0] + c * scene_size * gt[1]
                y0 = gt[3] + r * scene_size * gt[5]
                gdal.Translate(part, src, format="VRT",
                               outputBounds=[x0, y0, x0 + scene_size * gt[1], y0 + scene_size * gt[5]])
                parts.append(part)
        out = os.path.join(workdir, name)
        gdal.BuildVRT(out, parts)
        mosaics.append(out)
        ds = None
    shutil.rmtree(root, ignore_errors=True)
    tiling.grid_tiles(mosaics[0], root, tile_size=256, fmt=tiling.FORMAT_BOTH, scene_name="bench")
    index = os.path.join(root, dataset.INDEX_NAME)
    records, _ = dataset.read_index(index)
    if len(records) < pairs:
        raise SystemExit(f"only {len(records)} tiles; need {pairs}")
    os.makedirs(os.path.join(root, "masks"))
    updates = {}
    for i, rec in enumerate(records):
        keep = i < pairs
        updates[rec["tile_id"]] = {"status": "keep" if keep else "reject"}
        if keep:
            rel = f"masks/{rec['tile_id']}.tif"
            gdal.Translate(os.path.join(root, rel), mosaics[1],
                           srcWin=[rec["x_off"], rec["y_off"], rec["width"], rec["height"]],
                           creationOptions=["COMPRESS=DEFLATE"])
            updates[rec["tile_id"]]["mask"] = rel
    dataset.update_index(index, updates)
    open(os.path.join(root, "ready"), "w").close()
    return root


def child_ours(root, copies):
    from gullyseg.processing.engine import augment

    for leftover in ("augment.json",):
        if os.path.exists(os.path.join(root, leftover)):
            os.remove(os.path.join(root, leftover))
    shutil.rmtree(os.path.join(root, "augmented"), ignore_errors=True)
    start = time.perf_counter()
    result = augment.augment_dataset(root, copies=copies, seed=42)
    return time.perf_counter() - start, result["count"]


def child_peer(root, copies):
    """Naive loop: re-open and re-read the sources for every variant, CreateCopy each output."""
    import numpy as np
    from osgeo import gdal

    from gullyseg.processing.engine import augment, split

    gdal.UseExceptions()
    paths, _, tiles = split.collect_tiles(root)
    out_dir = os.path.join(root, "peer")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    ranges = dict(augment.DEFAULT_RANGES)
    mem = gdal.GetDriverByName("MEM")
    start = time.perf_counter()
    count = 0
    for t in tiles:
        for c in range(1, copies + 1):
            vid = augment.variant_id(t.tile_id, c, copies)
            steps = augment.plan_variant(t.tile_id, c, augment.DEFAULT_TRANSFORMS, ranges, 42)
            op = steps[0]["op"]
            factor = steps[1]["factor"]
            for rel, driver, opts, radiometric in (
                (t.images["tif"], "GTiff", ["COMPRESS=DEFLATE"], True),
                (t.images["jpg"], "JPEG", ["QUALITY=95"], True),
                (t.mask, "GTiff", ["COMPRESS=DEFLATE"], False),
            ):
                src = gdal.Open(paths.abs(rel))
                arr = src.ReadAsArray()
                arr = arr[None] if arr.ndim == 2 else arr
                arr = augment.geometric(arr, op)
                if radiometric:
                    nodata = src.GetRasterBand(1).GetNoDataValue()
                    scaled = np.clip(np.rint(arr * factor), 0, 255).astype(arr.dtype)
                    if nodata is not None:
                        scaled[arr == nodata] = arr[arr == nodata]
                    arr = scaled
                tmp = mem.Create("", arr.shape[2], arr.shape[1], arr.shape[0], src.GetRasterBand(1).DataType)
                for b in range(arr.shape[0]):
                    tmp.GetRasterBand(b + 1).WriteArray(arr[b])
                ext = os.path.splitext(rel)[1]
                sub = "m" if not radiometric else "i"
                gdal.GetDriverByName(driver).CreateCopy(os.path.join(out_dir, f"{vid}_{sub}{ext}"), tmp, 0, opts)
                tmp = src = None
            count += 1
    return time.perf_counter() - start, count


def run_child(kind, root, copies):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", kind, "--root", root,
                          "--copies", str(copies)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="60 pairs from a smaller scene")
    parser.add_argument("--pairs", type=int, default=None)
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "gullyseg_bench_augment"))
    parser.add_argument("--child", choices=["ours", "peer"], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    _register()

    if args.child:
        seconds, count = (child_ours if args.child == "ours" else child_peer)(args.root, args.copies)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        print(json.dumps({"seconds": seconds, "count": count, "peak_mb": peak}))
        return

    pairs = args.pairs or (60 if args.quick else 584)
    scene_size, repeat = (1024, (2, 2)) if args.quick else (2048, (3, 4))
    os.makedirs(args.workdir, exist_ok=True)
    root = build(args.workdir, pairs, scene_size, repeat)
    print(f"{pairs} pairs of 256x256 tiles (RGB .tif + .jpg, mask .tif), {args.copies} variants each")
    ours = run_child("ours", root, args.copies)
    peer = run_child("peer", root, args.copies)
    for name, r in (("gullyseg augment", ours), ("naive numpy+GDAL loop", peer)):
        print(f"  {name:24s} {r['count']:5d} samples  {r['seconds']:7.2f} s  "
              f"{1000.0 * r['seconds'] / max(1, r['count']):6.2f} ms/sample  peak {r['peak_mb']:.0f} MB")
    print(f"  ratio peer / gullyseg: {peer['seconds'] / ours['seconds']:.2f}x "
          "(gullyseg also writes the manifest, card and computes the radiometric range)")


if __name__ == "__main__":
    main()
