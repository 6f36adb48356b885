#!/usr/bin/env python3
"""Check trainmodel's training loop and the trained models' inference on a CUDA GPU machine.

That machine has PyTorch and onnxruntime but no GDAL and no QGIS, so the check runs in two steps:

1. here (GDAL): ``tools/gpu_check.py pack DATASET build/gpu/data.npz`` reads the original (not
   augmented) train/val/test tiles of a split dataset folder with the training engine's own reader
   (training/data.py: the card's scaling, the train split's mean/std, nodata pixels set to 0) and
   stores them as uint8 + the folded scale/offset, compressed;
2. there: ``python3 tools/gpu_check.py run build/gpu/data.npz --out DIR`` loads the engine's
   training package without its GDAL-bound parent (a bare package over processing/engine, so the
   training modules' relative imports resolve), and
   - trains U-Net with the default encoder with the engine's loop (``loop.train_on_arrays``:
     on-the-fly flips/turns, best epoch on val mIoU) on DEVICE cuda, and one epoch on the CPU for
     the ratio, reporting samples/s;
   - exports it with the engine's exporter (``models.export_to``), runs the ONNX file with
     onnxruntime (CUDA provider when that build has one, else the CPU) on the test tiles and
     compares its probabilities with PyTorch's on the GPU (max abs difference);
   - times inference (megapixels/s) with PyTorch on the GPU and onnxruntime;
   - trains every offered architecture for the same epochs, seed and learning rate on the GPU and
     scores the test tiles (evaluate's conventions, engine/confusion.py): the comparison table.
   Results go to DIR/gpu_check.json (written after each step, so a time-out keeps what finished).
"""

import argparse
import importlib
import json
import os
import platform
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "processing" / "engine"


# --- step 1: pack (here, with GDAL) ------------------------------------------------------------

def pack(dataset_root, out, limit=None):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gullyseg_cli import register_package

    register_package()
    from gullyseg.processing.engine.training import data

    spec = data.check_dataset(data.open_dataset(dataset_root))
    arrays = {}
    for which in ("train", "val", "test"):
        src = data.TileSource(spec, which, 1)
        ids = [sid for sid in src.ids if not spec.samples[sid]["variant"]][:limit]
        raws, valids, ys = [], [], []
        for sid in ids:
            x, y, raw = src.read(sid)
            raws.append(raw.astype(np.uint8))
            valids.append(~np.all(x == 0, axis=0))  # read() sets nodata pixels to 0 in every band
            ys.append(y.astype(np.uint8))
        arrays[f"{which}_raw"] = np.stack(raws)
        arrays[f"{which}_valid"] = np.stack(valids)
        arrays[f"{which}_y"] = np.stack(ys)
    src = data.TileSource(spec, "train", 1)
    arrays["a"], arrays["b"] = src.a, src.b
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    sizes = {k: v.shape for k, v in arrays.items()}
    print(f"packed {out} ({os.path.getsize(out) / 1e6:.1f} MB): {sizes}")


# --- step 2: run (on the GPU machine, no GDAL) ---------------------------------------------------

def engine_modules():
    """(loop, models, confusion) of the engine, imported through a bare package over processing/engine
    (its __init__ imports GDAL, the training modules do not)."""
    pkg = types.ModuleType("gengine")
    pkg.__path__ = [str(ENGINE)]
    sys.modules["gengine"] = pkg
    return (importlib.import_module("gengine.training.loop"), importlib.import_module("gengine.training.models"),
            importlib.import_module("gengine.confusion"))


def load_split(npz, which):
    raw = npz[f"{which}_raw"].astype(np.float32)
    x = raw * npz["a"][None] + npz["b"][None]
    x[~np.broadcast_to(npz[f"{which}_valid"][:, None], x.shape)] = 0.0
    return x.astype(np.float32), npz[f"{which}_y"].astype(np.int64)


class Log:
    def __init__(self, quiet=False):
        self.quiet = quiet

    def info(self, message):
        if not self.quiet:
            print(message, flush=True)

    def warn(self, message):
        print("WARNING:", message, flush=True)

    def progress(self, percent):
        pass

    def is_cancelled(self):
        return False


