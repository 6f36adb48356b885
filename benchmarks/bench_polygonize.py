"""Benchmark: gully polygons (engine.polygonize) against gdal_polygonize on the same mask, in one run.

    .venv/bin/python benchmarks/bench_polygonize.py [--size 4096] [--rounds 3] [--old]

A synthetic mask (blobs of several sizes plus 1-2 pixel specks, like a thresholded probability
map: 100,000s of polygons on 4,096 px) and a probability raster, tiled DEFLATE GeoTIFFs. Timed,
alternating, best of ``--rounds``:

* peer: ``gdal_polygonize.py`` itself (the GDAL utility, a child process: GPKG output with a DN
  field, spatial index; the Python start-up, ~0.2 s, is inside its time), and the same
  ``gdal.Polygonize`` call in this process (GPKG, one transaction, spatial index);
* ``polygonize.polygonize`` with MIN_AREA 0 (every polygon, area_m2, perimeter_m, mean_prob) and
  with the default MIN_AREA of 4 pixels;
* ``--old``: the implementation of main's polygonize.py (per-polygon mean_prob), for before/after.

Ratios are engine / peer wall-clock time (target <= 1.2); the load average is printed, as
wall-clock ratios are noisy on a shared machine.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _engine():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from gullyseg_cli import register_package

    register_package()
    from gullyseg.processing.engine import polygonize

    return polygonize


def make_rasters(size, folder, seed=0):
    import numpy as np
    from osgeo import gdal, osr

    rng = np.random.default_rng(seed)
    coarse = rng.random((size // 8 + 1, size // 8 + 1)).astype(np.float32)
    blobs = np.kron(coarse, np.ones((8, 8), np.float32))[:size, :size]
    p = 0.7 * blobs + 0.3 * rng.random((size, size), dtype=np.float32)
    mask = (p > 0.72).astype(np.uint8)
    mask[:3, :] = 255  # a nodata edge
    prob = np.clip(p * 254, 0, 254).astype(np.uint8)
    prob[mask == 255] = 255
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32606)
    paths = {}
    for name, arr in (("mask", mask), ("prob", prob)):
        path = os.path.join(folder, f"{name}.tif")
        ds = gdal.GetDriverByName("GTiff").Create(path, size, size, 1, gdal.GDT_Byte,
                                                  ["TILED=YES", "COMPRESS=DEFLATE", "ZLEVEL=1"])
        ds.SetGeoTransform((500000.0, 0.75, 0.0, 7000000.0, 0.0, -0.75))
        ds.SetProjection(srs.ExportToWkt())
        ds.GetRasterBand(1).SetNoDataValue(255)
        ds.GetRasterBand(1).WriteArray(arr)
        ds = None
        paths[name] = path
    return paths


def peer_utility(mask, out, polygonize):
    """gdal_polygonize.py on the same mask's gully pixels (the engine's 1-only VRT, written to disk, as band
    and -mask), GPKG output with a DN field and a spatial index, as a user would run it."""
    from osgeo import gdal

    vrt = out + ".vrt"
    mem = polygonize._gully_band_vrt(mask)
    with open(vrt, "wb") as fh:
        fh.write(gdal.VSIFReadL(1, gdal.VSIStatL(mem).size, gdal.VSIFOpenL(mem, "rb")))
    gdal.Unlink(mem)
    t = time.perf_counter()
    subprocess.run(["gdal_polygonize.py", "-q", "-mask", vrt, vrt, "-f", "GPKG", out, "out", "DN"], check=True)
    seconds = time.perf_counter() - t
    os.remove(vrt)
    return seconds


def peer_api(mask, out):
    """The same gdal.Polygonize call in-process: GPKG, one transaction, a DN field, spatial index."""
    from osgeo import gdal, ogr, osr

    t = time.perf_counter()
    src = gdal.Open(mask)
    band = src.GetRasterBand(1)
    srs = osr.SpatialReference(src.GetProjection())
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(out)
    layer = ds.CreateLayer("out", srs=srs, geom_type=ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("DN", ogr.OFTInteger))
    layer.StartTransaction()
    gdal.Polygonize(band, band, layer, 0, [])
    layer.CommitTransaction()
    ds = layer = None
    return time.perf_counter() - t


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--old", action="store_true", help="also main's implementation (git show main:...)")
    args = parser.parse_args()
    polygonize = _engine()
    from osgeo import gdal, ogr

    gdal.UseExceptions()
    work = tempfile.mkdtemp(prefix="gullyseg_bench_polygonize_")
    try:
        paths = make_rasters(args.size, work)
        runs = {"gdal_polygonize.py": [], "gdal.Polygonize": [], "engine MIN_AREA=0": [], "engine default MIN_AREA": []}
        old = None
        if args.old:
            code = subprocess.run(["git", "-C", ROOT, "show", "main:processing/engine/polygonize.py"],
                                  capture_output=True, text=True, check=True).stdout
            old_path = os.path.join(ROOT, "processing", "engine", "_bench_old_polygonize.py")
            with open(old_path, "w") as fh:
                fh.write(code)
            try:
                from gullyseg.processing.engine import _bench_old_polygonize as old
            finally:
                os.remove(old_path)
            runs["main's polygonize MIN_AREA=0"] = []
        counts = {}
        for r in range(args.rounds):
            for name in runs:
                out = os.path.join(work, f"r{r}_{len(runs[name])}_{abs(hash(name))}.gpkg")
                if name == "gdal_polygonize.py":
                    runs[name].append(peer_utility(paths["mask"], out, polygonize))
                elif name == "gdal.Polygonize":
                    runs[name].append(peer_api(paths["mask"], out))
                else:
                    impl = old if name.startswith("main") else polygonize
                    min_area = None if "default" in name else 0.0
                    t = time.perf_counter()
                    kwargs = {"min_area": 4 * 0.5625} if min_area is None else {"min_area": 0.0}
                    counts[name] = impl.polygonize(paths["mask"], paths["prob"], out, **kwargs)
                    runs[name].append(time.perf_counter() - t)
                if name.startswith("gdal"):
                    ds = ogr.Open(out)
                    counts[name] = ds.GetLayer(0).GetFeatureCount()
                    ds = None
                os.remove(out)
        best = {k: min(v) for k, v in runs.items()}
        peer = best["gdal_polygonize.py"]
        print(f"mask {args.size} x {args.size} px, best of {args.rounds} alternating runs, load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        for name, t in best.items():
            print(f"  {name:32s} {t:7.2f} s  {counts.get(name, 0):8d} polygons  ratio to gdal_polygonize.py "
                  f"{t / peer:.2f}  to gdal.Polygonize {t / best['gdal.Polygonize']:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
