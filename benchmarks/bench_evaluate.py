#!/usr/bin/env python3
"""Evaluation speed and memory: engine.metrics.evaluate_rasters (streaming windows, per-tile
scores) against a whole-array numpy count of the same confusion matrix (the peer: what a
script that reads both rasters at once does), measured in the same run, each in a child
process so its peak memory (ru_maxrss) is its own.

    .venv/bin/python benchmarks/bench_evaluate.py            # 8,000 x 8,000 px (+ the 31,000 px check)
    .venv/bin/python benchmarks/bench_evaluate.py --quick    # 3,000 x 3,000 px
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {tools!r})
from gullyseg_cli import register_package
register_package()
import numpy as np
from osgeo import gdal
mode, pred, ref = sys.argv[1:4]
t0 = time.perf_counter()
if mode == "engine":
    from gullyseg.processing.engine import metrics
    res = metrics.evaluate_rasters(pred, ref)
    matrix = res.matrix.tolist()
else:
    p = gdal.Open(pred).ReadAsArray().astype(np.int64)
    r = gdal.Open(ref).ReadAsArray().astype(np.int64)
    valid = (p != 255) & (r != 255)
    matrix = np.bincount(r[valid] * 2 + p[valid], minlength=4).reshape(2, 2).tolist()
seconds = time.perf_counter() - t0
print(json.dumps({{"seconds": seconds, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "matrix": matrix}}))
"""


def make_pair(folder, size):
    """Two uint8 masks on one grid (tiled, DEFLATE), written by windows: 0/1 with a 255 border."""
    import numpy as np
    from osgeo import gdal, osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32606)
    paths = []
    for name, seed in (("pred.tif", 1), ("ref.tif", 2)):
        path = str(Path(folder) / name)
        ds = gdal.GetDriverByName("GTiff").Create(path, size, size, 1, gdal.GDT_Byte,
                                                  ["TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER"])
        ds.SetGeoTransform((420000.0, 0.75, 0.0, 7010000.0, 0.0, -0.75))
        ds.SetProjection(srs.ExportToWkt())
        band = ds.GetRasterBand(1)
        rng = np.random.default_rng(seed)
        step = 1024
        for y in range(0, size, step):
            h = min(step, size - y)
            block = (rng.random((h, size)) < 0.1).astype(np.uint8)
            block[:, :16] = 255
            band.WriteArray(block, 0, y)
        ds = None
        paths.append(path)
    return paths


def make_pair_in_child(folder, size):
    """make_pair in its own process: Linux keeps a process's peak RSS across fork + exec, so the
    parent must stay small for the children's ru_maxrss to be their own."""
    subprocess.run([sys.executable, __file__, "--make-pair", str(folder), str(size)], check=True)
    return str(Path(folder) / "pred.tif"), str(Path(folder) / "ref.tif")


def run_child(mode, pred, ref, cache_mb=None):
    """Run one evaluation in a child process; ``cache_mb`` sets GDAL_CACHEMAX (GDAL's block cache,
    by default 5 % of the RAM, is most of the peak memory of any streaming reader)."""
    code = CHILD.format(tools=str(ROOT / "tools"))
    env = dict(os.environ)
    if cache_mb:
        env["GDAL_CACHEMAX"] = str(cache_mb)
    done = subprocess.run([sys.executable, "-c", code, mode, pred, ref], capture_output=True, text=True, check=True,
                          env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--make-pair", nargs=2, metavar=("FOLDER", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_pair:
        make_pair(args.make_pair[0], int(args.make_pair[1]))
        return
    sizes = [3000] if args.quick else [8000]
    with tempfile.TemporaryDirectory(prefix="bench_evaluate_") as tmp:
        for size in sizes:
            pred, ref = make_pair_in_child(tmp, size)
            engine = run_child("engine", pred, ref)
            small = run_child("engine", pred, ref, cache_mb=128)
            peer = run_child("numpy", pred, ref)
            assert engine["matrix"] == peer["matrix"], "engine and numpy disagree"
            mpx = size * size / 1e6
            print(f"{size} x {size} px: engine {engine['seconds']:.2f} s ({mpx / engine['seconds']:.1f} Mpx/s, "
                  f"peak {engine['maxrss_mb']:.0f} MB); whole-array numpy {peer['seconds']:.2f} s "
                  f"(peak {peer['maxrss_mb']:.0f} MB); time ratio engine/numpy "
                  f"{engine['seconds'] / peer['seconds']:.2f}, memory ratio "
                  f"{engine['maxrss_mb'] / peer['maxrss_mb']:.2f}; engine with GDAL_CACHEMAX=128: "
                  f"peak {small['maxrss_mb']:.0f} MB")
            for p in (pred, ref):
                os.remove(p)
        if not args.quick:
            size = 31000
            pred, ref = make_pair_in_child(tmp, size)
            engine = run_child("engine", pred, ref)
            small = run_child("engine", pred, ref, cache_mb=128)
            print(f"{size} x {size} px (the users' scene size): engine {engine['seconds']:.1f} s, "
                  f"peak {engine['maxrss_mb']:.0f} MB with GDAL's default block cache, "
                  f"{small['maxrss_mb']:.0f} MB with GDAL_CACHEMAX=128 ({small['seconds']:.1f} s); "
                  f"whole-array numpy would need about {2 * 9 * size * size / 1e9:.0f} GB")
    print(f"bench process peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