def test_scores(loop, confusion, net, x, y, device, batch=16):
    import torch

    batches = loop.array_batches(x, y, batch, shuffle=False)(0)
    _, matrix = loop.evaluate(net, batches, torch.device(device))
    s = confusion.scores(matrix)
    return {"oa": s["oa"], "miou": s["miou"], "iou_gully": s["iou_gully"], "precision": s["precision"],
            "recall": s["recall"], "f1": s["f1"]}


def train_one(loop, models, confusion, arch, encoder, data, epochs, batch, lr, device, seed=7):
    import torch

    (xt, yt), (xv, yv), (xs, ys) = data
    torch.manual_seed(seed)
    net = models.build(arch, encoder, xt.shape[1])
    params = sum(p.numel() for p in net.parameters())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = loop.train_on_arrays(net, xt, yt, xv, yv, epochs=epochs, batch_size=batch, lr=lr, seed=seed,
                               device=device, feedback=Log(quiet=True))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    net.load_state_dict(res.best_state)
    row = {"architecture": models.label(arch), "encoder": encoder, "parameters": params, "epochs": epochs,
           "best_epoch": res.best_epoch, "val_miou": res.best_miou, "train_seconds": round(seconds, 2),
           "samples_per_s": round(float(np.median([h["samples_per_s"] for h in res.history])), 1),
           "test": test_scores(loop, confusion, net, xs, ys, device)}
    return net, row


