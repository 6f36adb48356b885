"""ONNX segmentation models: loading, checking the layout, preprocessing, the gully score.

The model contract (docs/models.md lists every layout with an example):

* one input ``[N, C, H, W]`` float32 (N, H, W fixed or dynamic; C fixed);
* the gully score comes from one output (head): ``[N, 1, H, W]`` or ``[N, H, W]`` (one score or
  logit per pixel) or ``[N, K, H, W]`` (K classes); the head is the metadata's
  ``gullyseg.gully_output``, else the head whose Deepness ``class_names`` has a class named
  gully, else the first; the channel is ``gullyseg.gully_class``, else the class named gully,
  else 1 when K > 1, 0 when K == 1;
* an output smaller than the input (valid convolutions) is the centred core of the window
  (Deepness' convention): windows are laid out by their core and read with a margin of context
  around it (zeros beyond the scene edge, as Deepness pads);
* an output whose batch is fixed at 1 (a Reshape to ``[1, H, W]`` in the graph) runs one window
  at a time even when the input's batch is dynamic;
* windows are the model's fixed H x W, else the metadata's ``tile_size``, else 256.

Metadata (Deepness keys and GullySeg's ``gullyseg`` key) is read, validated and written by
``onnx_metadata`` (re-exported here). Preprocessing (Deepness convention): ``x = value /
input_max``, then ``(x - mean) / std`` per channel (mean 0 and std 1 when absent). Nodata pixels
are fed as 0 after normalisation. NaN in a model's output is an error, never a probability.
"""

import math
import os
from dataclasses import dataclass, field

import numpy as np

from .errors import GullySegError
from .onnx_layout import (
    _check_input,
    _choose_head,
    _declared_output,
    _dim,
    _gully_channel,
    _probe_layout,
    _standardisation,
)
from .onnx_metadata import (  # noqa: F401 - re-exported: the metadata API was here
    ACTIVATIONS,
    DEEPNESS_KEYS,
    GULLYSEG_FIELDS,
    GULLYSEG_KEY,
    gullyseg_metadata,
    parse_bands,
    parse_metadata,
    read_metadata,
    set_model_metadata,
    write_metadata,
)

DEFAULT_WINDOW = 256
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:
        raise GullySegError(
            "onnxruntime is not installed in QGIS's Python: install it (pip install onnxruntime, or "
            "onnxruntime-gpu for CUDA) to run ONNX models."
        ) from exc
    return onnxruntime


class NonFiniteOutput(GullySegError):
    """NaN in a model's output: the message names the model; inference adds the window."""

    def __init__(self, model, counts):
        self.model_path, self.counts = model.path, counts
        super().__init__(
            f"MODEL: '{model.path}' returned NaN for {sum(counts)} pixel(s): the model is broken (NaN weights, "
            "a division by zero) or the input is far outside what it was trained on. NaN is never read as a "
            "probability of 0.")


# --- the model --------------------------------------------------------------------------------

