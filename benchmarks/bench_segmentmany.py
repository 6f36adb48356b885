"""Benchmark: gullyseg:segmentmany's engine (engine.distributed) against sequential segment runs.

    .venv/bin/python benchmarks/bench_segmentmany.py [--size 1024] [--scenes 4] [--rounds 1] [--model demo]

In one run, on ``--scenes`` synthetic RGB scenes of ``--size`` px (0.75 m, EPSG:32606), with the demo
model (resources/models/gullyseg_demo_unet.onnx; ``--model fcn`` for a tiny test model):

1. peer: ``inference.segment_raster`` on each scene one after the other in this process (the model
   loaded once, all cores);
2. segmentmany on a local cluster of 1 worker process (model threads = all cores), then of 2
   worker processes (1 core each); the clock includes starting and closing the cluster and
   writing the mosaic and the summary, as a user sees it;
3. blocks: one scene of 2 x ``--size`` px run whole and in 4 blocks (BLOCK_SIZE = ``--size``) by
   segmentmany with 2 workers: the cost of cutting and assembling (VRT over the block files,
   converted once to the final GeoTIFFs); the assembly task's own seconds are reported too.

Reported: seconds (best of ``--rounds``), the fixed cost of starting and closing a 2-process
cluster (measured alone) and the 2-worker overhead without it, the ratio to the peer (overhead = ratio - 1; target
<= 10 % for the best cluster), the 2-worker/1-worker speed-up, megapixels per second and the
machine's load average before and after (the machine is shared: ratios, not absolute times, are
the result), and the CPU seconds of each (this process plus its finished child processes, i.e. the
local cluster's workers; a less load-dependent measure of the work done), split for the clusters
into the CPU seconds of the worker processes while the tasks ran (summary.json's cpu_seconds: the
per-pixel cost) and the rest (starting worker processes, imports, the client's checks: a fixed cost
per job). Outputs are checked equal
to the peer's pixel for pixel. JSON on stdout.
"""

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _engine():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from gullyseg_cli import register_package

    register_package()
    from gullyseg.processing.engine import distributed, inference, onnx_model, synthetic

    return distributed, inference, onnx_model, synthetic


