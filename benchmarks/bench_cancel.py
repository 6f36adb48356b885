"""Benchmark: how fast a cancel stops ONNX inference (engine.inference.segment_raster), and what it leaves.

    .venv/bin/python benchmarks/bench_cancel.py [--quick] [--rounds 5] [--size 2000]

A heavy test model (tests/onnx_models.make_slow_model: 12 convs, 64 channels; one batch of 8 windows of
256 px takes seconds on 2 cores) runs over a synthetic scene (default 2,000 px: 11 x 11 windows, 16 batches);
the feedback asks to stop (a) as soon as the first batches are blended (first progress > 0) and (b) at a
fixed delay after the start (1.5 s: mid-batch, onnxruntime's RunOptions.terminate stops the batch). For each
round: the latency (cancel request -> Cancelled raised in the caller, threads joined, outputs removed), the
time the first batches took in the same run (the peer: latency / first-batch time is what the test
tests/test_inference.py::test_cancel_stops_long_before_the_end_and_removes_outputs bounds by 1), and whether
any output file or gullyseg thread was left. The machine's load average is printed with the results, as
absolute latencies depend on it. Prints one JSON line per round and a summary.
--quick: 1,024 px scene, 2 rounds.

Measured on the 2-core machine (3 rounds each; load average 3.0-4.6, then 5.4 with a `while True: pass`
CPU hog beside it): cancel at the first progress: latency median 0.069 s / max 0.637 s (idle-ish),
0.274 s / 1.242 s (hog), at most 0.063 of the first batches' time (0.024 with the hog, where those
batches take longer); cancel 1.5 s after the start: 0.77 s median (mid-batch: onnxruntime stops between
two nodes of the model), 0.08 s with the hog (the run had not reached the model yet). Nothing was left
behind in any run.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from gullyseg_cli import register_package

    register_package()
    import onnx_models

    from gullyseg.processing.engine import inference, synthetic
    from gullyseg.processing.engine.errors import Cancelled
    from gullyseg.processing.engine.feedback import Feedback

    return inference, synthetic, Cancelled, Feedback, onnx_models


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--delay", type=float, default=1.5, help="seconds after the start for the fixed-delay cancel")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.rounds = 1024, 2
    inference, synthetic, cancelled_error, feedback_class, om = _setup()

    class Recorder(feedback_class):
        def __init__(self, mode, delay):
            self.mode, self.delay = mode, delay
            self.started = time.monotonic()
            self.first_progress = None
            self.cancelled_at = None

        def progress(self, percent):
            if percent > 0 and self.first_progress is None:
                self.first_progress = time.monotonic()

        def is_cancelled(self):
            now = time.monotonic()
            if self.mode == "first-progress":
                due = self.first_progress is not None
            else:
                due = now - self.started >= self.delay
            if due:
                self.cancelled_at = self.cancelled_at or now
            return due

    rows = []
    with tempfile.TemporaryDirectory(prefix="gullyseg_bench_cancel_") as tmp:
        scene = os.path.join(tmp, "scene.tif")
        synthetic.make_scene(scene, width=args.size, height=args.size, seed=2)
        model = om.make_slow_model(os.path.join(tmp, "slow.onnx"))
        for round_ in range(args.rounds):
            for mode in ("first-progress", "fixed-delay"):
                out = os.path.join(tmp, f"out_{round_}_{mode}")
                fb = Recorder(mode, args.delay)
                cancelled = False
                try:
                    inference.segment_raster(scene, model, output_probability=os.path.join(out, "p.tif"),
                                             output_mask=os.path.join(out, "m.tif"), feedback=fb)
                except cancelled_error:
                    cancelled = True
                stopped = time.monotonic()
                left = sorted(os.listdir(out)) if os.path.isdir(out) else []
                threads = [t.name for t in threading.enumerate() if t.name.startswith("gullyseg-")]
                row = {
                    "mode": mode, "round": round_, "cancelled": cancelled,
                    "latency_s": round(stopped - fb.cancelled_at, 3) if fb.cancelled_at else None,
                    "first_batches_s": round(fb.first_progress - fb.started, 3) if fb.first_progress else None,
                    "files_left": left, "threads_left": threads, "load_avg_1min": os.getloadavg()[0],
                }
                if row["latency_s"] is not None and row["first_batches_s"]:
                    row["latency_over_first_batches"] = round(row["latency_s"] / row["first_batches_s"], 3)
                rows.append(row)
                print(json.dumps(row), flush=True)
    for mode in ("first-progress", "fixed-delay"):
        lat = [r["latency_s"] for r in rows if r["mode"] == mode and r["latency_s"] is not None]
        ratio = [r["latency_over_first_batches"] for r in rows if r.get("latency_over_first_batches") is not None
                 and r["mode"] == mode]
        if lat:
            print(f"{mode}: latency median {statistics.median(lat):.3f} s, max {max(lat):.3f} s"
                  + (f"; latency / first batches: median {statistics.median(ratio):.3f}, max {max(ratio):.3f}"
                     if ratio else "") + f" ({len(lat)} runs, {args.size} px, cpus {os.cpu_count()})")
    bad = [r for r in rows if not r["cancelled"] or r["files_left"] or r["threads_left"]]
    print("left behind or not cancelled:", bad or "none")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
