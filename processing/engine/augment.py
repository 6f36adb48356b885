"""Step 5: augmented image/mask variants of a dataset's tiles, recorded so they can be undone.

The contract (consumed by training code, e.g. tools/train_demo_model.py):

Variants
    ``<dataset>/augmented/images/<tile_id>__aNN.tif`` and/or ``.jpg`` (the formats the source
    tile has; each format is transformed from its own original, so a JPEG variant comes from
    the tile's JPEG) and ``<dataset>/augmented/masks/<tile_id>__aNN.tif``. NN is the copy index,
    01..COPIES (three digits above 99). Names start with the source tile id. Variants carry no
    geotransform and no CRS (GeoTIFF without geo tags, JPEG without world file): they are not
    map-aligned and must not be mistaken for georeferenced tiles. Nodata values, mask bands,
    colour interpretation and mask colour tables are kept.

Transforms (applied in the recorded order: first one geometric, then the radiometric ones)
    geometric, image and mask alike (pure pixel permutations, no interpolation):
    ``hflip`` (left-right), ``vflip`` (up-down), ``rot90`` (90 degrees counter-clockwise, as
    ``numpy.rot90``), ``rot180``, ``rot270`` (90 degrees clockwise), ``transpose`` (main
    diagonal), ``antitranspose`` (anti-diagonal). Each variant of a tile gets one of the selected
    geometric transforms; the copies of one tile take them in a seeded random order without
    repetition while COPIES allows.
    radiometric, image only (never the mask), per band, on valid pixels only, every selected
    one on every variant with a parameter drawn uniformly from its range (rounded to 4
    decimals; the recorded value is the one used):
    ``brightness``: x * factor; ``contrast``: mean + factor * (x - mean) with the band's mean of
    valid pixels (recorded per format and band); ``gamma``: lo + (hi - lo) * ((x - lo) / (hi - lo)) ** gamma.
    Results are rounded (integer types), clipped to the format's radiometric range [lo, hi] and
    keep the data type. The range: the data type's for 8-bit data; for wider integers the bit
    depth (NBITS metadata, else the smallest 2**k - 1, k >= 8, holding the largest valid value
    of all the dataset's tiles: 1023 for 10-bit data in uint16); for floats the observed min/max.
    Nodata: a pixel equal to its band's nodata value (or masked by a mask band) is not changed;
    a valid pixel that the change would turn into the nodata value is moved one step towards the
    inside of the range, so it stays valid.

Determinism
    The geometric order of a tile comes from ``numpy.random.default_rng([SEED, key(tile_id)])``,
    the radiometric parameters of copy i from ``default_rng([SEED, key(tile_id), i])`` (key: the
    first 8 bytes of the SHA-256 of the tile id). Re-running with the same settings gives the
    same files, whatever else the dataset holds.

Which tiles
    SPLITS (default train): the tiles of those splits, read from the index. With no split yet,
    every tile the steps work on (kept tiles, or all), with a warning: the split must then keep
    each tile's variants with it, which splitdataset does.

Manifest ``<dataset>/augment.json``
    ``settings`` and, per variant id: ``source_tile``, ``copy``, ``seed``, ``split`` (the source's
    current split, kept up to date by splitdataset), ``transforms`` (the ordered list, each with
    its parameters), ``image_tif``, ``image_jpg``, ``mask`` (relative paths, null when absent),
    ``georeferenced`` false. A re-run replaces exactly the variants the previous manifest lists
    (COPIES=0 removes them all); other files in augmented/ are never touched.

When the dataset is already split, the variants are added to their split's list file, folders
(when materialised) and ``split.json`` (through ``split_outputs.refresh_outputs``).
"""

import hashlib
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from osgeo import gdal

from . import dataset, gdalio, split_outputs
from .errors import GullySegError
from .feedback import Feedback
from .radiometry import _dtype_limits, apply_radiometric, radiometric_range  # noqa: F401 (as before)
from .results import DictAccess