def _cpu():
    """CPU seconds of this process and of its finished children (the cluster's worker processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _same(a, b):
    from osgeo import gdal

    return np.array_equal(gdal.Open(a).ReadAsArray(), gdal.Open(b).ReadAsArray())


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--model", default="demo", choices=["demo", "fcn"])
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-blocks", action="store_true", help="skip part 3 (blocks)")
    args = ap.parse_args(argv)
    distributed, inference, onnx_model, synthetic = _engine()
    work = tempfile.mkdtemp(prefix="bench_segmentmany_")
    load_before = os.getloadavg()
    try:
        if args.model == "demo":
            model = os.path.join(ROOT, "resources", "models", "gullyseg_demo_unet.onnx")
        else:
            import onnx_models

            model = onnx_models.make_fcn_model(os.path.join(work, "fcn.onnx"), in_channels=3)
        scenes = []
        for i in range(args.scenes):
            p = os.path.join(work, f"scene{i}.tif")
            synthetic.make_scene(p, width=args.size, height=args.size, seed=100 + i)
            scenes.append(p)
        px = args.scenes * args.size * args.size
        times = {"sequential": [], "workers1": [], "workers2": []}
        task_cpu = {"workers1": [], "workers2": []}
        cpu = {"sequential": [], "workers1": [], "workers2": []}
        for _ in range(args.rounds):
            t0, c0 = time.monotonic(), _cpu()
            m = onnx_model.load_model(model)
            for i, s in enumerate(scenes):
                inference.segment_raster(s, m, output_probability=os.path.join(work, f"ref{i}_p.tif"),
                                         output_mask=os.path.join(work, f"ref{i}_m.tif"), overwrite=True)
            times["sequential"].append(time.monotonic() - t0)
            cpu["sequential"].append(_cpu() - c0)
            del m
            for n in (1, 2):
                out = os.path.join(work, f"many{n}")
                shutil.rmtree(out, ignore_errors=True)
                t0, c0 = time.monotonic(), _cpu()
                summary = distributed.segment_many(scenes, model, out, workers=n, threads_per_worker=1,
                                                   block_size=max(16384, args.size))
                times[f"workers{n}"].append(time.monotonic() - t0)
                cpu[f"workers{n}"].append(_cpu() - c0)
                task_cpu[f"workers{n}"].append(sum(row["cpu_seconds"] for row in summary["scenes"]))
                assert all(row["status"] == "done" for row in summary["scenes"]), summary["scenes"]
                for i in range(args.scenes):
                    assert _same(os.path.join(work, f"ref{i}_m.tif"), os.path.join(out, f"scene{i}", "mask.tif"))
                    assert _same(os.path.join(work, f"ref{i}_p.tif"),
                                 os.path.join(out, f"scene{i}", "probability.tif"))
        best = {k: min(v) for k, v in times.items()}
        # the fixed cost: starting and closing a local cluster of 2 worker processes, nothing run
        from gullyseg.processing.engine.feedback import Feedback

        t0 = time.monotonic()
        with distributed._client(None, 2, 1, Feedback()):
            pass
        cluster_s = time.monotonic() - t0

        # blocks: one scene of 2 x size, whole vs 4 blocks, both through segmentmany with 2 workers
        big = os.path.join(work, "big.tif")
        if not args.no_blocks:
            synthetic.make_scene(big, width=2 * args.size, height=2 * args.size, seed=7)
        block_times = {"whole": 1.0, "blocks": math.nan}
        for label, bs in () if args.no_blocks else (("whole", max(16384, 4 * args.size)), ("blocks", args.size)):
            out = os.path.join(work, f"big_{label}")
            t0 = time.monotonic()
            summary = distributed.segment_many([big], model, out, workers=2, block_size=bs)
            block_times[label] = time.monotonic() - t0
            assert summary["scenes"][0]["status"] == "done"
            if label == "blocks":
                block_times["assembly"] = summary["scenes"][0]["assembly_seconds"]
        if not args.no_blocks:
            assert _same(os.path.join(work, "big_whole", "big", "probability.tif"),
                         os.path.join(work, "big_blocks", "big", "probability.tif"))
        result = {
            "machine": {"cpus": os.cpu_count(), "load_before": [round(x, 2) for x in load_before],
                        "load_after": [round(x, 2) for x in os.getloadavg()]},
            "model": os.path.basename(model), "scenes": args.scenes, "size": args.size, "rounds": args.rounds,
            "seconds": {k: round(v, 2) for k, v in best.items()},
            "mpx_per_s": {k: round(px / 1e6 / v, 3) for k, v in best.items()},
            "ratio_to_sequential": {k: round(best[k] / best["sequential"], 3) for k in ("workers1", "workers2")},
            "overhead_best_cluster": round(min(best["workers1"], best["workers2"]) / best["sequential"] - 1, 3),
            "speedup_2_vs_1_workers": round(best["workers1"] / best["workers2"], 3),
            "cpu_seconds": {k: round(min(v), 2) for k, v in cpu.items()},
            "cpu_ratio_to_sequential": {k: round(min(cpu[k]) / min(cpu["sequential"]), 3)
                                        for k in ("workers1", "workers2")},
            "task_cpu_seconds": {k: round(min(v), 2) for k, v in task_cpu.items()},
            "task_cpu_ratio_to_sequential": {k: round(min(v) / min(cpu["sequential"]), 3)
                                             for k, v in task_cpu.items()},
            "cluster_start_close_s": round(cluster_s, 2),
            "overhead_1_worker_without_cluster_start":
                round((best["workers1"] - cluster_s) / best["sequential"] - 1, 3),
            "overhead_2_workers_without_cluster_start":
                round((best["workers2"] - cluster_s) / best["sequential"] - 1, 3),
            "blocks": {"scene_px": 2 * args.size, "block_size": args.size,
                       "seconds": {k: round(v, 2) for k, v in block_times.items()},
                       "ratio_blocks_to_whole": round(block_times["blocks"] / block_times["whole"], 3),
                       "assembly_share_of_blocks_run": round(block_times.get("assembly", math.nan)
                                                             / block_times["blocks"], 3)},
        }
        seq_rate = px / best["sequential"]
        result["scenes_per_hour_31000px_sequential"] = round(distributed.scenes_per_hour(seq_rate), 3)
        print(json.dumps(result, indent=1))
        return result
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":  # required: the cluster's worker processes are spawned
    main()
