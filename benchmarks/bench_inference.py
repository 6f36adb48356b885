"""Benchmark: ONNX inference over scenes (engine.inference.segment_raster), throughput and peak memory.

    .venv/bin/python benchmarks/bench_inference.py [--quick] [--sizes 8000,31000] [--throughput-size 6144]
                                                   [--rounds 5]

1. Throughput, in this process: segment_raster end to end (reading and decompressing the scene
   and normalising in a reader thread, the model in batches, Hann blending, writing two
   DEFLATE-compressed GeoTIFFs in a writer thread; for the light model also with ZSTD) against
   the peer, bare ``session.run`` on the same windows and batch size: a session with
   onnxruntime's default options (all cores for one run), the input batches prepared outside
   the clock, only the run calls timed. The engine runs its own session, two batches at once
   on half the threads each (onnx_model.plan_threads).
   Both count the same pixels (windows x window area), so the ratio is t_bare / t_engine; target
   >= 0.9. Models: tests/onnx_models.make_benchmark_model (4 convs 3x3, 16 channels, sigmoid),
   and a heavier one (6 convs, 32 channels): the engine's own work is a cost per pixel, so its
   share shrinks as the model grows. 256 px windows, overlap 64, batch 8, on a 6,144 px synthetic
   scene (a run's fixed cost, opening and creating files and starting threads, weighs on small
   scenes only; the users' scenes are 31,000 px). Best of ``--rounds`` runs each, alternating;
   the process CPU time (all threads) is reported too, as wall-clock ratios are noisy on a
   shared machine.
2. Peak memory: segment_raster (probability + mask) on scenes in child processes (peak RSS
   from wait4's ru_maxrss): 8,000 x 8,000, 31,000 x 31,000 (the users' scene size) and
   8,000 wide x 31,000 tall; target < 1.5 GB and flat. Rows are streamed and wide scenes are
   run in column panels, so memory must not grow with the height (the tall scene shows that)
   nor, beyond one panel (8,192 px), with the width (the two squares show that).
   Scenes: a 2,048 px synthetic scene repeated (VRT mosaic) into a tiled DEFLATE GeoTIFF with
   gdal_translate. A lighter model (2 convs, 8 channels) is used here so that the 31,000 px
   run takes minutes, not an hour; memory does not
   depend on the model's depth.
--quick: throughput on 2,048 px (3 rounds), memory on 2,000, 4,000 and 2,000 x 8,000 px.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _engine():
    """Import the checkout as package ``gullyseg`` (tools/gullyseg_cli.py does it for every tool)."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from gullyseg_cli import register_package

    register_package()
    from gullyseg.processing.engine import inference, onnx_model, synthetic, windows

    return inference, onnx_model, synthetic, windows