GEOMETRIC = ("hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "antitranspose")
RADIOMETRIC = ("brightness", "contrast", "gamma")
TRANSFORMS = GEOMETRIC + RADIOMETRIC
# The published set: mirror flips, rotations, brightness.
DEFAULT_TRANSFORMS = ("hflip", "vflip", "rot90", "rot180", "rot270", "brightness")
DEFAULT_RANGES = {"brightness": (0.8, 1.2), "contrast": (0.8, 1.2), "gamma": (0.8, 1.25)}
PARAM_NAME = {"brightness": "factor", "contrast": "factor", "gamma": "gamma"}
JPEG_QUALITY = 95
IMAGES = dataset.IMAGES_DIR
MASKS = dataset.MASKS_DIR
MANIFEST_FORMAT = "gullyseg-augment/1"


@dataclass
class AugmentResult(DictAccess):
    """What ``augment_dataset`` did (also readable as a dict: ``result["count"]``)."""

    count: int  # variants written
    manifest: str  # path of augment.json
    sources: int  # tiles augmented
    splits: list  # the splits augmented ([] when the dataset was not split)

_OPS = {
    "hflip": lambda a: a[..., :, ::-1],
    "vflip": lambda a: a[..., ::-1, :],
    "rot90": lambda a: np.rot90(a, 1, axes=(-2, -1)),
    "rot180": lambda a: a[..., ::-1, ::-1],
    "rot270": lambda a: np.rot90(a, -1, axes=(-2, -1)),
    "transpose": lambda a: np.swapaxes(a, -1, -2),
    "antitranspose": lambda a: np.swapaxes(a, -1, -2)[..., ::-1, ::-1],
}
INVERSE = {"hflip": "hflip", "vflip": "vflip", "rot90": "rot270", "rot180": "rot180", "rot270": "rot90",
           "transpose": "transpose", "antitranspose": "antitranspose"}


def geometric(array, op) -> np.ndarray:
    """Apply a geometric transform to (..., rows, cols) arrays."""
    return np.ascontiguousarray(_OPS[op](array))


def tile_key(tile_id) -> int:
    return int.from_bytes(hashlib.sha256(tile_id.encode("utf-8")).digest()[:8], "little")


def variant_id(tile_id, copy, copies) -> str:
    width = 3 if copies > 99 else 2
    return f"{tile_id}__a{copy:0{width}d}"


def plan_variant(tile_id, copy, transforms, ranges, seed) -> list:
    """The ordered transform steps of copy ``copy`` (1-based) of ``tile_id``: [{'op': ..., param: ...}]."""
    steps = []
    geo = [op for op in GEOMETRIC if op in transforms]
    if geo:
        order = np.random.default_rng([int(seed), tile_key(tile_id)]).permutation(len(geo))
        steps.append({"op": geo[int(order[(copy - 1) % len(geo)])]})
    rng = np.random.default_rng([int(seed), tile_key(tile_id), int(copy)])
    for op in RADIOMETRIC:
        if op in transforms:
            lo, hi = ranges[op]
            steps.append({"op": op, PARAM_NAME[op]: round(float(rng.uniform(lo, hi)), 4)})
    return steps


# --- parameters ------------------------------------------------------------------------

def _check_range(name, value):
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise GullySegError(f"{name.upper()}: give a range 'min,max' (got {value!r}).") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi or lo <= 0:
        raise GullySegError(f"{name.upper()}: the range {lo}..{hi} must be positive numbers with min <= max.")
    return lo, hi


def check_parameters(splits, transforms, copies, ranges) -> dict:
    unknown = [t for t in transforms if t not in TRANSFORMS]
    if unknown or not transforms:
        raise GullySegError(f"TRANSFORMS: choose one or more of {', '.join(TRANSFORMS)} (got {list(transforms)}).")
    bad = [s for s in splits if s not in dataset.SPLITS]
    if bad or not splits:
        raise GullySegError(f"SPLITS: choose one or more of train, val, test (got {list(splits)}).")
    if int(copies) != copies or copies < 0 or copies > 999:
        raise GullySegError(f"COPIES must be a whole number from 0 to 999 (got {copies}).")
    return {name: _check_range(name, ranges.get(name, DEFAULT_RANGES[name])) for name in RADIOMETRIC}


# --- reading and writing ---------------------------------------------------------------

class _Raster:
    """A small raster read whole (a 256x256 tile), with what a variant must keep."""

    def __init__(self, path):
        ds = gdalio.open_raster(path, "DATASET")
        self.array = gdalio.read_window(ds, 0, 0, ds.RasterXSize, ds.RasterYSize)
        self.dtype = self.array.dtype
        self.gdal_type = ds.GetRasterBand(1).DataType
        bands = [ds.GetRasterBand(b) for b in range(1, ds.RasterCount + 1)]
        self.nodata = [b.GetNoDataValue() for b in bands]
        self.colors = [b.GetColorInterpretation() for b in bands]
        self.descriptions = [b.GetDescription() for b in bands]
        self.alpha = [c == gdal.GCI_AlphaBand for c in self.colors]
        table = bands[0].GetColorTable()
        self.color_table = table.Clone() if table is not None else None
        flags = bands[0].GetMaskFlags()
        self.per_dataset_mask = (flags & gdal.GMF_PER_DATASET) and not (flags & (gdal.GMF_NODATA | gdal.GMF_ALPHA))
        if self.per_dataset_mask:
            self.mask = bands[0].GetMaskBand().ReadAsArray()
        else:
            self.mask = None
        self.valid = gdalio.valid_mask(ds, 0, 0, ds.RasterXSize, ds.RasterYSize)
        ds = None


def _write(path, array, src, driver, options, mask=None):
    """Write (bands, rows, cols) with no geotransform and no CRS; keeps nodata, colours, mask band.

    GDAL's write errors (full disk), also those reported only when the file is closed, raise."""
    with gdalio.checked_write(path, "augmented dataset"):
        _write_unchecked(path, array, src, driver, options, mask)


def _write_unchecked(path, array, src, driver, options, mask=None):
    bands, rows, cols = array.shape
    if driver == "GTiff":
        ds = gdalio.create_raster(path, cols, rows, bands, src.gdal_type, options=options)
        target = ds
    else:
        ds = gdalio.create_raster("", cols, rows, bands, src.gdal_type, driver="MEM")
        target = None
    for b in range(bands):
        band = ds.GetRasterBand(b + 1)
        if src.nodata[b] is not None:
            band.SetNoDataValue(src.nodata[b])
        band.WriteArray(array[b])
        band.SetColorInterpretation(src.colors[b])
        if src.descriptions[b]:
            band.SetDescription(src.descriptions[b])
        if b == 0 and src.color_table is not None:
            band.SetColorTable(src.color_table)
    if mask is not None:
        ds.CreateMaskBand(gdal.GMF_PER_DATASET)
        ds.GetRasterBand(1).GetMaskBand().WriteArray(mask)
    if target is None:
        out = gdal.GetDriverByName(driver).CreateCopy(str(path), ds, 0, options)
        if out is None:
            raise GullySegError(f"Cannot write '{path}'.")
        out = None
    ds = None


def _write_variant(paths, tmp_root, vid, sources, steps, ranges_by_ext):
    """Write one variant's files under ``tmp_root``; returns its manifest entry's path fields and means."""
    entry = {"image_tif": None, "image_jpg": None, "mask": f"{dataset.AUGMENTED_DIR}/{MASKS}/{vid}.tif"}
    geo = [s["op"] for s in steps if s["op"] in GEOMETRIC]
    radio = [s for s in steps if s["op"] in RADIOMETRIC]
    means = {}
    for ext, src in sources["images"].items():
        array = src.array
        for op in geo:
            array = geometric(array, op)
        valid = src.valid
        for op in geo:
            valid = geometric(valid, op)
        if radio:
            lo, hi = ranges_by_ext[ext]
            array, m = apply_radiometric(array, radio, lo, hi, src.nodata, valid, src.alpha)
            if m:
                means[ext] = m
        mask_band = src.mask
        for op in geo:
            mask_band = geometric(mask_band, op) if mask_band is not None else None
        rel = f"{dataset.AUGMENTED_DIR}/{IMAGES}/{vid}.{ext}"
        target = os.path.join(tmp_root, IMAGES, f"{vid}.{ext}")
        if ext == "tif":
            _write(target, array, src, "GTiff", gdalio.GTIFF_SMALL, mask_band)
        else:
            _write(target, array, src, "JPEG", [f"QUALITY={JPEG_QUALITY}"], mask_band)
        entry[f"image_{ext}"] = rel
    msrc = sources["mask"]
    marray = msrc.array
    for op in geo:
        marray = geometric(marray, op)
    _write(os.path.join(tmp_root, MASKS, f"{vid}.tif"), marray, msrc, "GTiff", gdalio.GTIFF_SMALL)
    return entry, means


def _files_of(paths, entry):
    """Every file of a variant entry (and GDAL side files beside them), relative to the dataset."""
    out = []
    for key in ("image_tif", "image_jpg", "mask"):
        rel = entry.get(key)
        if not rel:
            continue
        out.append(rel)
        for suffix in dataset.SIDE_SUFFIXES:
            if os.path.exists(paths.abs(rel) + suffix):
                out.append(rel + suffix)
    return out


# --- the step --------------------------------------------------------------------------

def _write_variants(paths, plan, seed, ranges_by_ext, feedback):
    """Write every planned variant into a temporary folder under augmented/. Returns (that folder,
    the manifest's variants); on error or cancel the folder is removed."""
    tmp_root = os.path.join(paths.root, dataset.AUGMENTED_DIR, f".partial-{uuid.uuid4().hex[:8]}")
    variants = {}
    try:
        os.makedirs(os.path.join(tmp_root, IMAGES))
        os.makedirs(os.path.join(tmp_root, MASKS))
        by_tile = {}
        for t, c, vid, steps in plan:
            by_tile.setdefault(t.tile_id, (t, []))[1].append((c, vid, steps))
        done = 0
        for tid in sorted(by_tile):
            t, items = by_tile[tid]
            feedback.check_cancelled()
            srcs = {"images": {ext: _Raster(paths.abs(rel)) for ext, rel in t.images.items()},
                    "mask": _Raster(paths.abs(t.mask))}
            for c, vid, steps in items:
                entry, means = _write_variant(paths, tmp_root, vid, srcs, steps, ranges_by_ext)
                recorded = []
                for step in steps:
                    step = dict(step)
                    if step["op"] == "contrast":
                        step["mean"] = {ext: m[0] for ext, m in means.items()}
                    recorded.append(step)
                entry.update({"source_tile": tid, "copy": c, "seed": int(seed), "split": t.split or "",
                              "transforms": recorded, "georeferenced": False})
                variants[vid] = entry
                done += 1
            feedback.progress(5 + 85.0 * done / max(1, len(plan)))
    except BaseException:
        shutil.rmtree(tmp_root, ignore_errors=True)
        raise
    return tmp_root, variants


def _swap_in(paths, tmp_root, owned):
    """Remove the previous run's variants (``owned``), move the new ones in, drop empty folders."""
    for rel in sorted(owned):
        path = paths.abs(rel)
        if os.path.lexists(path):
            os.remove(path)
    for sub in (IMAGES, MASKS):
        folder = os.path.join(tmp_root, sub)
        final = os.path.join(paths.root, dataset.AUGMENTED_DIR, sub)
        os.makedirs(final, exist_ok=True)
        for name in sorted(os.listdir(folder)):
            os.replace(os.path.join(folder, name), os.path.join(final, name))
    shutil.rmtree(tmp_root, ignore_errors=True)
    for sub in (IMAGES, MASKS, ""):
        folder = os.path.join(paths.root, dataset.AUGMENTED_DIR, sub)
        if os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)


