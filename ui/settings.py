"""The dock's persisted settings (QgsSettings, under 'GullySeg/'), with types and defaults.

One place lists every key so the tabs agree on names and a reset is easy.
"""

from qgis.core import QgsSettings

PREFIX = "GullySeg"

# key -> default (the default's type is the stored type)
DEFAULTS = {
    # screening
    "screening/last_index": "",
    "screening/filter": "unscreened",
    "screening/order": "id",
    "screening/context_tiles": 3,
    "screening/score_model": "",
    # inference
    "inference/model": "",
    "inference/last_folder": "",
    "inference/area": 0,
    "inference/overlap": -1,  # -1: the algorithm's default (a quarter of the window)
    "inference/batch_size": 8,
    "inference/threshold": -1.0,  # -1: the model's own threshold (or 0.5)
    "inference/tta": 0,
    "inference/out_probability": True,
    "inference/out_mask": True,
    "inference/out_polygons": True,
    "inference/temporary": True,
    "inference/min_area": -1.0,  # -1: segment's default (the area of 4 pixels)
    "inference/simplify": 0.0,
}


def _key(name):
    if name not in DEFAULTS:
        raise KeyError(f"unknown GullySeg setting {name!r}")
    return f"{PREFIX}/{name}"


def value(name):
    """The stored value of ``name`` converted to its default's type (the default when unset)."""
    default = DEFAULTS[name] if name in DEFAULTS else None
    raw = QgsSettings().value(_key(name), default)
    if raw is None:
        return default
    try:
        if isinstance(default, bool):
            if isinstance(raw, str):
                return raw.strip().lower() in ("1", "true", "yes", "on")
            return bool(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        return str(raw)
    except (TypeError, ValueError):
        return default


def set_value(name, new_value):
    QgsSettings().setValue(_key(name), new_value)


def reset(name=None):
    """Forget one setting (or all of the dock's settings)."""
    settings = QgsSettings()
    if name is None:
        for key in DEFAULTS:
            settings.remove(_key(key))
    else:
        settings.remove(_key(name))


def snapshot():
    """The dock's raw stored settings ({key: value or None}), for ``restore`` (tests, scripts)."""
    settings = QgsSettings()
    return {name: settings.value(_key(name)) if settings.contains(_key(name)) else None for name in DEFAULTS}


def restore(saved):
    """Put back what ``snapshot`` returned (unset keys are removed)."""
    settings = QgsSettings()
    for name, stored in saved.items():
        if stored is None:
            settings.remove(_key(name))
        else:
            settings.setValue(_key(name), stored)
