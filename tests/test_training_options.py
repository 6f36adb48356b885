"""trainmodel's options, each against an independent reference: LEARNING_RATE=auto (the range test),
the losses (cross-entropy, Dice, focal, with class weights and 255 ignored), CLASS_WEIGHTS from the
train split's pixel counts, EARLY_STOPPING, the on-the-fly flips/turns and the time-budget schedule.

The references are PyTorch's own functions and numpy formulas written from the definitions; the
dataset-level checks recount the train masks with GDAL.
"""

import math
import types

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed (optional training dependency: pip install -r requirements-train.txt)")
pytest.importorskip(
    "segmentation_models_pytorch",
    reason="segmentation-models-pytorch is not installed (optional: pip install -r requirements-train.txt)")

import training_data  # noqa: E402
from osgeo import gdal  # noqa: E402

from gullyseg.processing.engine.feedback import RecordingFeedback  # noqa: E402
from gullyseg.processing.engine.training import data, loop, models, trainer  # noqa: E402

FAST = {"epochs": 2, "batch_size": 4, "learning_rate": "0.003", "seed": 1, "threads": 1}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 256 x 256 synthetic scene cut into 16 tiles of 64 px, masks from its ground truth, split 6:2:2."""
    return training_data.tiny_dataset(tmp_path_factory.mktemp("training_options"))


def _random_problem(seed=0, n=4, size=16, ignore_share=0.2):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 2, size, size, generator=g) * 2.0
    target = torch.randint(0, 2, (n, size, size), generator=g)
    ignored = torch.rand(n, size, size, generator=g) < ignore_share
    target[ignored] = 255
    return logits, target


# --- losses -------------------------------------------------------------------------------------

def _softmax_np(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def test_cross_entropy_is_torchs_with_255_ignored_and_class_weights():
    logits, target = _random_problem()
    ref = torch.nn.functional.cross_entropy(logits, target, ignore_index=255)
    assert torch.allclose(loop.make_loss("ce")(logits, target), ref)
    w = [0.3, 1.7]
    ref_w = torch.nn.functional.cross_entropy(logits, target, weight=torch.tensor(w), ignore_index=255)
    assert torch.allclose(loop.make_loss("ce", w)(logits, target), ref_w)


def test_dice_and_focal_equal_numpy_formulas():
    logits, target = _random_problem(seed=1)
    p = _softmax_np(logits.numpy().astype(np.float64))
    t = target.numpy()
    valid = t != 255
    dice_per_class = []
    for k in range(2):
        pk = p[:, k][valid]
        gk = (t[valid] == k).astype(np.float64)
        dice_per_class.append(1.0 - (2.0 * (pk * gk).sum() + 1.0) / (pk.sum() + gk.sum() + 1.0))  # smoothed Dice
    assert float(loop.make_loss("dice")(logits, target)) == pytest.approx(np.mean(dice_per_class), rel=1e-5)
    w = np.array([0.4, 1.6])
    assert float(loop.make_loss("dice", list(w))(logits, target)) == pytest.approx(
        (np.array(dice_per_class) * w).sum() / w.sum(), rel=1e-5)

    pt = np.take_along_axis(p, np.where(valid, t, 0)[:, None], axis=1)[:, 0][valid]
    focal_ref = np.mean(-((1.0 - pt) ** 2) * np.log(pt))  # Lin et al. 2017, gamma 2, alpha none
    assert float(loop.make_loss("focal")(logits, target)) == pytest.approx(focal_ref, rel=1e-5)
    combined = loop.make_loss("ce+dice")(logits, target)
    assert float(combined) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, target, ignore_index=255)) + np.mean(dice_per_class),
        rel=1e-5)


@pytest.mark.parametrize("name", loop.LOSSES)
def test_every_loss_ignores_255_pixels_and_is_zero_ish_when_perfect(name):
    logits, target = _random_problem(seed=2)
    loss = loop.make_loss(name, [0.5, 1.5])
    before = float(loss(logits, target))
    changed = logits.clone()
    ignored = (target == 255).unsqueeze(1).expand_as(changed)
    changed[ignored] = torch.randn(int(ignored.sum())) * 50.0  # whatever the model says where nothing is known
    assert float(loss(changed, target)) == pytest.approx(before, rel=1e-6)
    perfect = torch.where(target == 1, 1, 0)
    sure = torch.stack([(1 - perfect) * 20.0 - 10.0, perfect * 20.0 - 10.0], dim=1).float()
    assert float(loss(sure, target)) < 1e-3 < before


def test_unknown_loss_is_an_error_naming_the_parameter():
    from gullyseg.processing.engine.errors import GullySegError

    with pytest.raises(GullySegError, match="LOSS: 'lovasz'"):
        loop.make_loss("lovasz")


@pytest.mark.parametrize("name", loop.LOSSES)
def test_every_loss_trains(name):
    """Each loss, used by the loop, fits a small separable problem: its value falls and the pixels come right."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 16, 16, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0.8).long()  # a thresholded band mix: about 20 % 'gully'
    y[:, :2] = 255
    net = torch.nn.Conv2d(3, 2, 1)
    torch.manual_seed(0)
    res = loop.train_on_arrays(net, x.numpy(), y.numpy(), x.numpy(), y.numpy(), epochs=30, batch_size=4, lr=0.05,
                               loss=name, augment=False, seed=0, threads=1)
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < 0.6 * losses[0]
    assert res.best_miou > 0.8


