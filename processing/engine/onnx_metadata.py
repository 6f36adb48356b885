"""ONNX model metadata: reading, validating, writing (Deepness keys + GullySeg's ``gullyseg`` key).

Metadata lives in the model's ``metadata_props`` (string -> string, values JSON-encoded).
Keys of the Deepness QGIS plugin, read so its segmentation models run unchanged:
``model_type``, ``class_names`` (one {id: name} object, or a list of them, one per output head),
``resolution`` (cm/px), ``tile_size``, ``tiles_overlap`` (percent of the tile),
``standardization_mean``, ``standardization_std``, ``seg_thresh``.
GullySeg's own key ``gullyseg`` is one JSON object with what those lack: ``input_max`` (the
pixel value that maps to 1.0 before mean/std; 255 for 8-bit by default), ``activation``
(``sigmoid``, ``softmax`` or ``none`` = the output already holds probabilities), ``gully_class``
(output channel of the gully class), ``gully_output`` (the output head, by name or index, of a
model with several outputs), ``bands`` (1-based raster bands feeding the channels) and
``context_margin`` (pixels near a window's inner edges that blending ignores: the model's
receptive-field radius).

Every value is validated when read: a value out of range is refused with its key and value
(never silently clamped). Reading and writing use the ``onnx`` package when it is installed,
else a small protobuf edit of the top-level ``metadata_props`` fields (``onnx_proto``).
"""

import ast
import json
import math
import os
import uuid

import numpy as np

from .errors import GullySegError
from .onnx_proto import _proto_entry, _proto_split

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
GULLYSEG_FIELDS = ("input_max", "activation", "gully_class", "gully_output", "bands", "context_margin")
ACTIVATIONS = ("sigmoid", "softmax", "none")
# sane bounds: values outside are refused, naming the key (a 1e300 resolution is all nodata, a tile
# of 100,000 px exhausts memory)
RESOLUTION_RANGE_CM = (0.01, 1e6)
MAX_TILE = 8192
MAX_CONTEXT_MARGIN = 4096


# --- parsing ----------------------------------------------------------------------------------

def _decode(value):
    """A metadata value: JSON first (the documented format), then a Python literal, else the string."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except (ValueError, TypeError, RecursionError):
        pass
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value


def _bad(path, key, value, why):
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (dict, list)) else repr(value)
    return GullySegError(f"MODEL: '{path}': metadata {key}={text} {why}.")


def _names_of(value, path, key):
    """One head's names: a list of strings or Deepness' {id: name} (ids 0..K-1)."""
    if isinstance(value, (list, tuple)):
        if not value or not all(isinstance(v, str) and v.strip() for v in value):
            raise _bad(path, key, value, "must be non-empty class names")
        return [v.strip() for v in value]
    if isinstance(value, dict):
        try:
            items = sorted((int(str(k)), v) for k, v in value.items())
        except (TypeError, ValueError):
            raise _bad(path, key, value, "must have class ids 0..K-1 as keys") from None
        if not items or [k for k, _ in items] != list(range(len(items))):
            raise _bad(path, key, value, "must have class ids 0..K-1 as keys")
        if not all(isinstance(v, str) and v.strip() for _, v in items):
            raise _bad(path, key, value, "must have non-empty class names as values")
        return [v.strip() for _, v in items]
    if isinstance(value, str) and value.strip():
        names = [s.strip() for s in value.split(",")]
        if not all(names):
            raise _bad(path, key, value, "has an empty class name")
        return names
    raise _bad(path, key, value, "is not a list of class names or an {id: name} object")


def class_names_per_head(value, path="model", key="class_names") -> list:
    """Deepness' class names: one {id: name} (one head) or a list of them (one per head) -> [[names]]."""
    value = _decode(value)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, dict) for v in value):
        return [_names_of(v, path, key) for v in value]
    return [_names_of(value, path, key)]


