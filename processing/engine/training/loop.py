"""The training loop: tensors in, trained weights and a per-epoch history out.

This module imports torch (and numpy) only: no GDAL, no QGIS, no other GullySeg module at import
time, so it also runs on a GPU machine without GDAL; load it by path and call ``train_on_arrays``.
Data come from a ``batches(epoch)`` callable (the engine streams tiles from disk; ``train_on_arrays``
slices arrays held in memory), each batch a pair (x float32 [N, C, H, W] normalised, y int64
[N, H, W] with 0 background, 1 gully, 255 ignored).

Validation counts a confusion matrix on the device (``confusion``) and scores it with evaluate's
convention (``miou``: mean IoU over the classes, 255 ignored, a class absent from reference and
prediction left out); the engine's reported numbers come from processing/engine/metrics.py, and
tests/test_training.py checks both agree.
"""

import copy
import math
import queue
import threading
import time
from typing import Callable, Iterator

import numpy as np
import torch

try:  # inside the plugin: the engine's errors; loaded by path (no package): plain ones
    from ..errors import Cancelled, GullySegError
except ImportError:  # pragma: no cover - exercised by the GDAL-free test in a subprocess
    class GullySegError(Exception):
        pass

    class Cancelled(GullySegError):
        pass

IGNORE = 255
NUM_CLASSES = 2
LOSSES = ("ce", "dice", "ce+dice", "focal")
LOSS_LABELS = {"ce": "cross-entropy", "dice": "Dice", "ce+dice": "cross-entropy + Dice", "focal": "focal (gamma 2)"}
DEVICES = ("auto", "cpu", "cuda")
LR_AUTO = "auto"


class _Quiet:
    def progress(self, percent):
        pass

    def info(self, message):
        pass

    def warn(self, message):
        pass

    def is_cancelled(self):
        return False


def resolve_device(name="auto") -> torch.device:
    """'auto' -> cuda when available else cpu; 'cuda' without a GPU is an error."""
    name = (name or "auto").strip().lower()
    if name not in DEVICES and not name.startswith("cuda:"):
        raise GullySegError(f"DEVICE: '{name}' is not one of {', '.join(DEVICES)}.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GullySegError(
            f"DEVICE: '{name}' was asked for, but PyTorch sees no CUDA GPU (torch {torch.__version__}, "
            f"built with CUDA {torch.version.cuda or 'none'}). Use DEVICE=cpu or auto, or install the CUDA build "
            "of PyTorch (docs/training.md)."
        )
    return torch.device(name)


def seed_everything(seed, threads=None) -> None:
    """Same seed and threads on the CPU -> the same weights, bit for bit."""
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(int(seed))
    np.random.seed(int(seed) % (2 ** 32))


# --- losses ----------------------------------------------------------------------------------

def class_weights_from_counts(counts) -> list:
    """Inverse-frequency weights (mean 1) from pixel counts per class; clipped to 0.1..10."""
    counts = np.asarray(counts, dtype=np.float64)
    share = counts / max(counts.sum(), 1.0)
    w = np.where(share > 0, 1.0 / (len(counts) * np.maximum(share, 1e-12)), 1.0)
    w = np.clip(w, 0.1, 10.0)
    return [float(v) for v in w / w.mean()]


def make_loss(name, class_weights=None, device="cpu") -> Callable:
    """loss(logits [N, K, H, W], target [N, H, W] int64) -> scalar; pixels == 255 ignored."""
    if name not in LOSSES:
        raise GullySegError(f"LOSS: '{name}' is not one of {', '.join(LOSSES)}.")
    weight = torch.tensor(class_weights, dtype=torch.float32, device=device) if class_weights else None
    nn_f = torch.nn.functional

    def ce(logits, target):
        return nn_f.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE)

    def dice(logits, target):
        valid = (target != IGNORE)
        prob = torch.softmax(logits, dim=1)
        onehot = nn_f.one_hot(torch.where(valid, target, 0), logits.shape[1]).permute(0, 3, 1, 2).float()
        v = valid.unsqueeze(1).float()
        inter = (prob * onehot * v).sum(dim=(0, 2, 3))
        denom = (prob * v).sum(dim=(0, 2, 3)) + (onehot * v).sum(dim=(0, 2, 3))
        d = 1.0 - (2.0 * inter + 1.0) / (denom + 1.0)
        if weight is not None:
            return (d * weight).sum() / weight.sum()
        return d.mean()

    def focal(logits, target, gamma=2.0):
        logp = nn_f.log_softmax(logits, dim=1)
        valid = target != IGNORE
        t = torch.where(valid, target, 0)
        logpt = logp.gather(1, t.unsqueeze(1)).squeeze(1)
        term = -((1.0 - logpt.exp()) ** gamma) * logpt
        if weight is not None:
            term = term * weight[t]
        return term[valid].mean() if valid.any() else term.sum() * 0.0

    return {"ce": ce, "dice": dice, "ce+dice": lambda lg, t: ce(lg, t) + dice(lg, t), "focal": focal}[name]


