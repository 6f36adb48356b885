"""Benchmark: grid division (gullyseg:gridtiles engine) against gdal_retile.py.

    .venv/bin/python benchmarks/bench_tiling.py [--quick] [--workdir DIR] [--keep]

1. Speed: the same W x W scene (3-band uint8, 0.75 m, EPSG:32606, tiled 256x256) cut into 256x256
   GeoTIFF tiles by `gdal_retile.py -ps 256 256 -co COMPRESS=DEFLATE` and by the engine
   (FORMAT=GeoTIFF, DEFLATE, plus the GeoPackage tile index and the dataset card), each in a
   child process measured in the same run: wall time and peak RSS (ru_maxrss from wait4).
   Target: engine time / gdal_retile time <= 1.
2. Memory: the engine on a 31,000 x 31,000 scene (the users' scene size). Target: peak < 500 MB,
   and about the same peak as on the smaller scene (flat).
--quick uses 3,000 and 6,000 pixel scenes. --keep keeps the scenes for the next run.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RETILE = "/usr/bin/gdal_retile.py"

ENGINE_SNIPPET = r"""
import sys
sys.path.insert(0, sys.argv[1] + "/tools")
from gullyseg_cli import register_package
register_package()
from gullyseg.processing.engine import tiling
r = tiling.grid_tiles(sys.argv[2], sys.argv[3], fmt=int(sys.argv[4]))
print(r.tile_count, r.skipped_count)
"""


def make_scene(path, size):
    """A 3-band uint8 scene with texture, built in a child process (keeps this process small,
    since a forked child's ru_maxrss starts from its parent's)."""
    if not os.path.exists(path):
        subprocess.run([sys.executable, __file__, "--make-scene", path, str(size)], check=True)
    return path


def _make_scene(path, size):
    import numpy as np
    from osgeo import gdal, osr

    tmp = path + ".part.tif"
    ds = gdal.GetDriverByName("GTiff").Create(tmp, size, size, 3, gdal.GDT_Byte,
                                              ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "BIGTIFF=YES"])
    ds.SetGeoTransform((420000.0, 0.75, 0.0, 7010000.0 + 0, 0.0, -0.75))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32606)
    ds.SetProjection(srs.ExportToWkt())
    rng = np.random.default_rng(0)
    x = np.arange(size, dtype=np.float32)
    for y0 in range(0, size, 1024):
        h = min(1024, size - y0)
        y = np.arange(y0, y0 + h, dtype=np.float32)[:, None]
        base = 110 + 40 * np.sin(x / 97.0) * np.cos(y / 131.0) + 20 * np.sin((x + y) / 23.0)
        for b in range(3):
            noise = rng.integers(0, 24, (h, size), dtype=np.uint8)
            ds.GetRasterBand(b + 1).WriteArray((base + 15 * b).astype(np.uint8) + noise, 0, y0)
    ds = None
    os.replace(tmp, path)
    return path


def measure(cmd):
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err}")
    return elapsed, usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime


def engine_cmd(scene, out, fmt=0):
    return [sys.executable, "-c", ENGINE_SNIPPET, ROOT, scene, out, str(fmt)]


def retile_cmd(scene, out):
    return ["/usr/bin/python3", RETILE, "-q", "-ps", "256", "256", "-co", "COMPRESS=DEFLATE",
            "-targetDir", out, scene]


def count_tifs(folder):
    return sum(1 for _, _, files in os.walk(folder) for f in files if f.endswith(".tif"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small scenes (3,000 and 6,000 px)")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "gullyseg_bench_tiling"))
    parser.add_argument("--keep", action="store_true", help="keep the scenes in the work folder for the next run")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each tool, interleaved; best time counts")
    parser.add_argument("--make-scene", nargs=2, metavar=("PATH", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_scene:
        _make_scene(args.make_scene[0], int(args.make_scene[1]))
        return 0
    if not os.path.exists(RETILE):
        raise SystemExit(f"{RETILE} is missing (Debian package gdal-bin)")
    speed_size, memory_size = (3000, 6000) if args.quick else (10000, 31000)
    os.makedirs(args.workdir, exist_ok=True)
    print(f"building scenes in {args.workdir} ...", flush=True)
    t = time.perf_counter()
    speed_scene = make_scene(os.path.join(args.workdir, f"scene_{speed_size}.tif"), speed_size)
    memory_scene = make_scene(os.path.join(args.workdir, f"scene_{memory_size}.tif"), memory_size)
    print(f"  ready in {time.perf_counter() - t:.0f} s", flush=True)

    tools = (("gdal_retile.py", lambda o: retile_cmd(speed_scene, o)),
             ("gridtiles engine", lambda o: engine_cmd(speed_scene, o, 0)))
    best = {label: (float("inf"), 0.0, 0, float("inf")) for label, _ in tools}
    for _ in range(max(1, args.repeat)):  # interleaved, so both see the same machine load
        for label, cmd_of in tools:
            out = os.path.join(args.workdir, "out_" + label.split()[0].replace(".", "_"))
            shutil.rmtree(out, ignore_errors=True)
            os.makedirs(out)  # gdal_retile.py needs it; the engine accepts an empty folder
            seconds, rss, cpu = measure(cmd_of(out))
            n = count_tifs(out)
            shutil.rmtree(out, ignore_errors=True)
            old = best[label]
            best[label] = (min(seconds, old[0]), max(rss, old[1]), n, min(cpu, old[3]))
    results = [(label,) + best[label] for label, _ in tools]
    print(f"\n1) {speed_size} x {speed_size} px, 3 x uint8, 256 x 256 GeoTIFF tiles (DEFLATE), "
          f"best of {args.repeat}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores:")
    for label, seconds, rss, n, cpu in results:
        print(f"  {label:18s} {seconds:7.2f} s wall  {cpu:7.2f} s CPU  peak {rss:7.1f} MB  {n} tiles")
    ratio = results[1][1] / results[0][1]
    cpu_ratio = results[1][4] / results[0][4]
    print(f"  time ratio engine / gdal_retile.py = {ratio:.2f} wall, {cpu_ratio:.2f} CPU  (target <= 1 wall; "
          "the engine also writes index.gpkg and dataset.json, pads edge tiles to 256 x 256 and masks "
          "their padding; the CPU ratio is the load-independent cost)")

    out = os.path.join(args.workdir, "out_memory")
    shutil.rmtree(out, ignore_errors=True)
    seconds, rss, _ = measure(engine_cmd(memory_scene, out, 0))
    n = count_tifs(out)
    shutil.rmtree(out, ignore_errors=True)
    print(f"\n2) {memory_size} x {memory_size} px scene, GeoTIFF tiles: {seconds:.1f} s, {n} tiles, "
          f"peak {rss:.1f} MB (target < 500 MB; {results[1][2]:.1f} MB on the {speed_size} px scene)")
    if not args.keep:
        for scene in (speed_scene, memory_scene):
            os.remove(scene)
    ok = ratio <= 1.0 and rss < 500
    print("\nRESULT:", "targets met" if ok else "target missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