def _number(meta, key, path, kind=float, low=None, high=None, what=None):
    """A finite number (an integer for ``kind=int``) within [low, high], or None when absent."""
    if meta.get(key) is None:
        return None
    raw = meta[key]
    value = _decode(raw)
    name = what or key
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(path, name, raw, "is not a number")
    if not math.isfinite(value):
        raise _bad(path, name, raw, "is not a finite number")
    if kind is int:
        if not float(value).is_integer():
            raise _bad(path, name, raw, "is not a whole number")
        value = int(value)
    else:
        value = float(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise _bad(path, name, raw, f"is outside {low:g}..{high:g}")
    return value


def _vector(meta, key, path, positive=False):
    if meta.get(key) is None:
        return None
    value = _decode(meta[key])
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise _bad(path, key, meta[key], "is not a list of numbers")
    arr = np.asarray(value, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise _bad(path, key, meta[key], "has a value that is not finite")
    if positive and (arr <= 0).any():
        raise _bad(path, key, meta[key], "must be positive")
    return [float(v) for v in arr]


def _own(meta, path):
    """GullySeg's ``gullyseg`` object, checked for unknown fields."""
    if GULLYSEG_KEY not in meta:
        return {}
    own = _decode(meta[GULLYSEG_KEY])
    if not isinstance(own, dict):
        raise GullySegError(f"MODEL: '{path}': metadata key '{GULLYSEG_KEY}' must be a JSON object, got {own!r}.")
    unknown = sorted(set(own) - set(GULLYSEG_FIELDS))
    if unknown:
        raise GullySegError(
            f"MODEL: '{path}': unknown field(s) {unknown} in metadata '{GULLYSEG_KEY}' "
            f"(known: {', '.join(GULLYSEG_FIELDS)})."
        )
    return own


def parse_metadata(meta, path="model") -> dict:
    """Interpret a metadata_props dict; returns a dict with validated values (None when absent)."""
    own = _own(meta, path)
    out = {
        "model_type": str(_decode(meta["model_type"])) if "model_type" in meta else None,
        "class_names": None,  # the first head's names
        "class_names_per_head": None,
        "resolution_cm": _number(meta, "resolution", path, float, *RESOLUTION_RANGE_CM),
        "tile_size": _number(meta, "tile_size", path, int, 1, MAX_TILE),
        "tiles_overlap_percent": _number(meta, "tiles_overlap", path, float, 0, 99.999),
        "mean": _vector(meta, "standardization_mean", path),
        "std": _vector(meta, "standardization_std", path, positive=True),
        "threshold": _number(meta, "seg_thresh", path, float, 0, 1),
        "input_max": _number(own, "input_max", path, float, 1e-12, 1e12, "gullyseg.input_max"),
        "activation": None,
        "gully_class": _number(own, "gully_class", path, int, 0, 65535, "gullyseg.gully_class"),
        "gully_output": None,
        "bands": None,
        "context_margin": _number(own, "context_margin", path, int, 0, MAX_CONTEXT_MARGIN, "gullyseg.context_margin"),
    }
    names_key = "class_names" if "class_names" in meta else ("names" if "names" in meta else None)
    if names_key:
        heads = class_names_per_head(meta[names_key], path, names_key)
        out["class_names_per_head"] = heads
        out["class_names"] = heads[0]
    if own.get("activation") is not None:
        act = str(own["activation"]).lower()
        if act not in ACTIVATIONS:
            raise _bad(path, "gullyseg.activation", own["activation"], f"is not one of {', '.join(ACTIVATIONS)}")
        out["activation"] = act
    if own.get("gully_output") is not None:
        head = own["gully_output"]
        if isinstance(head, bool) or not (isinstance(head, str) and head.strip()
                                          or isinstance(head, int) and head >= 0):
            raise _bad(path, "gullyseg.gully_output", head, "must be an output name or a 0-based output index")
        out["gully_output"] = head
    if own.get("bands") is not None:
        out["bands"] = parse_bands(own["bands"], f"MODEL '{path}' metadata gullyseg.bands")
    return out


def parse_bands(value, what="BANDS") -> "list | None":
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
            values = list(value)
            if not all(isinstance(v, int) and not isinstance(v, bool)
                       or isinstance(v, float) and math.isfinite(v) and v.is_integer() for v in values):
                raise ValueError
            bands = [int(v) for v in values]
        except (TypeError, ValueError):
            raise GullySegError(f"{what}: {value!r} is not a list of band numbers such as 3,2,1.") from None
    if not bands:
        return None
    if any(b < 1 or b > 65535 for b in bands):
        raise GullySegError(f"{what}: band numbers are 1..65535 (got {value!r}).")
    return bands


# --- reading and writing metadata_props ---------------------------------------------------------

def _onnx():
    try:
        import onnx
    except ImportError:
        return None
    return onnx


def read_metadata(path) -> dict:
    """metadata_props of an ONNX file as a dict (read from the protobuf, no session)."""
    onnx = _onnx()
    if onnx is not None:
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - onnx raises protobuf's own errors
            raise GullySegError(f"MODEL: '{path}' is not an ONNX (protobuf) file ({exc}).") from None
        if not model.HasField("graph"):
            raise GullySegError(f"MODEL: '{path}' is not an ONNX (protobuf) file (no graph in the file).")
        return {p.key: p.value for p in model.metadata_props}
    with open(path, "rb") as fh:
        buf = fh.read()
    try:
        return _proto_split(buf)[1]
    except (ValueError, UnicodeDecodeError) as exc:
        raise GullySegError(f"MODEL: '{path}' is not an ONNX (protobuf) file ({exc}).") from None


def _serialise(path, buf, meta):
    """The model's bytes with metadata_props replaced by ``meta`` (onnx when installed)."""
    onnx = _onnx()
    if onnx is not None:
        try:
            model = onnx.load_from_string(buf)
        except Exception as exc:  # noqa: BLE001
            raise GullySegError(f"MODEL: '{path}' is not an ONNX (protobuf) file ({exc}).") from None
        if not model.HasField("graph"):
            raise GullySegError(f"MODEL: '{path}' is not an ONNX (protobuf) file (no graph in the file).")
        del model.metadata_props[:]
        for key, value in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        return model.SerializeToString()
    try:
        body, _ = _proto_split(buf)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GullySegError(f"MODEL: '{path}' is not an ONNX (protobuf) file ({exc}).") from None
    return body + b"".join(_proto_entry(k, v) for k, v in meta.items())


def write_metadata(path, updates, output=None, remove=(), overwrite=False, feedback=None) -> dict:
    """Set (and remove) metadata_props keys of an ONNX model; returns the resulting metadata dict.

    updates: {key: value}; non-string values are JSON-encoded (Deepness reads JSON); a value of
    None removes the key. output: where to write (default: ``path`` itself, rewritten atomically).
    The result is loaded back (``onnx_model.load_model``: every check) before it replaces anything.
    """
    from .onnx_model import CPU, load_model

    path = str(path)
    if not os.path.isfile(path):
        raise GullySegError(f"MODEL: model file '{path}' does not exist.")
    meta = dict(read_metadata(path))
    with open(path, "rb") as fh:
        buf = fh.read()
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
    data = _serialise(path, buf, meta)
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


# --- setmodelmetadata -----------------------------------------------------------------------------

def gullyseg_metadata(input_max=None, activation=None, gully_class=None, bands=None, existing=None,
                      context_margin=None, gully_output=None) -> str:
    """The JSON string of GullySeg's own key, merged over an existing one."""
    own = dict(_decode(existing) or {}) if existing else {}
    if input_max is not None:
        own["input_max"] = float(input_max) if float(input_max) != int(input_max) else int(input_max)
    if activation is not None:
        own["activation"] = activation
    if gully_class is not None:
        own["gully_class"] = gully_class
    if bands is not None:
        own["bands"] = parse_bands(bands)
    if context_margin is not None:
        own["context_margin"] = context_margin
    if gully_output is not None:
        own["gully_output"] = gully_output
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


def _whole(value, what):
    """An integer parameter: 0.7 or 1e400 are refused, not truncated."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not float(value).is_integer():
        raise GullySegError(f"{what}: {value!r} is not a whole number.")
    return int(value)


def _class_name_update(class_names):
    """CLASS_NAMES text or list -> Deepness' {id: name} (one head) or a list of them ('a,b | c,d')."""
    if isinstance(class_names, str):
        heads = [[s.strip() for s in part.split(",")] for part in class_names.split("|")]
    else:
        heads = [list(class_names)]
    for names in heads:
        if not names or not all(isinstance(n, str) and n for n in names):
            raise GullySegError(f"CLASS_NAMES: '{class_names}' has an empty class name.")
    dicts = [{str(i): n for i, n in enumerate(names)} for names in heads]
    return dicts[0] if len(dicts) == 1 else dicts


def set_model_metadata(path, output=None, model_type="Segmentor", class_names=None, resolution=None, tile_size=None,
                       tiles_overlap=None, mean=None, std=None, threshold=None, input_max=None, activation=None,
                       gully_class=None, bands=None, clear=False, overwrite=False, feedback=None,
                       context_margin=None, gully_output=None) -> dict:
    """Write Deepness + GullySeg metadata into an ONNX model (None = keep what is there).

    class_names: 'background,gully' or a list ('a,b | c,d': one set per output head); mean/std:
    '0.485,0.456,0.406' or a list; resolution: cm/px; tiles_overlap: percent; context_margin:
    pixels (the receptive-field radius); gully_output: output name or index; clear: drop every
    Deepness and GullySeg key first. Contradictions (gully_class on a class named background, a
    margin that leaves no core of the window) are refused. Returns the resulting metadata dict;
    the model is loaded back and checked.
    """
    existing = read_metadata(path) if os.path.isfile(str(path)) else None
    if existing is None:
        raise GullySegError(f"MODEL: model file '{path}' does not exist.")
    updates = {}
    remove = list(DEEPNESS_KEYS) + [GULLYSEG_KEY] if clear else []
    if model_type:
        updates["model_type"] = json.dumps(str(model_type))  # Deepness json.loads() every value
    if class_names:
        updates["class_names"] = _class_name_update(class_names)
    if resolution is not None:
        lo, hi = RESOLUTION_RANGE_CM
        if not (isinstance(resolution, (int, float)) and lo <= resolution <= hi):
            raise GullySegError(f"RESOLUTION must be within {lo:g}..{hi:g} cm/px, got {resolution}.")
        updates["resolution"] = float(resolution)
    if tile_size is not None:
        tile_size = _whole(tile_size, "TILE_SIZE")
        if not 1 <= tile_size <= MAX_TILE:
            raise GullySegError(f"TILE_SIZE must be within 1..{MAX_TILE} pixels, got {tile_size}.")
        updates["tile_size"] = tile_size
    if tiles_overlap is not None:
        if not 0 <= tiles_overlap < 100:
            raise GullySegError(f"TILES_OVERLAP is a percentage of the tile (0..99), got {tiles_overlap}.")
        updates["tiles_overlap"] = tiles_overlap
    mean_v, std_v = _floats(mean, "MEAN"), _floats(std, "STD")
    if mean_v is not None:
        if not all(math.isfinite(v) for v in mean_v):
            raise GullySegError(f"MEAN: '{mean}' has a value that is not finite.")
        updates["standardization_mean"] = mean_v
    if std_v is not None:
        if not all(math.isfinite(v) and v > 0 for v in std_v):
            raise GullySegError(f"STD: '{std}' must be positive, finite numbers.")
        updates["standardization_std"] = std_v
    if threshold is not None:
        if not 0 <= threshold <= 1:
            raise GullySegError(f"THRESHOLD must be within 0..1, got {threshold}.")
        updates["seg_thresh"] = float(threshold)
    if activation is not None and activation not in ACTIVATIONS:
        raise GullySegError(f"ACTIVATION must be one of {', '.join(ACTIVATIONS)}, got {activation!r}.")
    if input_max is not None and not (math.isfinite(input_max) and input_max > 0):
        raise GullySegError(f"INPUT_MAX must be positive, got {input_max}.")
    gully_class = _whole(gully_class, "GULLY_CLASS")
    context_margin = _whole(context_margin, "CONTEXT_MARGIN")
    if context_margin is not None and not 0 <= context_margin <= MAX_CONTEXT_MARGIN:
        raise GullySegError(f"CONTEXT_MARGIN must be within 0..{MAX_CONTEXT_MARGIN} pixels, got {context_margin}.")
    if any(v is not None for v in (input_max, activation, gully_class, bands, context_margin, gully_output)):
        base = None if clear else existing.get(GULLYSEG_KEY)
        updates[GULLYSEG_KEY] = gullyseg_metadata(input_max, activation, gully_class, parse_bands(bands, "BANDS"),
                                                  base, context_margin, gully_output)
    return write_metadata(path, updates, output=output, remove=remove, overwrite=overwrite, feedback=feedback)
