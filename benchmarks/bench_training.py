"""Benchmark: trainmodel's training engine against a bare PyTorch loop, and its peak memory.

    .venv/bin/python benchmarks/bench_training.py [--quick] [--threads 2] [--tile 64]

Data: a synthetic RGB scene (EPSG:32606, 0.75 m) cut by the gridtiles engine into TILE px tiles
(64 px by default: small tiles keep the run short on a 2-core machine; the work per sample grows
with the tile, the memory argument does not change), masks cut from its ground truth with GDAL,
split 8:1:1 by the split engine, then (second dataset) the train split augmented x4 by the augment
engine: 584 train samples before, 2,920 after (584 x 5).

1. Throughput (samples/s), in the same run and process, same model (U-Net with the default encoder),
   batch, threads and samples, augmentation off in both, alternated REPEAT times (median):
   - gullyseg: ``loop.fit`` over ``data.TileSource`` batches (tiles read from disk with GDAL in a
     prefetch thread, normalised as segment does);
   - peer: a bare PyTorch loop (AdamW, the same loss) over the same tensors preloaded in memory.
   Ratio gullyseg / peer (target >= 0.9).
2. Peak memory (ru_maxrss of a child process) of one epoch over all train samples with 584 and
   with 2,920 samples, each in its own child (a small 2-layer network here: the model's share of
   the memory is the same in both children and only the data path is measured). Flat = the
   difference is small against the 2,336 extra samples' size.
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _register():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from gullyseg_cli import register_package

    register_package()


def build(workdir, tile, train_target=584):
    """Dataset folders (plain and augmented x4) with about ``train_target`` train samples; cached."""
    from osgeo import gdal

    from gullyseg.processing.engine import augment, dataset, split, synthetic, tiling

    gdal.UseExceptions()
    plain = os.path.join(workdir, f"plain_{tile}")
    aug = os.path.join(workdir, f"aug_{tile}")
    if os.path.exists(os.path.join(aug, "ready")):
        return plain, aug
    n_tiles = int(round(train_target / 0.8))
    side = int(n_tiles ** 0.5) + 1
    size = side * tile
    scene = os.path.join(workdir, f"scene_{size}.tif")
    mask = os.path.join(workdir, f"scene_{size}_mask.tif")
    if not os.path.exists(mask):
        synthetic.make_scene(scene, width=size, height=size, seed=11, mask_path=mask, overwrite=True)
    shutil.rmtree(plain, ignore_errors=True)
    tiling.grid_tiles(scene, plain, tile_size=tile, fmt=tiling.FORMAT_GTIFF)
    index = os.path.join(plain, dataset.INDEX_NAME)
    records, _ = dataset.read_index(index)
    os.makedirs(os.path.join(plain, dataset.MASKS_DIR), exist_ok=True)
    updates = {}
    for i, rec in enumerate(records):
        tid = rec["tile_id"]
        keep = i < n_tiles
        if keep:
            gdal.Translate(os.path.join(plain, "masks", f"{tid}.tif"), mask,
                           srcWin=[rec["x_off"], rec["y_off"], rec["width"], rec["height"]])
        updates[tid] = {"status": "keep" if keep else "reject", "mask": f"masks/{tid}.tif" if keep else ""}
    dataset.update_index(index, updates)
    split.split_dataset(plain, ratios="8:1:1", seed=1)
    shutil.rmtree(aug, ignore_errors=True)
    shutil.copytree(plain, aug)
    augment.augment_dataset(aug, splits=("train",), copies=4, seed=1)
    open(os.path.join(aug, "ready"), "w").close()
    return plain, aug


def throughput(root, threads, batch, samples, repeat):
    import numpy as np
    import torch

    from gullyseg.processing.engine.training import data, loop, models

    spec = data.check_dataset(data.open_dataset(root))
    spec.lists["train"] = spec.lists["train"][:samples]
    src = data.TileSource(spec, "train", batch)
    xs, ys = zip(*[src.read(s)[:2] for s in src.ids])
    x_all, y_all = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
    loop.seed_everything(0, threads)
    net = models.build("unet", models.DEFAULT_ENCODER, spec.bands)
    loss_fn = loop.make_loss("ce+dice")

    def ours(epoch):
        res = loop.fit(net, src.batches(seed=0), None, epochs=1, lr=1e-3, augment=False, seed=epoch)
        return res.history[0]["samples"], res.history[0]["seconds"]

    def peer(epoch):
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
        net.train()
        order = loop.epoch_order(len(x_all), 0, epoch)
        t0 = time.perf_counter()
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            x, y = x_all[idx], y_all[idx]
            opt.zero_grad(set_to_none=True)
            out = loss_fn(net(x), y)
            out.backward()
            opt.step()
        return len(order), time.perf_counter() - t0

    ours(0)  # warm-up (allocator, threads)
    rates = {"gullyseg": [], "peer": []}
    for r in range(repeat):
        for name, fn in (("gullyseg", ours), ("peer", peer)) if r % 2 == 0 else (("peer", peer), ("gullyseg", ours)):
            n, s = fn(r + 1)
            rates[name].append(n / s)
    # the load of a shared machine changes by 10x within minutes: compare each pair of adjacent runs
    ratios = [a / b for a, b in zip(rates["gullyseg"], rates["peer"])]
    return {k: statistics.median(v) for k, v in rates.items()}, rates, statistics.median(ratios)


def child_memory(root, threads, batch):
    import torch

    from gullyseg.processing.engine.training import data, loop

    spec = data.check_dataset(data.open_dataset(root))
    loop.seed_everything(0, threads)
    net = torch.nn.Sequential(torch.nn.Conv2d(spec.bands, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 2, 3, padding=1))
    src = data.TileSource(spec, "train", batch)
    t0 = time.perf_counter()
    res = loop.fit(net, src.batches(seed=0), None, epochs=1, lr=1e-3, augment=True, seed=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"samples": res.history[0]["samples"], "seconds": time.perf_counter() - t0, "peak_mb": peak,
                      "tile": spec.tile_size}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer throughput samples and repeats")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--samples", type=int, default=96, help="samples per throughput epoch")
    ap.add_argument("--repeat", type=int, default=6)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    _register()
    if args.child:
        child_memory(args.child, args.threads, args.batch)
        return 0
    from gullyseg.processing.engine.training import deps, models

    if deps.missing():  # optional dependency: `make bench` goes on without it
        print(f"bench_training skipped: {deps.missing()}")
        return 0
    if args.quick:
        args.samples, args.repeat = 48, 2
    workdir = args.workdir or os.path.join(tempfile.gettempdir(), "gullyseg_bench_training")
    os.makedirs(workdir, exist_ok=True)
    load = os.getloadavg()
    t0 = time.perf_counter()
    plain, aug = build(workdir, args.tile)
    print(f"datasets ready in {time.perf_counter() - t0:.0f} s: {plain}, {aug}", flush=True)
    med, all_rates, ratio = throughput(plain, args.threads, args.batch, args.samples, args.repeat)
    print(f"throughput ({args.samples} samples of {args.tile} px, U-Net/{models.DEFAULT_ENCODER}, batch {args.batch}, "
          f"{args.threads} threads, median of {args.repeat}): gullyseg {med['gullyseg']:.2f} samples/s, bare "
          f"PyTorch over preloaded tensors {med['peer']:.2f} samples/s; median of the pairwise ratios {ratio:.3f} "
          "(target >= 0.9)")
    print(f"  all runs: {json.dumps({k: [round(v, 2) for v in vs] for k, vs in all_rates.items()})}")
    mem = {}
    for name, root in (("plain", plain), ("augmented", aug)):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", root, "--threads",
                              str(args.threads), "--batch", str(args.batch)], capture_output=True, text=True,
                             check=True)
        mem[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"peak memory, one epoch over {mem[name]['samples']} train samples of {mem[name]['tile']} px: "
              f"{mem[name]['peak_mb']:.0f} MB ({mem[name]['seconds']:.1f} s)", flush=True)
    extra = mem["augmented"]["samples"] - mem["plain"]["samples"]
    per_sample_mb = 4 * 3 * args.tile * args.tile / 1e6 + 8 * args.tile * args.tile / 1e6  # float32 x + int64 y
    print(f"peak memory difference {mem['augmented']['peak_mb'] - mem['plain']['peak_mb']:+.0f} MB for {extra} more "
          f"samples (holding them would take {extra * per_sample_mb:.0f} MB)")
    print(f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; now "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
