"""ONNX segmentation models: loading, checking, metadata (Deepness keys + GullySeg's own key).

The model contract (docs/models.md):

* one input ``[N, C, H, W]`` float32 (N, H, W fixed or dynamic; C fixed);
* first output ``[N, 1, H, W]`` (sigmoid probabilities or logits) or ``[N, K, H, W]`` (softmax
  probabilities or logits); the gully channel is the metadata's gully class (default 1 when
  K > 1, 0 when K == 1);
* windows are the model's fixed H x W, else the metadata's ``tile_size``, else 256.

Metadata lives in the model's ``metadata_props`` (string -> string, values JSON-encoded).
Keys of the Deepness QGIS plugin, read so its segmentation models run unchanged:
``model_type``, ``class_names``, ``resolution`` (cm/px), ``tile_size``, ``tiles_overlap``
(percent of the tile), ``standardization_mean``, ``standardization_std``, ``seg_thresh``.
GullySeg's own key ``gullyseg`` is one JSON object with what those lack: ``input_max`` (the
pixel value that maps to 1.0 before mean/std; 255 for 8-bit by default), ``activation``
(``sigmoid``, ``softmax`` or ``none`` = the output already holds probabilities), ``gully_class``
(output channel of the gully class) and ``bands`` (1-based raster bands feeding the channels).

Preprocessing (Deepness convention): ``x = value / input_max``, then ``(x - mean) / std`` per
channel (mean 0 and std 1 when absent). Nodata pixels are fed as 0 after normalisation.

This module imports numpy and onnxruntime only (no qgis, no onnx): writing metadata edits the
protobuf's top-level ``metadata_props`` fields directly (see ``write_metadata``).
"""

import ast
import json
import math
import os
import uuid
from dataclasses import dataclass, field

import numpy as np

from .errors import GullySegError

DEFAULT_WINDOW = 256
GULLYSEG_KEY = "gullyseg"
DEEPNESS_KEYS = (
    "model_type",
    "class_names",
    "resolution",
    "tile_size",
    "tiles_overlap",
    "standardization_mean",
    "standardization_std",
    "seg_thresh",
)
GULLYSEG_FIELDS = ("input_max", "activation", "gully_class", "bands")
ACTIVATIONS = ("sigmoid", "softmax", "none")
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


# --- metadata parsing -------------------------------------------------------------------------

def _decode(value):
    """A metadata value: JSON first (the documented format), then a Python literal, else the string."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except (ValueError, TypeError):
        pass
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value


def _class_names(value, path):
    """Deepness' {id: name} dict (JSON keys are strings) or a list -> list of names in id order."""
    value = _decode(value)
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if isinstance(value, dict):
        try:
            items = sorted((int(k), str(v)) for k, v in value.items())
        except (TypeError, ValueError):
            raise GullySegError(
                f"MODEL: '{path}': metadata class_names keys must be class ids, got {value!r}.") from None
        if [k for k, _ in items] != list(range(len(items))):
            raise GullySegError(f"MODEL: '{path}': metadata class_names ids are not 0..K-1: {value!r}.")
        return [v for _, v in items]
    if isinstance(value, str) and value.strip():
        return [s.strip() for s in value.split(",")]
    raise GullySegError(f"MODEL: '{path}': cannot read metadata class_names {value!r}.")


def _number(meta, key, path, kind=float):
    if key not in meta:
        return None
    value = _decode(meta[key])
    try:
        number = kind(value)
        if isinstance(number, float) and not math.isfinite(number):
            raise ValueError
        return number
    except (TypeError, ValueError):
        raise GullySegError(f"MODEL: '{path}': metadata {key}={meta[key]!r} is not a number.") from None


