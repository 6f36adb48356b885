"""Checking a model's layout: its input, the head and channel of the gully score, probe runs.

``onnx_model.load_model`` calls these; every refusal names the layout and what would make it run
(docs/models.md lists the accepted layouts).
"""

import numpy as np

from .errors import GullySegError


def _dim(value):
    return value if isinstance(value, int) and value > 0 else None


def _check_input(session, path):
    """The image input: (input, shape, channels); refusals name the layout and what would run."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise GullySegError(
            f"MODEL: '{path}' has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
            "GullySeg needs one image input [N, C, H, W] (export the model with the image as its only input)."
        )
    inp = inputs[0]
    shape = list(inp.shape or [])
    if inp.type != "tensor(float)":
        raise GullySegError(
            f"MODEL: '{path}' input '{inp.name}' is {inp.type}; GullySeg feeds float32 images [N, C, H, W] "
            "(tensor(float)): export the model with a float32 input (a Cast inside the graph is fine)."
        )
    if len(shape) != 4:
        raise GullySegError(
            f"MODEL: '{path}' input '{inp.name}' has shape {shape}, not an image tensor [N, C, H, W] "
            "(channels first, float32)."
        )
    channels = _dim(shape[1])
    if channels is None:
        raise GullySegError(
            f"MODEL: '{path}' input '{inp.name}' has shape {shape}: the number of channels (dimension 1) must be fixed."
        )
    if channels > 64:
        raise GullySegError(
            f"MODEL: '{path}' input '{inp.name}' has shape {shape}: {channels} channels looks like channels-last "
            "(NHWC) or not an image; GullySeg needs [N, C, H, W] (add a Transpose at the graph's input)."
        )
    if (_dim(shape[2]) is None) != (_dim(shape[3]) is None):
        raise GullySegError(f"MODEL: '{path}' input shape {shape}: H and W must be both fixed or both dynamic.")
    return inp, shape, channels


def _choose_head(session, meta, path):
    """(output, index, how it was chosen): gullyseg.gully_output, the head with a class named gully, the first."""
    outputs = session.get_outputs()
    names = [o.name for o in outputs]
    wanted = meta["gully_output"]
    if wanted is not None:
        index = names.index(wanted) if isinstance(wanted, str) and wanted in names else \
            wanted if isinstance(wanted, int) and wanted < len(names) else None
        if index is None:
            raise GullySegError(f"MODEL: '{path}': metadata gullyseg.gully_output={wanted!r} is not one of the "
                                f"model's outputs {names} (give a name or a 0-based index).")
        return outputs[index], index, f"gullyseg.gully_output {wanted!r}"
    heads = meta["class_names_per_head"]
    if len(outputs) > 1 and heads and len(heads) == len(outputs):
        for index, head in enumerate(heads):
            if "gully" in [n.lower() for n in head]:
                return outputs[index], index, f"the head whose class_names name 'gully' ({index} of {len(names)})"
    if len(outputs) > 1:
        return outputs[0], 0, f"the first of {len(names)} outputs (no gullyseg.gully_output, no head names 'gully')"
    return outputs[0], 0, "the only output"


def _run_probe(session, inp, out, channels, window, batch):
    zeros = np.zeros((batch, channels, window[1], window[0]), dtype=np.float32)
    import onnxruntime  # installed: the session exists

    quiet = onnxruntime.RunOptions()
    quiet.log_severity_level = 4  # a refused batch of 2 is an answer here, not an error to print
    return np.shape(session.run([out.name], {inp.name: zeros}, quiet)[0])


def _probe_layout(session, inp, out, channels, window, fixed_batch, fixed, path):
    """Run zero windows: (output shape, run batch, core (w, h), offset (x, y)); refusals name the layout."""
    batch = fixed_batch or 2  # a dynamic batch: does the output follow it?
    try:
        rshape = list(_run_probe(session, inp, out, channels, window, batch))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        rshape, text = None, (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if rshape is None and fixed_batch is None:
        try:  # e.g. a Reshape to [1, ...] inside the graph: one window at a time
            rshape, batch = list(_run_probe(session, inp, out, channels, window, 1)), 1
        except Exception:  # noqa: BLE001 - the first error is the one to report
            pass
    if rshape is None:
        raise GullySegError(
            f"MODEL: '{path}' fails on a {window[0]}x{window[1]} window of {channels} channels ({text}).") from None
    layout = f"output '{out.name}' of shape {rshape} for an input of shape {[batch, channels, window[1], window[0]]}"
    if len(rshape) not in (3, 4):
        raise GullySegError(
            f"MODEL: '{path}' {layout}: GullySeg needs a per-pixel output [N, K, H, W] or [N, H, W]; this looks "
            "like a classifier or detector. Export the segmentation head (per-pixel logits or probabilities).")
    run_batch = fixed_batch
    if rshape[0] != batch:
        if rshape[0] != 1 or fixed_batch is not None:
            raise GullySegError(f"MODEL: '{path}' {layout}: the output's batch must be the input's, or 1.")
        run_batch = 1  # the output is pinned to batch 1 (a Reshape inside the graph)
    elif batch == 1 and fixed_batch is None:
        run_batch = 1
    oh, ow = rshape[-2], rshape[-1]
    if (ow, oh) == tuple(window):
        return rshape, run_batch, tuple(window), (0, 0)
    bad = ow > window[0] or oh > window[1] or 2 * ow <= window[0] or 2 * oh <= window[1]
    if not bad and not fixed:  # a core of valid convolutions keeps its margin on a larger window
        bigger = (window[0] + 32, window[1] + 32)
        try:
            grown = _run_probe(session, inp, out, channels, bigger, run_batch or 1)
            bad = (grown[-1] - ow, grown[-2] - oh) != (32, 32)
        except Exception:  # noqa: BLE001 - not a fixed margin
            bad = True
    if bad:
        raise GullySegError(
            f"MODEL: '{path}' {layout}: GullySeg needs an output with the input's N, H and W, or a centred core "
            "smaller than the window by a fixed margin (valid convolutions); an up- or down-sampled output is not a "
            "per-pixel map of the window. Resize the output inside the graph (Resize to the input's size).")
    return rshape, run_batch, (ow, oh), ((window[0] - ow) // 2, (window[1] - oh) // 2)


def _gully_channel(meta, head_index, out_channels, choice, path):
    """(activation, gully_class, class names, choice) for the chosen head."""
    activation = meta["activation"] or "none"
    if activation == "softmax" and out_channels < 2:
        raise GullySegError(f"MODEL: '{path}': activation softmax needs K >= 2 output channels (it has 1).")
    heads = meta["class_names_per_head"]
    names = heads[head_index] if heads and head_index < len(heads) else None
    gully_class = meta["gully_class"]
    how = "gullyseg.gully_class"
    if gully_class is None and names:
        lowered = [n.lower() for n in names]
        if "gully" in lowered and len(names) == out_channels:
            gully_class, how = lowered.index("gully"), "the class named gully"
        elif "gully" in lowered and out_channels == 1:  # Deepness names [background, x] for one sigmoid channel
            gully_class, how = 0, "the one channel (class_names name gully)"
    if gully_class is None:
        gully_class, how = (1, "channel 1 of K (default)") if out_channels > 1 else (0, "the one channel")
    if not 0 <= gully_class < out_channels:
        raise GullySegError(
            f"MODEL: '{path}': gully class {gully_class} ({how}) is not one of the {out_channels} output channel(s)."
        )
    if names is not None and len(names) == out_channels and \
            names[gully_class].lower() in ("background", "bg", "other", "none") and how == "gullyseg.gully_class":
        # (one sigmoid channel named [background, gully] is Deepness' convention: channel 0 is the gully score)
        raise GullySegError(f"MODEL: '{path}': metadata gullyseg.gully_class={gully_class} points at the class named "
                            f"'{names[gully_class]}' in class_names {names}.")
    if names is None or len(names) != out_channels:
        names = ["gully"] if out_channels == 1 else [f"class_{i}" for i in range(out_channels)]
        if out_channels == 2:
            names = ["background", "gully"]
    return activation, gully_class, names, f"{choice}; channel {gully_class}: {how}"


def _standardisation(meta, channels, path):
    """(mean, std) float32 per channel (one value repeats over every channel)."""
    values = {}
    for key, default in (("mean", 0.0), ("std", 1.0)):
        arr = np.asarray(meta[key] if meta[key] is not None else [default] * channels, dtype=np.float32)
        if arr.size == 1 and channels > 1:
            arr = np.repeat(arr, channels)
        elif arr.size != channels:
            raise GullySegError(
                f"MODEL: '{path}': metadata standardization_{key} has {arr.size} values for {channels} input channels."
            )
        values[key] = arr.astype(np.float32)
    return values["mean"], values["std"]


def _declared_output(out, path):
    """Without a probe: the output's channels from its declared shape."""
    oshape = list(out.shape or [])
    channels = 1 if len(oshape) == 3 else (_dim(oshape[1]) if len(oshape) == 4 else None)
    if channels is None:
        raise GullySegError(f"MODEL: '{path}' output '{out.name}' has an unknown number of channels {oshape}.")
    return [None, channels, None, None] if len(oshape) == 4 else [None, None, None]  # the probe's rank