# --- class weights --------------------------------------------------------------------------------

def test_class_weights_are_inverse_frequency_with_mean_one():
    w = loop.class_weights_from_counts([900, 100])
    assert np.mean(w) == pytest.approx(1.0)
    assert w[1] / w[0] == pytest.approx(9.0)  # inverse of the pixel shares
    extreme = loop.class_weights_from_counts([1_000_000, 1])
    # 1 / (2 x share): 0.5 for the common class, 500,000 clipped to 10 for the rare one, then scaled to mean 1
    assert extreme[1] / extreme[0] == pytest.approx(10.0 / 0.5, rel=1e-4)


def test_class_weights_option_uses_the_train_splits_masks(tiny, tmp_path):
    """CLASS_WEIGHTS=true: the weights in the model's record come from the gully share of the train
    split's masks, recounted here with GDAL."""
    spec = data.open_dataset(tiny["root"])
    counts = np.zeros(2, dtype=np.int64)
    for sid in spec.ids("train"):
        mask = gdal.Open(spec.samples[sid]["mask"]).ReadAsArray()
        counts += [int((mask == 0).sum()), int((mask == 1).sum())]
    share = counts / counts.sum()
    expected = 1.0 / (2 * share)
    expected = expected / expected.mean()
    res = trainer.train_model(str(tiny["root"]), str(tmp_path / "w.onnx"), class_weights=True,
                              **{**FAST, "epochs": 1})
    got = res["record"]["class_weights"]
    assert got == pytest.approx(list(expected), rel=1e-6)
    assert got[1] > got[0]  # gully is the rarer class
    plain = trainer.train_model(str(tiny["root"]), str(tmp_path / "p.onnx"), **{**FAST, "epochs": 1})
    assert plain["record"]["class_weights"] is None


# --- learning rate: auto ------------------------------------------------------------------------

def test_lr_range_test_restores_the_weights_and_chooses_below_divergence():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 16, 16, generator=g)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    batches = loop.array_batches(x.numpy(), y.numpy(), 4, seed=0)
    fb = RecordingFeedback()
    lr = loop.lr_range_test(net, batches, loop.make_loss("ce"), torch.device("cpu"), steps=40, feedback=fb)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the test leaves no trace
    assert 1e-5 <= lr <= 1e-2
    message = [m for m in fb.infos if m.startswith("Learning-rate range test")]
    assert message, fb.infos
    # the rate it reports as 'lowest smoothed loss' is ten times the chosen one (unless clipped)
    at = float(message[0].split(" at ")[1].split(";")[0])
    assert lr == pytest.approx(min(max(at / 10.0, 1e-5), 1e-2), rel=1e-2)
    # independently: training with the chosen rate lowers the loss; with 100x that rate it does not help
    ce = torch.nn.functional.cross_entropy

    def trained_loss(rate):
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))
        m.load_state_dict(before)
        opt = torch.optim.AdamW(m.parameters(), lr=rate)
        for _ in range(20):
            opt.zero_grad()
            loss = ce(m(x), y)
            loss.backward()
            opt.step()
        return float(ce(m(x), y))

    with torch.no_grad():
        start = float(ce(net(x), y))
    assert trained_loss(lr) < 0.8 * start