def _vector(meta, key, path):
    if key not in meta:
        return None
    value = _decode(meta[key])
    if isinstance(value, (int, float)):
        value = [value]
    try:
        arr = np.asarray(value, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise GullySegError(f"MODEL: '{path}': metadata {key}={meta[key]!r} is not a list of numbers.") from None
    return [float(v) for v in arr]


def parse_metadata(meta, path="model"):
    """Interpret a metadata_props dict; returns a dict with normalised values (None when absent)."""
    own = {}
    if GULLYSEG_KEY in meta:
        own = _decode(meta[GULLYSEG_KEY])
        if not isinstance(own, dict):
            raise GullySegError(f"MODEL: '{path}': metadata key '{GULLYSEG_KEY}' must be a JSON object, got {own!r}.")
        unknown = sorted(set(own) - set(GULLYSEG_FIELDS))
        if unknown:
            raise GullySegError(
                f"MODEL: '{path}': unknown field(s) {unknown} in metadata '{GULLYSEG_KEY}' "
                f"(known: {', '.join(GULLYSEG_FIELDS)})."
            )
    out = {
        "model_type": None,
        "class_names": None,
        "resolution_cm": _number(meta, "resolution", path),
        "tile_size": _number(meta, "tile_size", path, int),
        "tiles_overlap_percent": _number(meta, "tiles_overlap", path),
        "mean": _vector(meta, "standardization_mean", path),
        "std": _vector(meta, "standardization_std", path),
        "threshold": _number(meta, "seg_thresh", path),
        "input_max": None,
        "activation": None,
        "gully_class": None,
        "bands": None,
    }
    if "model_type" in meta:
        out["model_type"] = str(_decode(meta["model_type"]))
    names_key = "class_names" if "class_names" in meta else ("names" if "names" in meta else None)
    if names_key:
        out["class_names"] = _class_names(meta[names_key], path)
    if own.get("input_max") is not None:
        out["input_max"] = _number(own, "input_max", path)
        if out["input_max"] <= 0:
            raise GullySegError(f"MODEL: '{path}': gullyseg.input_max must be positive (got {out['input_max']}).")
    if own.get("activation") is not None:
        act = str(own["activation"]).lower()
        if act not in ACTIVATIONS:
            raise GullySegError(
                f"MODEL: '{path}': gullyseg.activation '{own['activation']}' is not one of {', '.join(ACTIVATIONS)}."
            )
        out["activation"] = act
    if own.get("gully_class") is not None:
        out["gully_class"] = _number(own, "gully_class", path, int)
    if own.get("bands") is not None:
        out["bands"] = parse_bands(own["bands"], f"MODEL '{path}' metadata gullyseg.bands")
    if out["std"] is not None and any(s == 0 for s in out["std"]):
        raise GullySegError(f"MODEL: '{path}': metadata standardization_std contains 0.")
    if out["resolution_cm"] is not None and out["resolution_cm"] <= 0:
        raise GullySegError(f"MODEL: '{path}': metadata resolution must be positive (cm/px).")
    if out["tile_size"] is not None and out["tile_size"] <= 0:
        raise GullySegError(f"MODEL: '{path}': metadata tile_size must be positive.")
    return out


def parse_bands(value, what="BANDS"):
    """'3,2,1' / [3, 2, 1] -> [3, 2, 1] (1-based band numbers); '' / None -> None."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.replace(";", ",").replace(" ", ",")
        parts = [p for p in text.split(",") if p.strip()]
        if not parts:
            return None
        try:
            bands = [int(p) for p in parts]
        except ValueError:
            raise GullySegError(f"{what}: '{value}' is not a list of band numbers such as 3,2,1.") from None
    else:
        try:
            bands = [int(v) for v in value]
        except (TypeError, ValueError):
            raise GullySegError(f"{what}: {value!r} is not a list of band numbers such as 3,2,1.") from None
    if not bands:
        return None
    if any(b < 1 for b in bands):
        raise GullySegError(f"{what}: band numbers start at 1 (got {value!r}).")
    return bands


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

    # -- preprocessing shared by segment_raster and predict_tiles (no duplication) --
    def input_scale(self, dtype, what="INPUT"):
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

    def normalise(self, raw, scale, valid=None, out=None):
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

    def gully_probability(self, output):
        """Model output (N, K, H, W) -> gully probability (N, H, W) float32 in 0..1."""
        out = np.asarray(output, dtype=np.float32)
        if self.activation == "softmax":
            m = out.max(axis=1, keepdims=True)
            e = np.exp(out - m)
            return (e[:, self.gully_class] / e.sum(axis=1)).astype(np.float32)
        channel = out[:, self.gully_class]
        if self.activation == "sigmoid":
            return (1.0 / (1.0 + np.exp(-channel))).astype(np.float32)
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

    def describe(self):
        return {
            "path": self.path,
            "input": f"{self.input_name} [{'N' if self.fixed_batch is None else self.fixed_batch}, {self.channels}, "
                     f"{self.window[1] if self.fixed_size else 'H'}, {self.window[0] if self.fixed_size else 'W'}]",
            "channels": self.channels,
            "window": self.window[0] if self.window[0] == self.window[1] else list(self.window),
            "window_fixed": self.fixed_size,
            "output_channels": self.output_channels,
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

    def summary(self):
        """One human-readable line for logs."""
        d = self.describe()
        res = f", {self.resolution_cm:g} cm/px" if self.resolution_cm else ""
        return (
            f"model {os.path.basename(self.path)}: {self.channels} channels, window {self.window[0]}x{self.window[1]}"
            f"{' (fixed)' if self.fixed_size else ''}, {self.output_channels} output channel(s), gully = channel "
            f"{self.gully_class} ({d['gully_class_name'] or 'unnamed'}), activation {self.activation}{res}, "
            f"threshold {self.threshold:g}, provider {self.provider}"
        )


def available_providers():
    return list(_ort().get_available_providers())


def choose_providers(providers=None):
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


def cpu_count():
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def plan_threads(threads, providers):
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


def _dim(value):
    return value if isinstance(value, int) and value > 0 else None


def load_model(path, threads=None, providers=None, probe=True):
    """Load and check an ONNX segmentation model; returns ``ModelInfo``.

    threads: CPU threads in all (None/0 = all cores; see ``plan_threads``). providers: None = CUDA when
    available, else CPU. Raises GullySegError for a file that is not ONNX, an input that is not
    an image tensor, or an output that is not [N, 1|K, H, W] of the input's size; a probe run on
    one zero window (``probe``) checks the output shape before any pixel of a scene is read.
    """
    path = str(path)
    if not path:
        raise GullySegError("MODEL: no model file given.")
    if not os.path.isfile(path):
        raise GullySegError(f"MODEL: model file '{path}' does not exist.")
    chosen = choose_providers(providers)
    lanes, intra = plan_threads(threads, chosen)
    session = _session(path, intra, chosen)
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise GullySegError(
            f"MODEL: '{path}' has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
            "GullySeg needs one image input [N, C, H, W]."
        )
    inp = inputs[0]
    shape = list(inp.shape or [])
    if inp.type != "tensor(float)":
        raise GullySegError(
            f"MODEL: '{path}' input '{inp.name}' is {inp.type}; GullySeg feeds float32 images [N, C, H, W] "
            "(tensor(float))."
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
            "(NHWC) or not an image; GullySeg needs [N, C, H, W]."
        )
    meta_raw = dict(session.get_modelmeta().custom_metadata_map or {})
    meta = parse_metadata(meta_raw, path)
    if meta["model_type"] and meta["model_type"].lower() not in ("segmentor", "segmentation"):
        raise GullySegError(
            f"MODEL: '{path}' is a {meta['model_type']} model (metadata model_type); GullySeg runs segmentation "
            "models (model_type Segmentor)."
        )
    h, w = _dim(shape[2]), _dim(shape[3])
    fixed_batch = _dim(shape[0])
    if (h is None) != (w is None):
        raise GullySegError(f"MODEL: '{path}' input shape {shape}: H and W must be both fixed or both dynamic.")
    fixed = h is not None
    if fixed:
        window = (w, h)
    else:
        size = meta["tile_size"] or DEFAULT_WINDOW
        window = (size, size)

    outputs = session.get_outputs()
    out = outputs[0]
    oshape = list(out.shape or [])
    if out.type not in ("tensor(float)", "tensor(float16)", "tensor(double)"):
        raise GullySegError(f"MODEL: '{path}' output '{out.name}' is {out.type}; GullySeg needs float scores.")
    if oshape and len(oshape) != 4:
        raise GullySegError(
            f"MODEL: '{path}' output '{out.name}' has shape {oshape}; GullySeg needs a per-pixel output "
            "[N, 1, H, W] or [N, K, H, W]."
        )
    for axis, expected in ((2, h), (3, w)):
        if oshape and _dim(oshape[axis]) is not None and expected is not None and oshape[axis] != expected:
            raise GullySegError(
                f"MODEL: '{path}' output '{out.name}' has shape {oshape} for input {shape}; the output must have "
                "the input's height and width."
            )
    out_channels = _dim(oshape[1]) if oshape else None

    if probe:
        nb = fixed_batch or 1
        zeros = np.zeros((nb, channels, window[1], window[0]), dtype=np.float32)
        try:
            result = session.run([out.name], {inp.name: zeros})[0]
        except Exception as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GullySegError(
                f"MODEL: '{path}' fails on a {window[0]}x{window[1]} window of {channels} channels ({text})."
            ) from None
        rshape = list(np.shape(result))
        if len(rshape) != 4 or rshape[0] != nb or rshape[2] != window[1] or rshape[3] != window[0]:
            raise GullySegError(
                f"MODEL: '{path}' output '{out.name}' has shape {rshape} for an input of shape {list(zeros.shape)}; "
                "GullySeg needs [N, 1, H, W] or [N, K, H, W] with the input's N, H and W (a per-pixel "
                "segmentation model, not a classifier or a down-sampled output)."
            )
        out_channels = rshape[1]
    if out_channels is None:
        raise GullySegError(f"MODEL: '{path}' output '{out.name}' has an unknown number of channels {oshape}.")

    activation = meta["activation"] or "none"
    if activation == "softmax" and out_channels < 2:
        raise GullySegError(f"MODEL: '{path}': activation softmax needs K >= 2 output channels (it has 1).")
    gully_class = meta["gully_class"]
    names = meta["class_names"]
    if gully_class is None and names:
        lowered = [n.lower() for n in names]
        if "gully" in lowered and len(names) == out_channels:
            gully_class = lowered.index("gully")
    if gully_class is None:
        gully_class = 1 if out_channels > 1 else 0
    if not 0 <= gully_class < out_channels:
        raise GullySegError(
            f"MODEL: '{path}': gully class {gully_class} is not one of the {out_channels} output channel(s)."
        )
    if names is None:
        names = ["gully"] if out_channels == 1 else [f"class_{i}" for i in range(out_channels)]
        if out_channels == 2:
            names = ["background", "gully"]
    mean = np.asarray(meta["mean"] if meta["mean"] is not None else [0.0] * channels, dtype=np.float32)
    std = np.asarray(meta["std"] if meta["std"] is not None else [1.0] * channels, dtype=np.float32)
    for key, arr in (("standardization_mean", mean), ("standardization_std", std)):
        if arr.size == 1 and channels > 1:
            arr = np.repeat(arr, channels)
            if key == "standardization_mean":
                mean = arr
            else:
                std = arr
        elif arr.size != channels:
            raise GullySegError(
                f"MODEL: '{path}': metadata {key} has {arr.size} values for {channels} input channels."
            )
    if meta["bands"] is not None and len(meta["bands"]) != channels:
        raise GullySegError(
            f"MODEL: '{path}': metadata gullyseg.bands {meta['bands']} has {len(meta['bands'])} bands for "
            f"{channels} input channels."
        )
    if meta["tiles_overlap_percent"] is not None:
        overlap = int(round(min(window) * meta["tiles_overlap_percent"] / 100.0))
    else:
        overlap = min(window) // 4
    overlap = max(0, min(overlap, min(window) - 1))
    threshold = meta["threshold"]
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise GullySegError(f"MODEL: '{path}': metadata seg_thresh {threshold} is not within 0..1.")
    used = session.get_providers()
    return ModelInfo(
        path=path,
        session=session,
        input_name=inp.name,
        output_name=out.name,
        channels=channels,
        window=window,
        fixed_size=fixed,
        fixed_batch=fixed_batch,
        output_channels=out_channels,
        activation=activation,
        gully_class=gully_class,
        class_names=names,
        threshold=0.5 if threshold is None else float(threshold),
        threshold_from_metadata=threshold is not None,
        mean=mean.astype(np.float32),
        std=std.astype(np.float32),
        input_max=meta["input_max"],
        bands=meta["bands"],
        resolution_cm=meta["resolution_cm"],
        tile_size=meta["tile_size"],
        overlap=overlap,
        provider=used[0] if used else CPU,
        providers=used,
        threads=lanes * intra if intra else 0,
        lanes=lanes,
        metadata=meta_raw,
    )


def describe(path, threads=None, providers=None):
    """A dict a widget can show: classes, window, resolution, normalisation, provider, ..."""
    return load_model(path, threads=threads, providers=providers).describe()


# --- writing metadata (no onnx package: a minimal protobuf edit) --------------------------------
# ModelProto field 14 is ``repeated StringStringEntryProto metadata_props`` (key = 1, value = 2).
# Top-level fields may appear in any order in protobuf, so the file is rewritten field by field:
# every other field is copied verbatim, metadata entries are replaced.

_METADATA_FIELD = 14


def _read_varint(buf, pos):
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise ValueError("varint too long")


def _varint(value):
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _fields(buf):
    """Yield (field_number, wire_type, start, end, payload_start, payload_end) of a message."""
    pos = 0
    n = len(buf)
    while pos < n:
        start = pos
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            _, pos = _read_varint(buf, pos)
            payload = (pos, pos)
        elif wire == 1:
            pos += 8
            payload = (pos - 8, pos)
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            payload = (pos, pos + length)
            pos += length
        elif wire == 5:
            pos += 4
            payload = (pos - 4, pos)
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > n:
            raise ValueError("truncated field")
        yield number, wire, start, pos, payload[0], payload[1]


def _entry(key, value):
    k, v = key.encode("utf-8"), value.encode("utf-8")
    body = b"\x0a" + _varint(len(k)) + k + b"\x12" + _varint(len(v)) + v
    return _varint((_METADATA_FIELD << 3) | 2) + _varint(len(body)) + body


def read_metadata(path):
    """metadata_props of an ONNX file as a dict (read from the protobuf, no session)."""
    with open(path, "rb") as fh:
        buf = fh.read()
    try:
        return _split_metadata(buf)[1]
    except (ValueError, UnicodeDecodeError) as exc:
        raise GullySegError(f"MODEL: '{path}' is not an ONNX (protobuf) file ({exc}).") from None


def _split_metadata(buf):
    """(bytes of every field except metadata_props, {key: value}) of a ModelProto."""
    rest = bytearray()
    meta = {}
    seen_graph = False
    for number, wire, start, end, p0, p1 in _fields(buf):
        if number == _METADATA_FIELD and wire == 2:
            key = value = ""
            for n2, w2, _s, _e, q0, q1 in _fields(buf[p0:p1]):
                if n2 == 1 and w2 == 2:
                    key = bytes(buf[p0 + q0:p0 + q1]).decode("utf-8")
                elif n2 == 2 and w2 == 2:
                    value = bytes(buf[p0 + q0:p0 + q1]).decode("utf-8")
            meta[key] = value
        else:
            if number == 7 and wire == 2:
                seen_graph = True
            rest += buf[start:end]
    if not seen_graph:
        raise ValueError("no graph in the file")
    return bytes(rest), meta


def write_metadata(path, updates, output=None, remove=(), overwrite=False, feedback=None):
    """Set (and remove) metadata_props keys of an ONNX model; returns the resulting metadata dict.

    updates: {key: value}; non-string values are JSON-encoded (Deepness reads JSON); a value of
    None removes the key. output: where to write (default: ``path`` itself, rewritten atomically).
    The result is loaded back (``load_model``: every check) before it replaces anything.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise GullySegError(f"MODEL: model file '{path}' does not exist.")
    with open(path, "rb") as fh:
        buf = fh.read()
    try:
        body, meta = _split_metadata(buf)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GullySegError(f"MODEL: '{path}' is not an ONNX (protobuf) file ({exc}).") from None
    for key in remove:
        meta.pop(key, None)
    for key, value in updates.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value if isinstance(value, str) else json.dumps(value)
    parse_metadata(meta, path)  # refuse values GullySeg could not read back
    target = os.path.abspath(output or path)
    in_place = target == os.path.abspath(path)
    data = body + b"".join(_entry(k, v) for k, v in meta.items())
    if not in_place and os.path.exists(target) and not overwrite:
        raise GullySegError(f"OUTPUT_MODEL: '{target}' already exists; choose another name or allow overwriting.")
    # temporary file beside the target (same folder: external weight files still resolve), then
    # an atomic rename. Not gdalio.atomic_output: its clean-up of 'side files' would delete a
    # model's external data (model.onnx.data).
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(target)}.partial-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        check = load_model(tmp, threads=1, providers=[CPU])  # loads and passes GullySeg's checks
        got = dict(check.metadata)
        check = None
        if got != meta:
            raise GullySegError(f"MODEL: writing metadata into '{target}' failed (read back {got}).")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if feedback is not None:
        feedback.info(f"Metadata written to {target}: {', '.join(sorted(meta)) or 'none'}")
    return meta