# --- scores ----------------------------------------------------------------------------------

def confusion(pred, target, k=NUM_CLASSES) -> torch.Tensor:
    """K x K confusion matrix (rows reference, columns prediction) of label tensors; 255 ignored."""
    valid = target != IGNORE
    code = target[valid].long() * k + pred[valid].long()
    return torch.bincount(code, minlength=k * k).reshape(k, k)


def miou(matrix) -> float:
    """Mean IoU with evaluate's convention (metrics.scores): NaN classes (absent from both) left out."""
    m = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(m)
    den = m.sum(axis=0) + m.sum(axis=1) - tp
    iou = [tp[i] / den[i] for i in range(len(tp)) if den[i] > 0]
    return float(np.mean(iou)) if iou else float("nan")


# --- on-the-fly augmentation -----------------------------------------------------------------

def augment_batch(x, y, generator) -> tuple:
    """Random flips and 90-degree turns per sample (seeded generator); square tiles only turn."""
    n = x.shape[0]
    square = x.shape[-1] == x.shape[-2]
    codes = torch.randint(0, 8 if square else 4, (n,), generator=generator).tolist()
    xs, ys = [], []
    for i, code in enumerate(codes):
        xi, yi = x[i], y[i]
        if code & 1:
            xi, yi = xi.flip(-1), yi.flip(-1)
        if code & 2:
            xi, yi = xi.flip(-2), yi.flip(-2)
        if code & 4:
            xi, yi = xi.transpose(-1, -2), yi.transpose(-1, -2)
        xs.append(xi)
        ys.append(yi)
    return torch.stack(xs).contiguous(), torch.stack(ys).contiguous()


# --- batches ---------------------------------------------------------------------------------

def array_batches(x, y, batch_size, shuffle=True, seed=0) -> Callable:
    """A ``batches(epoch)`` callable over arrays held in memory (the same order rule as the engine)."""
    x = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
    y = torch.as_tensor(np.ascontiguousarray(y)).long()

    def batches(epoch):
        order = epoch_order(len(x), seed, epoch) if shuffle else list(range(len(x)))
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            yield x[idx], y[idx]

    batches.count = lambda: math.ceil(len(x) / batch_size)
    return batches


def epoch_order(n, seed, epoch) -> list:
    """The sample order of an epoch: a permutation that depends on (seed, epoch) only."""
    g = torch.Generator().manual_seed((int(seed) * 100003 + int(epoch)) % (2 ** 62))
    return torch.randperm(n, generator=g).tolist()


def prefetch(iterable, depth=2) -> Iterator:
    """Iterate ``iterable`` in a background thread, ``depth`` items ahead (tile reads overlap training)."""
    q = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work():
        try:
            for item in iterable:
                if stop.is_set():
                    return
                q.put(item)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(exc)
            return
        q.put(done)

    t = threading.Thread(target=work, daemon=True, name="gullyseg-prefetch")
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass


# --- the loop --------------------------------------------------------------------------------

class FitResult:
    def __init__(self, history, best_epoch, best_state, best_miou, best_matrix, stopped_early, state):
        self.history = history
        self.best_epoch = best_epoch
        self.best_state = best_state
        self.best_miou = best_miou
        self.best_matrix = best_matrix
        self.stopped_early = stopped_early
        self.state = state  # the resumable state after the last epoch


def _check(feedback):
    if feedback.is_cancelled():
        raise Cancelled("Cancelled: training stopped between two batches; nothing was written.")


def evaluate(model, batches, device, loss_fn=None, feedback=None) -> tuple:
    """(mean loss, confusion matrix as numpy int64) of a model over batches (no gradients)."""
    feedback = feedback or _Quiet()
    model.eval()
    total = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64, device=device)
    losses = []
    with torch.no_grad():
        for x, y in batches:
            _check(feedback)
            x, y = x.to(device), y.to(device)
            logits = model(x)
            if loss_fn is not None:
                losses.append(float(loss_fn(logits, y)))
            total += confusion(logits.argmax(dim=1), y)
    return (float(np.mean(losses)) if losses else float("nan")), total.cpu().numpy()