def _onnx_models():
    """tests/onnx_models.py: the test models, built with the onnx package."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import onnx_models

    return onnx_models


def run_measured(args):
    """Run a command in a child process; return (seconds, peak RSS of that child in MB, stdout)."""
    start = time.perf_counter()
    out_fd, out_path = tempfile.mkstemp(suffix=".out")
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(out_fd, 1)
            os.execvp(args[0], args)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    os.close(out_fd)
    with open(out_path) as fh:
        out = fh.read()
    os.remove(out_path)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(args)}\n{out}")
    return seconds, usage.ru_maxrss / 1024.0, out


def throughput(size, workdir, threads=0, batch=8, overlap=64, hidden=16, layers=4, rounds=3, also_zstd=False):
    import numpy as np
    from osgeo import gdal

    inference, onnx_model, synthetic, windows = _engine()
    om = _onnx_models()
    scene = os.path.join(workdir, f"tp_{size}.tif")
    if not os.path.exists(scene):
        synthetic.make_scene(scene, width=size, height=size, seed=3)
    path = om.make_benchmark_model(os.path.join(workdir, f"bench_{hidden}_{layers}.onnx"), hidden=hidden,
                                   layers=layers)
    model = onnx_model.load_model(path, threads=threads or None)
    ds = gdal.Open(scene)
    raw = ds.ReadAsArray()
    ds = None
    wins = list(windows.iter_windows(size, size, 256, 256 - overlap, windows.EDGE_SHIFT))
    npx = len(wins) * 256 * 256
    # the peer: what bare code gets, a session with onnxruntime's default options (all cores for one
    # run, busy-waiting threads), on the engine's provider; the engine's own session runs
    # ``model.lanes`` batches at once on fewer threads each (onnx_model.plan_threads)
    import onnxruntime

    sess = onnxruntime.InferenceSession(path, providers=[model.provider])
    name = sess.get_inputs()[0].name

    def bare():
        total = cpu = 0.0
        for i in range(0, len(wins), batch):
            x = np.stack([raw[:, w.y_off:w.y_end, w.x_off:w.x_end] for w in wins[i:i + batch]]).astype(np.float32)
            x *= np.float32(1 / 255)
            c, t = time.process_time(), time.perf_counter()
            sess.run(None, {name: x})
            total += time.perf_counter() - t
            cpu += time.process_time() - c
        return total, cpu

    def engine(k, compression="DEFLATE"):
        out = os.path.join(workdir, f"tp_out_{k}")
        c, t = time.process_time(), time.perf_counter()
        inference.segment_raster(scene, model, output_probability=out + "_p.tif", output_mask=out + "_m.tif",
                                 batch_size=batch, overlap=overlap, overwrite=True, compression=compression)
        return time.perf_counter() - t, time.process_time() - c

    bare()  # warm-up: both sessions' first runs (arena allocation) are not timed
    engine("warm")
    t_bare, t_engine, t_zstd = [], [], []
    for k in range(rounds):
        t_bare.append(bare())
        t_engine.append(engine(k % 2))
        if also_zstd:
            t_zstd.append(engine(k % 2, "ZSTD"))
    tb, cb = min(t[0] for t in t_bare), min(t[1] for t in t_bare)
    te, ce = min(t[0] for t in t_engine), min(t[1] for t in t_engine)
    extra = {}
    if t_zstd:
        tz = min(t[0] for t in t_zstd)
        extra = {"zstd_ratio": tb / tz, "zstd_cpu_ratio": cb / min(t[1] for t in t_zstd)}
    return {**extra,
        "size": size, "windows": len(wins), "provider": model.provider,
        "bare_mpx_s": npx / tb / 1e6, "engine_mpx_s": npx / te / 1e6, "ratio": tb / te,
        "scene_mpx_s": size * size / te / 1e6, "cpu_ratio": cb / ce, "load": os.getloadavg()[0],
        "lanes": model.lanes, "threads": model.threads, "rounds": rounds,
    }


def make_big_scene(size, workdir, height=None):
    """A size x height tiled DEFLATE GeoTIFF: a 2,048 px synthetic scene repeated through a VRT mosaic."""
    height = height or size
    _, _, synthetic, _ = _engine()
    base = os.path.join(workdir, "base_2048.tif")
    if not os.path.exists(base):
        synthetic.make_scene(base, width=2048, height=2048, seed=5)
    nx, ny = -(-size // 2048), -(-height // 2048)
    vrt = os.path.join(workdir, f"mosaic_{size}x{height}.vrt")
    x0, y0 = 420000.0, 7010000.0
    sources = []
    for r in range(ny):
        for c in range(nx):
            w, h = min(2048, size - c * 2048), min(2048, height - r * 2048)
            sources.append((c * 2048, r * 2048, w, h))
    bands = []
    for b in range(1, 4):
        srcs = "".join(
            f"<SimpleSource><SourceFilename relativeToVRT='0'>{base}</SourceFilename><SourceBand>{b}</SourceBand>"
            f"<SrcRect xOff='0' yOff='0' xSize='{w}' ySize='{h}'/><DstRect xOff='{x}' yOff='{y}' xSize='{w}' "
            f"ySize='{h}'/></SimpleSource>" for x, y, w, h in sources)
        bands.append(f"<VRTRasterBand dataType='Byte' band='{b}'>{srcs}</VRTRasterBand>")
    from osgeo import osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32606)
    with open(vrt, "w") as fh:
        fh.write(f"<VRTDataset rasterXSize='{size}' rasterYSize='{height}'><SRS>{srs.ExportToWkt()}</SRS>"
                 f"<GeoTransform>{x0}, 0.75, 0, {y0}, 0, -0.75</GeoTransform>{''.join(bands)}</VRTDataset>")
    out = os.path.join(workdir, f"scene_{size}x{height}.tif")
    subprocess.run(["gdal_translate", "-q", "-co", "TILED=YES", "-co", "COMPRESS=DEFLATE", "-co", "BIGTIFF=YES",
                    "-co", "NUM_THREADS=ALL_CPUS", vrt, out], check=True)
    return out


CHILD = r"""
import json, sys, time
root, scene, model, out = sys.argv[1:5]
sys.path.insert(0, root + "/tools")
from gullyseg_cli import register_package
register_package()
from gullyseg.processing.engine import inference
t = time.perf_counter()
r = inference.segment_raster(scene, model, output_probability=out + "_p.tif", output_mask=out + "_m.tif",
                             batch_size=8, overwrite=True)