def gullyseg_metadata(input_max=None, activation=None, gully_class=None, bands=None, existing=None):
    """The JSON string of GullySeg's own key, merged over an existing one."""
    own = dict(_decode(existing) or {}) if existing else {}
    if input_max is not None:
        own["input_max"] = float(input_max) if float(input_max) != int(input_max) else int(input_max)
    if activation is not None:
        own["activation"] = activation
    if gully_class is not None:
        own["gully_class"] = int(gully_class)
    if bands is not None:
        own["bands"] = parse_bands(bands)
    return json.dumps(own, sort_keys=True)


def _floats(value, what):
    if value is None or value == "":
        return None
    if isinstance(value, str):
        parts = [p for p in value.replace(";", ",").replace(" ", ",").split(",") if p.strip()]
    else:
        parts = list(value)
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise GullySegError(f"{what}: '{value}' is not a list of numbers such as 0.485,0.456,0.406.") from None


def set_model_metadata(path, output=None, model_type="Segmentor", class_names=None, resolution=None, tile_size=None,
                       tiles_overlap=None, mean=None, std=None, threshold=None, input_max=None, activation=None,
                       gully_class=None, bands=None, clear=False, overwrite=False, feedback=None):
    """Write Deepness + GullySeg metadata into an ONNX model (None = keep what is there).

    class_names: 'background,gully' or a list; mean/std: '0.485,0.456,0.406' or a list;
    resolution: cm/px; tiles_overlap: percent; clear: drop every Deepness and GullySeg key first.
    Returns the resulting metadata dict. The model is loaded back and checked.
    """
    existing = read_metadata(path) if os.path.isfile(str(path)) else None
    if existing is None:
        raise GullySegError(f"MODEL: model file '{path}' does not exist.")
    updates = {}
    remove = list(DEEPNESS_KEYS) + [GULLYSEG_KEY] if clear else []
    if model_type:
        updates["model_type"] = json.dumps(str(model_type))  # Deepness json.loads() every value
    if class_names:
        names = [s.strip() for s in class_names.split(",")] if isinstance(class_names, str) else list(class_names)
        if not all(names):
            raise GullySegError(f"CLASS_NAMES: '{class_names}' has an empty class name.")
        updates["class_names"] = {str(i): n for i, n in enumerate(names)}
    if resolution is not None:
        if resolution <= 0:
            raise GullySegError(f"RESOLUTION must be positive (cm/px), got {resolution}.")
        updates["resolution"] = float(resolution)
    if tile_size is not None:
        if int(tile_size) <= 0:
            raise GullySegError(f"TILE_SIZE must be positive, got {tile_size}.")
        updates["tile_size"] = int(tile_size)
    if tiles_overlap is not None:
        if not 0 <= tiles_overlap < 100:
            raise GullySegError(f"TILES_OVERLAP is a percentage of the tile (0..99), got {tiles_overlap}.")
        updates["tiles_overlap"] = tiles_overlap
    mean_v, std_v = _floats(mean, "MEAN"), _floats(std, "STD")
    if mean_v is not None:
        updates["standardization_mean"] = mean_v
    if std_v is not None:
        if any(v == 0 for v in std_v):
            raise GullySegError(f"STD: '{std}' contains 0.")
        updates["standardization_std"] = std_v
    if threshold is not None:
        if not 0 <= threshold <= 1:
            raise GullySegError(f"THRESHOLD must be within 0..1, got {threshold}.")
        updates["seg_thresh"] = float(threshold)
    if activation is not None and activation not in ACTIVATIONS:
        raise GullySegError(f"ACTIVATION must be one of {', '.join(ACTIVATIONS)}, got {activation!r}.")
    if input_max is not None and input_max <= 0:
        raise GullySegError(f"INPUT_MAX must be positive, got {input_max}.")
    if any(v is not None for v in (input_max, activation, gully_class, bands)):
        base = None if clear else existing.get(GULLYSEG_KEY)
        updates[GULLYSEG_KEY] = gullyseg_metadata(input_max, activation, gully_class, parse_bands(bands, "BANDS"),
                                                  base)
    return write_metadata(path, updates, output=output, remove=remove, overwrite=overwrite, feedback=feedback)