def lr_range_test(model, batches, loss_fn, device, steps=30, lo=1e-6, hi=1.0, feedback=None) -> float:
    """A short learning-rate range test (Smith 2017, as ArcGIS's 'auto'): the learning rate grows
    exponentially from ``lo`` to ``hi`` over ``steps`` batches; the result is a tenth of the rate
    at the lowest smoothed loss. The model's weights are restored afterwards."""
    feedback = feedback or _Quiet()
    saved = copy.deepcopy(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=lo)
    model.train()
    rates, smooth, best, avg = [], [], float("inf"), None
    step = 0
    gen = (b for epoch in range(10 ** 6) for b in batches(-1 - epoch))
    for x, y in gen:
        if step >= steps:
            break
        _check(feedback)
        lr = lo * (hi / lo) ** (step / max(steps - 1, 1))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = x.to(device), y.to(device)
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        avg = value if avg is None else 0.7 * avg + 0.3 * value
        rates.append(lr)
        smooth.append(avg)
        step += 1
        if not math.isfinite(value) or (step > 5 and avg > 4 * best):
            break
        best = min(best, avg)
    model.load_state_dict(saved)
    if not smooth:
        return 1e-3
    k = int(np.nanargmin(smooth))
    lr = float(min(max(rates[k] / 10.0, 1e-5), 1e-2))  # AdamW: 1e-2 at most
    feedback.info(f"Learning-rate range test: {len(rates)} steps from {lo:g} to {rates[-1]:.3g}; lowest smoothed "
                  f"loss {smooth[k]:.4f} at {rates[k]:.3g}; learning rate {lr:.3g}.")
    return lr