def run(npz_path, out_dir, epochs, batch, lr, budget_s, allow_cpu=False, window=1024):
    import onnxruntime as ort
    import torch

    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result_path = out_dir / "gpu_check.json"
    result = {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": ort.__version__,
              "cuda_available": torch.cuda.is_available(),
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "cpu_threads": torch.get_num_threads(), "ort_providers": ort.get_available_providers()}

    def save():
        result["elapsed_s"] = round(time.perf_counter() - started, 1)
        result_path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")

    save()
    print(json.dumps(result), flush=True)
    loop, models, confusion = engine_modules()
    import segmentation_models_pytorch as smp

    result["smp"] = smp.__version__
    npz = np.load(npz_path)
    data = [load_split(npz, w) for w in ("train", "val", "test")]
    result["samples"] = {w: int(d[0].shape[0]) for w, d in zip(("train", "val", "test"), data)}
    device = "cuda" if torch.cuda.is_available() else "cpu"

    # 1. U-Net / default encoder on the GPU with the engine's loop; a device that is not CUDA says so
    if not allow_cpu:
        loop.resolve_device("cuda")  # DEVICE cuda without a GPU: the engine's error
    net, row = train_one(loop, models, confusion, "unet", models.DEFAULT_ENCODER, data, epochs, batch, lr, device)
    result["unet_gpu"] = row
    save()
    print("U-Net on the GPU:", json.dumps(row), flush=True)

    # 1b. the same loop on the CPU for one epoch (all the machine's cores): samples/s ratio
    cpu_net = models.build("unet", models.DEFAULT_ENCODER, data[0][0].shape[1])
    n_cpu = min(64, data[0][0].shape[0])
    r = loop.train_on_arrays(cpu_net, data[0][0][:n_cpu], data[0][1][:n_cpu], epochs=1, batch_size=batch, lr=lr,
                             seed=7, device="cpu", feedback=Log(quiet=True))
    result["unet_cpu_one_epoch"] = {"samples": n_cpu, "threads": torch.get_num_threads(),
                                    "samples_per_s": round(r.history[0]["samples_per_s"], 2)}
    result["gpu_over_cpu_samples_per_s"] = round(row["samples_per_s"] / r.history[0]["samples_per_s"], 1)
    save()

    # 2. export with the engine's exporter; onnxruntime vs PyTorch on the GPU, same test tiles
    onnx_path = out_dir / "unet_gpu.onnx"
    net = net.to("cpu").eval()
    models.export_to(net, str(onnx_path), data[0][0].shape[1], data[0][0].shape[-1])
    gpu_net = models.WithSoftmax.wrap(net).to(device).eval()
    xs = data[2][0]

    def gpu_probabilities():
        with torch.no_grad():
            return np.concatenate([gpu_net(torch.from_numpy(xs[i:i + 8]).to(device)).cpu().numpy()
                                   for i in range(0, len(xs), 8)])

    tf32 = gpu_probabilities()  # PyTorch's default on the GPU: TF32 convolutions
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    ref = gpu_probabilities()  # full fp32, what the ONNX file computes
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    sess = ort.InferenceSession(str(onnx_path), providers=providers)
    got = np.concatenate([sess.run(None, {"input": xs[i:i + 8]})[0] for i in range(0, len(xs), 8)])
    result["onnx_vs_torch_gpu"] = {"providers_used": sess.get_providers(), "tiles": int(len(xs)),
                                   "max_abs_diff_probability": float(np.abs(got - ref).max()),
                                   "max_abs_diff_probability_vs_tf32": float(np.abs(got - tf32).max()),
                                   "argmax_agreement": float(np.mean(got.argmax(1) == ref.argmax(1)))}
    save()
    print("ONNX vs PyTorch (GPU):", json.dumps(result["onnx_vs_torch_gpu"]), flush=True)

    # 3. inference throughput: 1024 px windows, batch 4 (PyTorch fp32 on the GPU; onnxruntime)
    win = torch.randn(4, xs.shape[1], window, window)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    timing = {}
    with torch.no_grad():
        g = win.to(device)
        for _ in range(3):
            gpu_net(g)
        sync()
        t0 = time.perf_counter()
        for _ in range(10):
            gpu_net(g).cpu()
        sync()
        timing[f"torch_{device}_fp32_mp_per_s"] = round(40 * window * window / (time.perf_counter() - t0) / 1e6, 1)
    w = win.numpy()
    sess.run(None, {"input": w})
    t0 = time.perf_counter()
    for _ in range(2):
        sess.run(None, {"input": w})
    timing[f"onnxruntime_{sess.get_providers()[0]}_mp_per_s"] = round(
        8 * window * window / (time.perf_counter() - t0) / 1e6, 2)
    result["inference_throughput"] = timing
    save()
    print("inference:", json.dumps(timing), flush=True)

    torch.backends.cudnn.allow_tf32 = True  # training as PyTorch does by default on the GPU
    torch.backends.cuda.matmul.allow_tf32 = True

    # 4. the architectures, same epochs/seed/lr, on the GPU
    table = []
    result["comparison"] = {"epochs": epochs, "batch": batch, "lr": lr, "seed": 7, "rows": table}
    for arch in models.ARCHITECTURE_KEYS:
        encoder = "mit_b0" if arch == "segformer" else models.DEFAULT_ENCODER
        if time.perf_counter() - started > budget_s:
            table.append({"architecture": models.label(arch), "encoder": encoder, "skipped": "time budget"})
            continue
        try:
            models.check_exportable(arch, encoder, xs.shape[1], xs.shape[-1])
        except Exception as exc:  # noqa: BLE001 - refused architectures are reported with the reason
            table.append({"architecture": models.label(arch), "encoder": encoder, "refused": str(exc)[:300]})
            save()
            continue
        if arch == "unet":
            table.append(result["unet_gpu"])
        else:
            _, row = train_one(loop, models, confusion, arch, encoder, data, epochs, batch, lr, device)
            table.append(row)
        save()
        print("comparison:", json.dumps(table[-1]), flush=True)
    table.sort(key=lambda r: -(r.get("test") or {}).get("miou", -1))
    save()
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("dataset")
    p.add_argument("out")
    p.add_argument("--limit", type=int, default=None, help="at most this many tiles per split")
    r = sub.add_parser("run")
    r.add_argument("npz")
    r.add_argument("--out", default=os.environ.get("OUT", "build/gpu/out"))
    r.add_argument("--epochs", type=int, default=40)
    r.add_argument("--batch", type=int, default=16)
    r.add_argument("--lr", type=float, default=3e-3)
    r.add_argument("--allow-cpu", action="store_true", help="smoke-test the script without a GPU")
    r.add_argument("--window", type=int, default=1024, help="inference timing window size (px)")
    r.add_argument("--budget", type=float, default=360.0, help="no new architecture starts after this many s")
    args = ap.parse_args(argv)
    if args.cmd == "pack":
        pack(args.dataset, args.out, args.limit)
    else:
        run(args.npz, args.out, args.epochs, args.batch, args.lr, args.budget, args.allow_cpu, args.window)
    return 0


if __name__ == "__main__":
    sys.exit(main())
