"""Benchmark: synthetic scene generation (engine.synthetic.make_scene), time and peak memory.

    .venv/bin/python benchmarks/bench_synthetic.py [--quick] [--sizes 2048,8192] [--bands rgb|bgrn]

For each size W the engine writes a W x W scene with its mask and gully GeoPackage in a child
process (wall time, peak RSS from wait4's ru_maxrss). The peer, measured in the same run, is
`gdal_create` writing an equally sized tiled DEFLATE GeoTIFF of a constant: the floor of
"writing that many pixels" with GDAL alone; the ratio says what the realism costs.
Memory must stay flat: the peak of the largest scene is compared with the smallest.
Full run: 2,048 / 8,192 / 16,384 / 31,000 pixels (the last takes a long time on 2 cores);
--quick: 2,048 and 4,096.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ENGINE_SNIPPET = r"""
import sys
sys.path.insert(0, sys.argv[1] + "/tools")
from gullyseg_cli import register_package
register_package()
from gullyseg.processing.engine import synthetic
size = int(sys.argv[3])
r = synthetic.make_scene(sys.argv[2] + "/scene.tif", width=size, height=size, seed=1, bands=sys.argv[4],
                         nodata_edge=True, mask_path=sys.argv[2] + "/mask.tif",
                         gullies_path=sys.argv[2] + "/gullies.gpkg")
print(f"{r.gully_count} {r.dam_count} {r.gully_fraction:.4f} {r.windows_written}")
"""


def run_measured(args):
    """Run a command in a child process; return (seconds, peak RSS of that child in MB)."""
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child: exec the command with stdout to a pipe file
        try:
            os.execvp(args[0], args)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(args)}")
    return seconds, usage.ru_maxrss / 1024.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,048 and 4,096 pixel scenes only")
    parser.add_argument("--sizes", help="comma-separated sizes (overrides --quick)")
    parser.add_argument("--bands", default="rgb", choices=["rgb", "bgrn"])
    parser.add_argument("--workdir", help="where to write the scenes (default: a temporary folder)")
    args = parser.parse_args()
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    elif args.quick:
        sizes = [2048, 4096]
    else:
        sizes = [2048, 8192, 16384, 31000]
    gdal_create = shutil.which("gdal_create")
    base = tempfile.mkdtemp(prefix="bench_synthetic_", dir=args.workdir)
    nbands, gtype = (3, "Byte") if args.bands == "rgb" else (4, "UInt16")
    print(f"synthetic scenes ({args.bands}, nodata edge, with mask and GeoPackage); peer: gdal_create "
          f"{nbands}x{gtype} constant, tiled DEFLATE")
    print(f"{'size':>7} {'Mpx':>6} {'engine s':>9} {'Mpx/s':>6} {'peak MB':>8} {'peer s':>7} {'peer MB':>8} "
          f"{'ratio':>6}  networks dams share windows")
    rows = []
    try:
        for size in sizes:
            folder = os.path.join(base, str(size))
            os.makedirs(folder)
            out_file = os.path.join(folder, "stdout.txt")
            cmd = ["/bin/sh", "-c", 'exec "$0" "$@" > ' + out_file, sys.executable, "-c", ENGINE_SNIPPET, ROOT,
                   folder, str(size), args.bands]
            seconds, peak = run_measured(cmd)
            with open(out_file, encoding="utf-8") as handle:
                stats = handle.read().split()
            peer_s = peer_mb = float("nan")
            if gdal_create:
                peer = os.path.join(folder, "peer.tif")
                peer_s, peer_mb = run_measured([
                    gdal_create, "-q", "-outsize", str(size), str(size), "-bands", str(nbands), "-ot", gtype,
                    "-burn", "100", "-a_srs", "EPSG:32606", "-a_ullr", "420000", "7010000",
                    str(420000 + size * 0.75), str(7010000 - size * 0.75), "-co", "TILED=YES",
                    "-co", "COMPRESS=DEFLATE", "-co", "BIGTIFF=IF_SAFER", peer])
            mpx = size * size / 1e6
            ratio = seconds / peer_s if peer_s == peer_s and peer_s > 0 else float("nan")
            rows.append((size, seconds, peak))
            print(f"{size:>7} {mpx:>6.0f} {seconds:>9.1f} {mpx / seconds:>6.2f} {peak:>8.0f} {peer_s:>7.1f} "
                  f"{peer_mb:>8.0f} {ratio:>6.1f}  {' '.join(stats)}", flush=True)
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if len(rows) > 1:
        small, large = rows[0], rows[-1]
        growth = large[2] / small[2]
        pixels = (large[0] / small[0]) ** 2
        print(f"peak memory: {small[2]:.0f} MB at {small[0]} px -> {large[2]:.0f} MB at {large[0]} px "
              f"(x{growth:.2f} for x{pixels:.0f} pixels): {'flat' if growth < 1.5 else 'NOT flat'}")


if __name__ == "__main__":
    main()