def test_lr_range_test_stops_when_the_loss_explodes():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 8, 8, generator=g)
    y = (x[:, 1] > 0).long()
    net = torch.nn.Conv2d(3, 2, 1)
    fb = RecordingFeedback()
    loop.lr_range_test(net, loop.array_batches(x.numpy(), y.numpy(), 4, seed=0), loop.make_loss("ce"),
                       torch.device("cpu"), steps=200, lo=1e-4, hi=1e6, feedback=fb)
    message = next(m for m in fb.infos if m.startswith("Learning-rate range test"))
    steps = int(message.split(":")[1].split("steps")[0])
    assert steps < 200  # rates up to 1e6 blow the loss up long before the last step


def test_learning_rate_auto_through_the_engine(tiny, tmp_path):
    fb = RecordingFeedback()
    res = trainer.train_model(str(tiny["root"]), str(tmp_path / "a.onnx"), feedback=fb,
                              **{**FAST, "epochs": 1, "learning_rate": "auto"})
    lr = res["record"]["learning_rate"]
    assert isinstance(lr, float) and 1e-5 <= lr <= 1e-2
    assert any(m.startswith("Learning-rate range test") and f"learning rate {lr:.3g}" in m for m in fb.infos)


# --- early stopping -------------------------------------------------------------------------------