@dataclass
class ModelInfo:
    """A loaded, checked model and what its metadata says. ``session`` runs it."""

    path: str
    session: object
    input_name: str
    output_name: str
    channels: int
    window: tuple  # (width, height) of the windows GullySeg feeds
    fixed_size: bool  # the model only takes ``window``
    fixed_batch: int  # None = dynamic N
    output_channels: int
    activation: str  # what GullySeg applies to the output: sigmoid, softmax or none
    gully_class: int
    class_names: list
    threshold: float  # metadata seg_thresh, else 0.5
    threshold_from_metadata: bool
    mean: np.ndarray  # per channel, after /input_max
    std: np.ndarray
    input_max: float  # None: 255 for 8-bit input, required for other integer types
    bands: list  # 1-based raster bands for the channels, None = 1..C
    resolution_cm: float  # None when unknown
    tile_size: int
    overlap: int  # default overlap in pixels (metadata tiles_overlap %, else a quarter window)
    provider: str  # the execution provider that runs it
    providers: list
    threads: int  # CPU threads in all (lanes x intra-op threads per run)
    metadata: dict = field(default_factory=dict)  # raw metadata_props
    lanes: int = 1  # batches run concurrently (each run on threads // lanes intra-op threads)
    run_batch: int = None  # windows per session.run when fixed (the input's N, or 1 for an output pinned to 1)
    core: tuple = None  # (width, height) of the output: the centred core of the window (default: the window)
    offset: tuple = (0, 0)  # (x, y) of the core in the window
    output_rank: int = 4  # 4: [N, K, H, W]; 3: [N, H, W]
    context_margin: int = 0  # metadata gullyseg.context_margin (pixels blending ignores at inner edges)
    outputs: list = field(default_factory=list)  # every output's name
    output_index: int = 0  # the head that gives the gully score
    choice: str = ""  # how the head and channel were chosen (logged)

    def __post_init__(self):
        if self.core is None:
            self.core = tuple(self.window)

    # -- preprocessing shared by segment_raster and predict_tiles (no duplication) --
    def input_scale(self, dtype, what="INPUT") -> float:
        """The divisor for raw pixel values of ``dtype`` (Deepness: 255 for 8-bit)."""
        dtype = np.dtype(dtype)
        if self.input_max is not None:
            return float(self.input_max)
        if dtype == np.uint8 or dtype == np.int8:
            return 255.0
        if np.issubdtype(dtype, np.floating):
            return 1.0
        raise GullySegError(
            f"{what}: the raster is {dtype.name} and the model '{os.path.basename(self.path)}' does not say how "
            "to scale such values (its metadata has no gullyseg.input_max; Deepness models assume 8-bit). "
            "Record the pixel value that means 1.0, e.g. 1023 for 10-bit data, with the Processing algorithm "
            "gullyseg:setmodelmetadata (INPUT_MAX) or tools/set_model_metadata.py --input-max 1023."
        )

    def normalise(self, raw, scale, valid=None, out=None) -> np.ndarray:
        """(N, C, H, W) or (C, H, W) raw values -> float32 model input; invalid pixels -> 0.

        ``out``: a float32 array of that shape to fill (a slot of a batch), else a new array.
        NaN or nodata pixels never reach the model: invalid pixels are set to 0, not multiplied.
        """
        raw = np.asarray(raw)
        squeeze = raw.ndim == 3
        if squeeze:
            raw = raw[None]
        # (v / scale - mean) / std folded into one multiply-add: v * a + b
        a = (1.0 / (float(scale) * self.std.astype(np.float64))).astype(np.float32).reshape(1, -1, 1, 1)
        b = (-self.mean.astype(np.float64) / self.std.astype(np.float64)).astype(np.float32).reshape(1, -1, 1, 1)
        if out is None:
            x = raw.astype(np.float32)  # a new, contiguous array
        else:
            x = out[None] if squeeze else out
            x[...] = raw  # cast into the caller's slot: no temporary
        x *= a
        if b.any():
            x += b
        if valid is not None:
            v = np.asarray(valid, dtype=bool)
            if not v.all():
                if v.ndim == 2:
                    v = v[None]
                np.copyto(x, np.float32(0), where=~v[:, None, :, :])
        return x[0] if squeeze else x

    def gully_probability(self, output) -> np.ndarray:
        """Model output (N, K, H, W) or (N, H, W) -> gully probability (N, H, W) float32 in 0..1.

        NaN anywhere in the result raises ``NonFiniteOutput`` (never a probability of 0).
        """
        out = np.asarray(output, dtype=np.float32)
        if out.ndim == 3:
            out = out[:, None]
        if self.activation == "softmax":
            m = out.max(axis=1, keepdims=True)
            e = np.exp(out - m)
            prob = (e[:, self.gully_class] / e.sum(axis=1)).astype(np.float32)
        elif self.activation == "sigmoid":
            prob = (1.0 / (1.0 + np.exp(-out[:, self.gully_class]))).astype(np.float32)
        else:
            prob = self._probabilities(out[:, self.gully_class])
        if np.isnan(prob).any():  # a NaN score (also a NaN logit, +inf - inf in softmax, ...)
            raise NonFiniteOutput(self, [int(np.isnan(p).sum()) for p in prob])
        return prob

    def _probabilities(self, channel):
        """An output that should already hold probabilities (activation none): checked, clipped."""
        if np.isnan(channel).any():
            raise NonFiniteOutput(self, [int(np.isnan(p).sum()) for p in channel])
        lo, hi = float(channel.min()), float(channel.max())
        if lo < -1e-3 or hi > 1.0 + 1e-3 or not (math.isfinite(lo) and math.isfinite(hi)):
            raise GullySegError(
                f"MODEL: '{os.path.basename(self.path)}' output values range from {lo:.3g} to {hi:.3g}, not 0..1: "
                "the model outputs logits, not probabilities. Record its activation (sigmoid for one output "
                "channel, softmax for K classes) with gullyseg:setmodelmetadata or "
                "tools/set_model_metadata.py --activation sigmoid."
            )
        channel = channel.astype(np.float32, copy=False)  # in place: the output array is ours
        if lo < 0.0:
            np.maximum(channel, 0.0, out=channel)  # (np.clip is slow in numpy 1.24)
        if hi > 1.0:
            np.minimum(channel, 1.0, out=channel)
        return channel

    def describe(self) -> dict:
        return {
            "path": self.path,
            "input": f"{self.input_name} [{'N' if self.fixed_batch is None else self.fixed_batch}, {self.channels}, "
                     f"{self.window[1] if self.fixed_size else 'H'}, {self.window[0] if self.fixed_size else 'W'}]",
            "channels": self.channels,
            "window": self.window[0] if self.window[0] == self.window[1] else list(self.window),
            "window_fixed": self.fixed_size,
            "output_channels": self.output_channels,
            "output": self.output_name,
            "outputs": list(self.outputs),
            "output_size": list(self.core),
            "context_margin": self.context_margin,
            "gully_choice": self.choice,
            "classes": list(self.class_names),
            "gully_class": self.gully_class,
            "gully_class_name": (self.class_names[self.gully_class]
                                 if self.gully_class < len(self.class_names) else None),
            "activation": self.activation,
            "threshold": self.threshold,
            "resolution_cm": self.resolution_cm,
            "overlap": self.overlap,
            "normalisation": {
                "input_max": self.input_max if self.input_max is not None else "255 for 8-bit input",
                "mean": [float(v) for v in self.mean],
                "std": [float(v) for v in self.std],
            },
            "bands": self.bands,
            "provider": self.provider,
            "metadata_keys": sorted(self.metadata),
        }

    def summary(self) -> str:
        """One human-readable line for logs."""
        d = self.describe()
        res = f", {self.resolution_cm:g} cm/px" if self.resolution_cm else ""
        core = "" if tuple(self.core) == tuple(self.window) else \
            f", output {self.core[0]}x{self.core[1]} (the centred core, offset {self.offset[0]}, {self.offset[1]})"
        return (
            f"model {os.path.basename(self.path)}: {self.channels} channels, window {self.window[0]}x{self.window[1]}"
            f"{' (fixed)' if self.fixed_size else ''}{core}, {self.output_channels} output channel(s), gully = channel "
            f"{self.gully_class} ({d['gully_class_name'] or 'unnamed'}) of output '{self.output_name}' "
            f"({self.choice}), activation {self.activation}{res}, threshold {self.threshold:g}, "
            f"provider {self.provider}"
        )