print(json.dumps({"seconds": time.perf_counter() - t, "pixels": r["pixels_processed"], "windows": r["windows"]}))
"""


def memory(sizes, workdir):
    om = _onnx_models()
    model = om.make_fcn_model(os.path.join(workdir, "light.onnx"), layers=2, hidden=8)
    child = os.path.join(workdir, "child.py")
    with open(child, "w") as fh:
        fh.write(CHILD)
    rows = []
    for spec in sizes:
        size, height = spec if isinstance(spec, tuple) else (spec, spec)
        t = time.perf_counter()
        scene = make_big_scene(size, workdir, height)
        made = time.perf_counter() - t
        tag = f"o{size}x{height}"
        seconds, rss, out = run_measured([sys.executable, child, ROOT, scene, model, os.path.join(workdir, tag)])
        info = json.loads(out.strip().splitlines()[-1])
        rows.append({"size": size, "height": height, "peak_rss_mb": rss, "seconds": seconds, "scene_seconds": made,
                     "mpx_s": size * height / info["seconds"] / 1e6, "windows": info["windows"]})
        for f in os.listdir(workdir):
            if f.startswith(tag) or f == os.path.basename(scene):
                os.remove(os.path.join(workdir, f))
        print(f"  {size:>6} x {height:<6} peak RSS {rss:7.0f} MB   {seconds:6.1f} s   "
              f"{rows[-1]['mpx_s']:5.2f} scene Mpx/s   ({info['windows']} windows; scene made in {made:.0f} s)",
              flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--sizes", help="comma-separated scene sizes for the memory runs")
    parser.add_argument("--throughput-size", type=int)
    parser.add_argument("--rounds", type=int, help="alternating bare/engine runs (best of each)")
    parser.add_argument("--workdir")
    args = parser.parse_args()
    def parse(s):
        return tuple(int(v) for v in s.split("x")) if "x" in s else int(s)

    sizes = [parse(s) for s in args.sizes.split(",")] if args.sizes else \
        ([2000, 4000, (2000, 8000)] if args.quick else [8000, 31000, (8000, 31000)])
    tp_size = args.throughput_size or (2048 if args.quick else 6144)
    rounds = args.rounds or (3 if args.quick else 5)
    workdir = args.workdir or tempfile.mkdtemp(prefix="gullyseg_bench_inference_")
    os.makedirs(workdir, exist_ok=True)
    try:
        for hidden, layers, label in ((16, 4, "benchmark model: 4 convs x 16 channels"),
                                      (32, 6, "heavier model: 6 convs x 32 channels, closer to a small U-Net")):
            print(f"== throughput ({tp_size} x {tp_size} synthetic scene, {label}, batch 8, overlap 64)")
            tp = throughput(tp_size, workdir, hidden=hidden, layers=layers, rounds=rounds, also_zstd=hidden == 16)
            print(f"  provider {tp['provider']}, {tp['windows']} windows; engine: {tp['lanes']} batches at once, "
                  f"{tp['threads']} threads; best of {tp['rounds']} alternating runs")
            print(f"  bare session.run   {tp['bare_mpx_s']:6.2f} Mpx/s (window pixels)")
            print(f"  segment_raster     {tp['engine_mpx_s']:6.2f} Mpx/s (window pixels), "
                  f"{tp['scene_mpx_s']:.2f} Mpx/s of scene")
            print(f"  ratio engine / bare = {tp['ratio']:.3f}  (target >= 0.9)  "
                  f"{'OK' if tp['ratio'] >= 0.9 else 'BELOW'}")
            print(f"  CPU-time ratio bare / engine = {tp['cpu_ratio']:.3f} (all threads; load average "
                  f"{tp['load']:.1f} on {os.cpu_count()} cores: wall-clock ratios are noisy on a busy machine)")
            if "zstd_ratio" in tp:
                print(f"  with COMPRESSION=ZSTD: ratio {tp['zstd_ratio']:.3f}, CPU-time ratio "
                      f"{tp['zstd_cpu_ratio']:.3f} (this untrained model's probabilities are noise, the worst "
                      "case for DEFLATE)")
        print("== peak memory (light model, probability + mask outputs)")
        rows = memory(sizes, workdir)
        peak = max(r["peak_rss_mb"] for r in rows)
        print(f"  largest peak {peak:.0f} MB (target < 1536 MB) {'OK' if peak < 1536 else 'ABOVE'}")
        squares = [r for r in rows if r["size"] == r["height"]]
        if len(squares) > 1:
            print(f"  {squares[-1]['size']} / {squares[0]['size']} px squares: peak ratio "
                  f"{squares[-1]['peak_rss_mb'] / squares[0]['peak_rss_mb']:.2f} (flat in width beyond one panel = ~1)")
        for tall in (r for r in rows if r["height"] != r["size"]):
            same = [r for r in squares if r["size"] == tall["size"]]
            if same:
                print(f"  {tall['size']} x {tall['height']} vs {tall['size']} x {tall['size']}: peak ratio "
                      f"{tall['peak_rss_mb'] / same[0]['peak_rss_mb']:.2f} (flat in height = ~1)")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