def test_early_stopping_after_patience_epochs_without_gain():
    """With a zero learning rate val mIoU never improves after epoch 1: patience 2 stops after epoch 3."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 8, 8, generator=g).numpy()
    y = (x[:, 0] > 0).astype(np.int64)
    fb = RecordingFeedback()
    res = loop.train_on_arrays(torch.nn.Conv2d(3, 2, 1), x, y, x, y, epochs=20, batch_size=4, lr=0.0,
                               early_stopping=2, augment=False, seed=0, threads=1, feedback=fb)
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert res.stopped_early and res.best_epoch == 1
    assert any("Early stopping" in m for m in fb.infos)
    full = loop.train_on_arrays(torch.nn.Conv2d(3, 2, 1), x, y, x, y, epochs=5, batch_size=4, lr=0.0,
                                early_stopping=0, augment=False, seed=0, threads=1)
    assert len(full.history) == 5 and not full.stopped_early


def test_early_stopping_through_the_engine_is_in_the_record(tiny, tmp_path):
    res = trainer.train_model(str(tiny["root"]), str(tmp_path / "e.onnx"), early_stopping=1,
                              **{**FAST, "epochs": 6, "learning_rate": "1e-9"})
    record = res["record"]
    assert record["early_stopped"] is True
    assert record["epochs_run"] == record["best_epoch"] + 1 < 6


# --- on-the-fly augmentation ----------------------------------------------------------------------

def _dihedral(a):
    """The 8 flips/turns of the last two axes (numpy reference)."""
    out = []
    for k in range(4):
        r = np.rot90(a, k, axes=(-2, -1))
        out += [r, np.flip(r, axis=-1)]
    return out


def test_augment_batch_applies_one_flip_or_turn_to_image_and_label_together():
    n, size = 64, 6
    x = torch.arange(n * 2 * size * size, dtype=torch.float32).reshape(n, 2, size, size)
    y = torch.arange(n * size * size).reshape(n, size, size) % 7
    y[:, 0, 0] = 255  # an ignored corner moves with its pixel
    xa, ya = loop.augment_batch(x, y, torch.Generator().manual_seed(3))
    seen = set()
    for i in range(n):
        xs, ys = _dihedral(x[i].numpy()), _dihedral(y[i].numpy())
        match = [k for k in range(8) if np.array_equal(xs[k], xa[i].numpy())]
        assert len(match) == 1, f"sample {i} is not a flip/turn of its original"
        assert np.array_equal(ys[match[0]], ya[i].numpy()), f"sample {i}: label not moved with the image"
        seen.add(match[0])
    assert seen == set(range(8))  # all eight occur in 64 draws


def test_augment_batch_on_rectangles_only_flips():
    x = torch.arange(32 * 4 * 6, dtype=torch.float32).reshape(32, 1, 4, 6)
    y = torch.zeros(32, 4, 6, dtype=torch.long)
    xa, ya = loop.augment_batch(x, y, torch.Generator().manual_seed(0))
    assert xa.shape == x.shape and ya.shape == y.shape
    flips = [lambda a: a, lambda a: np.flip(a, -1), lambda a: np.flip(a, -2), lambda a: np.flip(np.flip(a, -1), -2)]
    for i in range(32):
        assert any(np.array_equal(f(x[i].numpy()), xa[i].numpy()) for f in flips)


def test_fit_augments_only_when_asked():
    """The batches the model sees: transformed copies with AUGMENT, the stored tiles without."""
    x = torch.arange(4 * 1 * 4 * 4, dtype=torch.float32).reshape(4, 1, 4, 4).numpy()
    y = np.zeros((4, 4, 4), dtype=np.int64)

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 1)
            self.seen = []

        def forward(self, t):
            if self.training:
                self.seen.append(t.detach().clone())
            return self.conv(t)

    for augment in (False, True):
        spy = Spy()
        loop.train_on_arrays(spy, x, y, epochs=3, batch_size=4, lr=1e-3, augment=augment, seed=0, threads=1)
        stored = {tuple(s.flatten().tolist()) for s in torch.from_numpy(x)}
        given = [tuple(s.flatten().tolist()) for batch in spy.seen for s in batch]
        if augment:
            assert any(s not in stored for s in given)
            assert {tuple(sorted(s)) for s in given} == {tuple(sorted(s)) for s in stored}  # same pixels, moved
        else:
            assert all(s in stored for s in given)


# --- time budget ----------------------------------------------------------------------------------

def test_time_budget_fits_the_cosine_decay_to_the_epochs_that_fit(monkeypatch):
    """max_seconds: epoch 1's duration says how many epochs fit; the learning rate decays over those,
    and the run ends there at the low end of the schedule (a fake clock: 10 s per reading)."""
    clock = {"t": 0.0}

    def fake_monotonic():
        clock["t"] += 10.0
        return clock["t"]

    monkeypatch.setattr(loop, "time", types.SimpleNamespace(monotonic=fake_monotonic))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 8, 8, generator=g).numpy()
    y = (x[:, 0] > 0).astype(np.int64)
    fb = RecordingFeedback()
    net = torch.nn.Conv2d(3, 2, 1)
    loop.seed_everything(0, 1)
    train = loop.array_batches(x, y, 4, seed=0)
    res = loop.fit(net, train, lambda: loop.array_batches(x, y, 4, shuffle=False)(0), epochs=100, lr=0.01,
                   augment=False, feedback=fb, max_seconds=200.0)
    first = next(m for m in fb.infos if m.startswith("Time budget"))
    fitting = int(first.split("so about ")[1].split(" epochs")[0])
    assert 1 < fitting < 100
    assert len(res.history) == fitting
    lrs = [h["lr"] for h in res.history]
    assert lrs == sorted(lrs, reverse=True)  # decaying all the way, no restart
    eta_min = 0.01 * 0.02
    expected_last = eta_min + (0.01 - eta_min) * (1 + math.cos(math.pi * fitting / fitting)) / 2
    assert lrs[-1] == pytest.approx(expected_last, rel=0.05)


def test_a_last_batch_of_one_sample_is_skipped_not_fatal():
    """N = 1 modulo the batch size: DeepLabV3+'s pooled branch cannot train batch norm on one sample
    (PyTorch raises); the loop skips that batch, as found on a 209-tile train split with batch 16."""
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(0)).numpy()
    y = (x[:, 0] > 0).astype(np.int64)
    net = models.build("deeplabv3plus", models.DEFAULT_ENCODER, 3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        net.train()(torch.from_numpy(x[:1]))  # the failure the skip avoids
    res = loop.train_on_arrays(net, x, y, epochs=2, batch_size=4, lr=1e-3, seed=0, threads=1)
    assert [h["samples"] for h in res.history] == [4, 4]