def available_providers() -> list:
    return list(_ort().get_available_providers())


def choose_providers(providers=None) -> list:
    """CUDA when onnxruntime offers it, then CPU (or the caller's list, checked)."""
    available = available_providers()
    if providers:
        providers = [providers] if isinstance(providers, str) else list(providers)
        missing = [p for p in providers if p not in available]
        if missing:
            raise GullySegError(
                f"Execution provider(s) {missing} not available in this onnxruntime (available: {available})."
            )
        return providers
    chosen = [CUDA] if CUDA in available else []
    return chosen + [CPU]


def cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def plan_threads(threads, providers) -> tuple:
    """(lanes, intra-op threads per run) for ``threads`` CPU threads in all (None/0 = every CPU).

    On the CPU two batches run at once, each on half the threads: a run's parallel sections
    wait for their slowest thread, so when the reader or writer thread takes a core from one
    run the other keeps going (and the model never waits for blending). On CUDA one run at a time.
    """
    total = int(threads) if threads else cpu_count()
    if providers and providers[0] == CUDA:
        return 1, int(threads or 0)
    lanes = 2 if total >= 2 else 1
    return lanes, max(1, total // lanes)


def _session(path, threads, providers):
    ort = _ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(threads or 0)  # 0 = onnxruntime's default: all physical cores
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # no busy-waiting between runs: the reader and writer threads need those cycles
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GullySegError(f"MODEL: '{path}' is not an ONNX model onnxruntime can load ({text}).") from None


def load_model(path, threads=None, providers=None, probe=True) -> ModelInfo:
    """Load and check an ONNX segmentation model; returns ``ModelInfo``.

    threads: CPU threads in all (None/0 = all cores; see ``plan_threads``). providers: None = CUDA when
    available, else CPU. Raises GullySegError for a file that is not ONNX, an input that is not
    an image tensor, or an output that is not a per-pixel map of the window (see the module doc);
    a probe run on zero windows (``probe``) checks the output's shape before any pixel is read.
    """
    path = str(path)
    if not path:
        raise GullySegError("MODEL: no model file given.")
    if not os.path.isfile(path):
        raise GullySegError(f"MODEL: model file '{path}' does not exist.")
    chosen = choose_providers(providers)
    lanes, intra = plan_threads(threads, chosen)
    session = _session(path, intra, chosen)
    inp, shape, channels = _check_input(session, path)
    meta_raw = dict(session.get_modelmeta().custom_metadata_map or {})
    meta = parse_metadata(meta_raw, path)
    if meta["model_type"] and meta["model_type"].lower() not in ("segmentor", "segmentation"):
        raise GullySegError(
            f"MODEL: '{path}' is a {meta['model_type']} model (metadata model_type); GullySeg runs segmentation "
            "models (model_type Segmentor)."
        )
    h, w, fixed_batch = _dim(shape[2]), _dim(shape[3]), _dim(shape[0])
    fixed = h is not None
    window = (w, h) if fixed else (meta["tile_size"] or DEFAULT_WINDOW,) * 2
    out, head_index, choice = _choose_head(session, meta, path)
    if out.type not in ("tensor(float)", "tensor(float16)", "tensor(double)"):
        raise GullySegError(f"MODEL: '{path}' output '{out.name}' is {out.type}; GullySeg needs float scores "
                            "(per-pixel logits or probabilities), not class ids: export the scores before ArgMax.")
    if probe:
        rshape, run_batch, core, offset = _probe_layout(session, inp, out, channels, window, fixed_batch, fixed, path)
    else:
        rshape, run_batch, core, offset = _declared_output(out, path), fixed_batch, tuple(window), (0, 0)
    out_channels = rshape[1] if len(rshape) == 4 else 1
    activation, gully_class, names, choice = _gully_channel(meta, head_index, out_channels, choice, path)
    mean, std = _standardisation(meta, channels, path)
    if meta["bands"] is not None and len(meta["bands"]) != channels:
        raise GullySegError(
            f"MODEL: '{path}': metadata gullyseg.bands {meta['bands']} has {len(meta['bands'])} bands for "
            f"{channels} input channels."
        )
    margin = meta["context_margin"] or 0
    if 2 * margin >= min(core):
        raise GullySegError(f"MODEL: '{path}': metadata gullyseg.context_margin={margin} leaves no core of the "
                            f"{core[0]}x{core[1]} px window (2 x margin must be smaller than the window).")
    percent = meta["tiles_overlap_percent"]
    overlap = int(round(min(core) * percent / 100.0)) if percent is not None else min(core) // 4
    overlap = max(0, min(overlap, min(core) - 1))
    threshold = meta["threshold"]
    used = session.get_providers()
    return ModelInfo(
        path=path, session=session, input_name=inp.name, output_name=out.name, channels=channels, window=window,
        fixed_size=fixed, fixed_batch=fixed_batch, output_channels=out_channels, activation=activation,
        gully_class=gully_class, class_names=names, threshold=0.5 if threshold is None else float(threshold),
        threshold_from_metadata=threshold is not None, mean=mean, std=std, input_max=meta["input_max"],
        bands=meta["bands"], resolution_cm=meta["resolution_cm"], tile_size=meta["tile_size"], overlap=overlap,
        provider=used[0] if used else CPU, providers=used, threads=lanes * intra if intra else 0, lanes=lanes,
        metadata=meta_raw, run_batch=run_batch, core=core, offset=offset, output_rank=len(rshape),
        context_margin=margin, outputs=[o.name for o in session.get_outputs()],
        output_index=head_index, choice=choice,
    )


def describe(path, threads=None, providers=None) -> dict:
    """A dict a widget can show: classes, window, resolution, normalisation, provider, ..."""
    return load_model(path, threads=threads, providers=providers).describe()


