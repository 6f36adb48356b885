"""Benchmark: 584 tiles' Labelme JSON to masks, against one gdal_rasterize process per file.

    .venv/bin/python benchmarks/bench_rasterize.py [--quick] [--keep DIR]

A synthetic EPSG:32606 scene (6144 x 6400 pixels, 600 tiles of 256 x 256) is cut by the
gridtiles engine; its gully polygons become one Labelme file per tile with the synthetic
generator's ``write_labelme_for_tiles`` (hand-drawn-like polygons, empty files for tiles
without gullies); 584 of them are kept, as in the published dataset.

- GullySeg: ``rasterize.rasterize_labels`` (what gullyseg:rasterizelabels runs): parse and
  check every file, burn, write 584 GeoTIFF masks, update the index and the card.
- peer, same run: what a user's shell loop does, for each JSON: convert it to a GeoJSON in
  map coordinates (in this process, which flatters the peer), then one
  ``gdal_rasterize -burn 1 -ot Byte -init 0 -te <tile bounds> -ts 256 256`` process.

Prints both times, the speed ratio (target: several times faster) and the pixels on which the
two disagree (both use the pixel-centre rule; only exact ties may differ), and peak memory.
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
TILES_KEPT = 584


def _register():
    """Import the checkout as package ``gullyseg`` (tools/gullyseg_cli.py does it for every tool)."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from gullyseg_cli import register_package

    register_package()


def build(work, width, height, keep):
    from gullyseg.processing.engine import synthetic, tiling

    scene = os.path.join(work, "scene.tif")
    gullies = os.path.join(work, "scene_gullies.gpkg")
    t0 = time.perf_counter()
    synthetic.make_scene(scene, width=width, height=height, seed=7, gullies_path=gullies)
    index = tiling.grid_tiles(scene, os.path.join(work, "dataset"), fmt=tiling.FORMAT_GTIFF).index_path
    written = synthetic.write_labelme_for_tiles(scene, gullies, tile_index=index).written
    for extra in sorted(written)[keep:]:
        os.remove(extra)
    print(f"data: {width}x{height} scene, {len(written)} Labelme files, {min(keep, len(written))} kept "
          f"({time.perf_counter() - t0:.1f} s to prepare)")
    return index


def peer(index, out_dir):
    """One JSON -> GeoJSON conversion and one gdal_rasterize process per file."""
    from osgeo import gdal, osr

    from gullyseg.processing.engine import dataset

    records, wkt = dataset.read_index(index)
    srs = osr.SpatialReference()
    srs.ImportFromWkt(wkt)
    crs_name = f"urn:ogc:def:crs:{srs.GetAuthorityName(None)}::{srs.GetAuthorityCode(None)}"
    paths = dataset.DatasetPaths.from_index(index)
    by_id = {r["tile_id"]: r for r in records}
    os.makedirs(out_dir, exist_ok=True)
    gdal_rasterize = shutil.which("gdal_rasterize")
    files = sorted(n for n in os.listdir(paths.labelme) if n.endswith(".json"))
    t0 = time.perf_counter()
    for name in files:
        tid = name[:-5]
        rec = by_id[tid]
        tile = gdal.Open(paths.abs(rec["image_tif"]))
        gt = tile.GetGeoTransform()
        tile = None
        with open(os.path.join(paths.labelme, name)) as handle:
            doc = json.load(handle)
        features = []
        for shape in doc["shapes"]:
            ring = [[gt[0] + x * gt[1], gt[3] + y * gt[5]] for x, y in shape["points"]]
            features.append({"type": "Feature", "properties": {"label": shape["label"]},
                             "geometry": {"type": "Polygon", "coordinates": [ring + ring[:1]]}})
        geojson = os.path.join(out_dir, tid + ".geojson")
        with open(geojson, "w") as handle:
            json.dump({"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": crs_name}},
                       "features": features}, handle)
        xmin, ymin, xmax, ymax = (gt[0], gt[3] + 256 * gt[5], gt[0] + 256 * gt[1], gt[3])
        subprocess.run([gdal_rasterize, "-q", "-burn", "1", "-ot", "Byte", "-init", "0", "-a_nodata", "255",
                        "-te", repr(xmin), repr(ymin), repr(xmax), repr(ymax), "-ts", "256", "256",
                        "-co", "COMPRESS=DEFLATE", geojson, os.path.join(out_dir, tid + ".tif")], check=True)
    return time.perf_counter() - t0, len(files)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 tiles instead of 584")
    parser.add_argument("--keep", help="keep the data in this folder instead of a temporary one")
    args = parser.parse_args()
    _register()
    import numpy as np
    from osgeo import gdal

    from gullyseg.processing.engine import rasterize

    width, height, keep = (2048, 2048, 64) if args.quick else (6144, 6400, TILES_KEPT)
    work = args.keep or tempfile.mkdtemp(prefix="gullyseg_bench_rasterize_")
    os.makedirs(work, exist_ok=True)
    try:
        index = build(work, width, height, keep)
        t0 = time.perf_counter()
        result = rasterize.rasterize_labels(index, output_dir=os.path.join(work, "masks"))
        ours = time.perf_counter() - t0
        rss_ours = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        theirs, count = peer(index, os.path.join(work, "peer"))
        assert count == result["mask_count"], (count, result["mask_count"])
        differ = 0
        for tid, path in result["masks"].items():
            a = gdal.Open(path).ReadAsArray()
            b = gdal.Open(os.path.join(work, "peer", tid + ".tif")).ReadAsArray()
            differ += int(np.count_nonzero(a != b))
        print(f"GullySeg rasterize_labels : {count} masks in {ours:6.2f} s ({1000 * ours / count:5.1f} ms/tile)")
        print(f"gdal_rasterize per file   : {count} masks in {theirs:6.2f} s ({1000 * theirs / count:5.1f} ms/tile)")
        print(f"speed ratio (peer / GullySeg): {theirs / ours:.1f}x   (target: several times faster)")
        print(f"pixels that differ: {differ} of {count * 256 * 256}")
        print(f"peak memory of this process (ru_maxrss, includes data preparation): {rss_ours:.0f} MB")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