def _fit_schedule_to_budget(sched, epochs, max_seconds, first_epoch_seconds, feedback):
    """With a time budget, the cosine decay spans the epochs that fit it (measured on epoch 1), not
    EPOCHS: a run stopped by the budget still ends at a low learning rate."""
    fitting = int(max(1, min(int(epochs), max_seconds // max(first_epoch_seconds, 1e-6))))
    if fitting < int(epochs):
        sched.T_max = fitting
        feedback.info(f"Time budget {max_seconds / 60:.1f} min: epoch 1 took {first_epoch_seconds:.0f} s, so about "
                      f"{fitting} epochs fit; the learning rate decays over {fitting} epochs.")


def fit(model, train_batches, val_batches, epochs, lr=1e-3, loss="ce+dice", class_weights=None,
        early_stopping=0, augment=True, seed=0, device="cpu", weight_decay=1e-4, freeze_encoder=False,
        feedback=None, state=None, on_epoch=None, steps_per_epoch=None, max_seconds=None) -> FitResult:
    """Train ``model`` for ``epochs`` epochs (continuing from ``state`` when given); keep the best val mIoU.

    train_batches(epoch) / val_batches(): iterables of (x, y) CPU tensors. ``on_epoch(result_state)``
    is called after each finished epoch (the engine writes the checkpoint there). ``max_seconds``:
    a time budget; no new epoch starts once it is spent (the finished epochs count).
    Returns FitResult. Cancellation (feedback.is_cancelled) is checked before every batch.
    """
    feedback = feedback or _Quiet()
    device = torch.device(device)
    model.to(device)
    if freeze_encoder and hasattr(model, "encoder"):
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    loss_fn = make_loss(loss, class_weights, device)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(int(epochs), 1), eta_min=lr * 0.02)
    history, best = [], {"miou": -1.0, "epoch": 0, "state": None, "matrix": None}
    start_epoch = 1
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history = list(state["history"])
        best = dict(state["best"])
        start_epoch = int(state["epoch"]) + 1
        feedback.info(f"Resuming after epoch {state['epoch']} (best so far: epoch {best['epoch']}, "
                      f"val mIoU {best['miou']:.4f}).")
    n_batches = getattr(train_batches, "count", lambda: None)() or steps_per_epoch or 1
    stopped_early = False
    fit_started = time.monotonic()
    for epoch in range(start_epoch, int(epochs) + 1):
        model.train()
        if freeze_encoder and hasattr(model, "encoder"):
            model.encoder.eval()  # frozen batch-norm statistics too
        gen = torch.Generator().manual_seed((int(seed) * 7919 + epoch) % (2 ** 62))
        t0 = time.monotonic()
        losses, samples = [], 0
        for b, (x, y) in enumerate(train_batches(epoch)):
            _check(feedback)
            if int(x.shape[0]) == 1 and b > 0:
                # a last batch of one sample (N = 1 modulo the batch size): batch norm cannot train on
                # one value per channel (DeepLabV3+'s and PSPNet's pooled branches raise); skipped, and
                # as batches are shuffled per epoch it is another sample each time
                continue
            if augment:
                x, y = augment_batch(x, y, gen)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            out = loss_fn(model(x), y)
            out.backward()
            opt.step()
            losses.append(float(out.detach()))
            samples += int(x.shape[0])
            done = (epoch - 1 + min(1.0, (b + 1) / n_batches)) / int(epochs)
            feedback.progress(100.0 * done)
        sched.step()
        train_seconds = time.monotonic() - t0
        if val_batches is not None:
            val_loss, matrix = evaluate(model, val_batches(), device, loss_fn, feedback)
            val_miou = miou(matrix)
        else:
            val_loss, matrix, val_miou = float("nan"), None, float("nan")
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
               "val_loss": val_loss, "val_miou": val_miou, "lr": opt.param_groups[0]["lr"],
               "samples": samples, "seconds": round(time.monotonic() - t0, 3),
               "samples_per_s": samples / train_seconds if train_seconds > 0 else float("nan")}
        history.append(row)
        if max_seconds and epoch == start_epoch == 1 and int(epochs) > 1:
            _fit_schedule_to_budget(sched, epochs, max_seconds, time.monotonic() - fit_started, feedback)
        score = val_miou if val_batches is not None else -row["train_loss"]
        improved = math.isfinite(score) and score > best["miou"]
        if improved or best["state"] is None:
            best = {"miou": score, "epoch": epoch, "matrix": None if matrix is None else matrix.tolist(),
                    "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
        feedback.info(
            f"epoch {epoch}/{epochs}: train loss {row['train_loss']:.4f}, val loss {val_loss:.4f}, val mIoU "
            f"{val_miou:.4f} (best {best['miou']:.4f} at epoch {best['epoch']}), {row['samples_per_s']:.1f} "
            f"samples/s, {row['seconds']:.1f} s"
        )
        state = {"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "history": history, "best": best}
        if on_epoch is not None:
            on_epoch(state)
        if early_stopping and epoch - best["epoch"] >= int(early_stopping):
            feedback.info(f"Early stopping: no val mIoU gain for {early_stopping} epochs.")
            stopped_early = True
            break
        if max_seconds and epoch < int(epochs) and (time.monotonic() - fit_started >= max_seconds
                                                    or epoch >= sched.T_max):
            feedback.info(f"Time budget of {max_seconds / 60:.1f} min spent after epoch {epoch}.")
            stopped_early = True
            break
    return FitResult(history, best["epoch"], best["state"], best["miou"], best["matrix"], stopped_early, state)


def train_on_arrays(model, x_train, y_train, x_val=None, y_val=None, epochs=10, batch_size=8, lr=1e-3,
                    loss="ce+dice", class_weights=None, early_stopping=0, augment=True, seed=0, device="cpu",
                    threads=None, feedback=None, state=None, on_epoch=None) -> FitResult:
    """Standalone use (no GDAL): train ``model`` on arrays held in memory.

    x: float32 [N, C, H, W] already normalised; y: [N, H, W] labels (0, 1, 255 ignored).
    lr='auto' runs the range test first. Returns FitResult (best weights are not loaded: do
    ``model.load_state_dict(result.best_state)``).
    """
    seed_everything(seed, threads)
    train = array_batches(x_train, y_train, batch_size, shuffle=True, seed=seed)
    val = None
    if x_val is not None and len(x_val):
        vb = array_batches(x_val, y_val, batch_size, shuffle=False)
        val = lambda: vb(0)  # noqa: E731
    dev = resolve_device(device) if isinstance(device, str) else device
    if lr == LR_AUTO:
        model.to(dev)
        lr = lr_range_test(model, train, make_loss(loss, class_weights, dev), dev, feedback=feedback)
    return fit(model, train, val, epochs, lr=lr, loss=loss, class_weights=class_weights,
               early_stopping=early_stopping, augment=augment, seed=seed, device=dev, feedback=feedback,
               state=state, on_epoch=on_epoch)