def _card_section(settings, sources, variants):
    """The dataset card's 'augmentation' section."""
    per_split = {}
    for entry in variants.values():
        key = entry["split"] or "unsplit"
        per_split[key] = per_split.get(key, 0) + 1
    card_section = dict(settings)
    card_section.update({
        "source_tiles": sources,
        "variants": len(variants),
        "variants_per_split": dict(sorted(per_split.items())),
        "manifest": dataset.AUGMENT_MANIFEST,
        "folders": f"{dataset.AUGMENTED_DIR}/images/<tile_id>__aNN.tif|.jpg, "
                   f"{dataset.AUGMENTED_DIR}/masks/<tile_id>__aNN.tif",
        "georeferenced": False,
        "conventions": "one geometric transform per variant (rot90 = counter-clockwise), then the radiometric ones "
                       "on valid image pixels; masks only geometric; dtype kept, clipped to the radiometric range; "
                       "nodata kept",
    })
    return card_section


def augment_dataset(root: str, splits: Sequence[str] = ("train",), transforms: Sequence[str] = DEFAULT_TRANSFORMS,
                    copies: int = 4, brightness: Optional[Sequence[float]] = None,
                    contrast: Optional[Sequence[float]] = None, gamma: Optional[Sequence[float]] = None,
                    seed: int = 42, overwrite: bool = False, feedback: Optional[Feedback] = None) -> AugmentResult:
    """Write augmented variants for the tiles of ``splits`` (see the module docstring).

    Returns an ``AugmentResult``.
    """
    feedback = feedback or Feedback()
    given = {k: v for k, v in (("brightness", brightness), ("contrast", contrast), ("gamma", gamma)) if v is not None}
    ranges = check_parameters(list(splits or []), list(transforms or []), copies, given)
    transforms = [t for t in TRANSFORMS if t in set(transforms)]  # canonical order
    copies = int(copies)
    paths, records, tiles = dataset.collect_tiles(root)
    has_split = any(t.split in dataset.SPLITS for t in tiles)
    if has_split:
        sources = [t for t in tiles if t.split in splits]
        feedback.info(f"Augmenting the {', '.join(splits)} split(s): {len(sources)} of {len(tiles)} tiles.")
    else:
        sources = list(tiles)
        feedback.warn(
            f"The dataset is not split yet: augmenting all {len(sources)} tiles. The split must keep every "
            "variant with its source tile; Split dataset (splitdataset) does, a random split of the files would not."
        )
    geo = [op for op in GEOMETRIC if op in transforms]
    if geo and copies > len(geo) and not any(op in transforms for op in RADIOMETRIC):
        feedback.warn(f"COPIES={copies} but only {len(geo)} geometric transforms and no radiometric one: "
                      "some variants of a tile are identical.")

    manifest_path = os.path.join(paths.root, dataset.AUGMENT_MANIFEST)
    previous = dataset.read_json(manifest_path, "DATASET")
    if previous is None and os.path.exists(manifest_path):
        previous = {}
    owned = set()
    for entry in ((previous or {}).get("variants") or {}).values():
        owned.update(_files_of(paths, entry))
    plan = []  # (tile, copy, variant id, steps)
    for t in sources:
        for c in range(1, copies + 1):
            plan.append((t, c, variant_id(t.tile_id, c, copies), plan_variant(t.tile_id, c, transforms, ranges, seed)))
    planned_rel = []
    for t, _, vid, _ in plan:
        planned_rel += [f"{dataset.AUGMENTED_DIR}/{IMAGES}/{vid}.{ext}" for ext in t.images]
        planned_rel.append(f"{dataset.AUGMENTED_DIR}/{MASKS}/{vid}.tif")
    blocked = [rel for rel in planned_rel if rel not in owned and os.path.lexists(paths.abs(rel))]
    if blocked and not overwrite:
        raise GullySegError(
            f"DATASET: {len(blocked)} files in '{paths.root}' that the augment step did not write are in the way: "
            f"{dataset.listing(sorted(blocked))}. Move them away or allow overwriting (OVERWRITE)."
        )

    exts = sorted({ext for t in sources for ext in t.images})
    radio_on = any(op in transforms for op in RADIOMETRIC)
    ranges_by_ext = {}
    if radio_on and plan:
        for ext in exts:
            ranges_by_ext[ext] = radiometric_range(paths, [t for t in tiles if ext in t.images], ext,
                                                   feedback.scaled(0, 5))
            lo, hi = ranges_by_ext[ext]
            feedback.info(f"Radiometric range of the .{ext} images: {lo:g}..{hi:g}")

    tmp_root, variants = _write_variants(paths, plan, seed, ranges_by_ext, feedback)

    _swap_in(paths, tmp_root, owned)

    settings = {
        "splits": list(splits) if has_split else "all (not split yet)",
        "transforms": list(transforms),
        "copies": copies,
        "brightness": list(ranges["brightness"]),
        "contrast": list(ranges["contrast"]),
        "gamma": list(ranges["gamma"]),
        "seed": int(seed),
        "jpeg_quality": JPEG_QUALITY,
        "radiometric_range": {ext: ranges_by_ext[ext] for ext in sorted(ranges_by_ext)},
    }
    manifest = {"format": MANIFEST_FORMAT, "settings": settings, "variants": variants}
    dataset.write_json(manifest_path, manifest, what=dataset.AUGMENT_MANIFEST)

    card_section = _card_section(settings, len(sources), variants)
    dataset.update_card(paths.root, augmentation=card_section)
    feedback.info(f"Wrote {len(variants)} variants of {len(sources)} tiles ({copies} per tile).")

    if has_split:
        split_outputs.refresh_outputs(paths, tiles, overwrite=overwrite, feedback=feedback.scaled(90, 100))
    feedback.progress(100)
    return AugmentResult(count=len(variants), manifest=manifest_path, sources=len(sources),
                         splits=list(splits) if has_split else [])
