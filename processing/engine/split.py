"""Step 6: a leak-free train/val/test split of a dataset folder, with lists, manifest and card.

The contract (consumed by training code, e.g. tools/train_demo_model.py):

Samples
    A *sample* is one image/mask pair, named by its *sample id* (a file stem). An original
    tile's sample id is its tile id (``<scene>_r0007_c0012``); an augmented variant's id is
    ``<tile_id>__aNN`` (see ``augment.py``), so every sample id starts with its source tile id.

List files
    ``<dataset>/train.txt``, ``val.txt``, ``test.txt``: one sample id per line, sorted, UTF-8,
    '\\n' line ends. All three are always written (an empty file for a split with ratio 0).

Materialised folders (MATERIALIZE, default on)
    ``<dataset>/<split>/images/<id>.tif`` and/or ``<id>.jpg`` (the formats the dataset has) and
    ``<dataset>/<split>/masks/<id>.tif``, as hard links to the dataset's files (``os.link``;
    a copy where the file system refuses links: EXDEV, EPERM ...). Original tiles keep their
    side files (``.aux.xml``, ``.jgw``) so they still open at the right place in QGIS; variants
    have none. A re-run removes exactly the files the previous run listed in the manifest
    (``materialized_files``) and nothing else; a foreign file in the way is an error unless
    ``overwrite``.

Manifest ``<dataset>/split.json``
    ``settings`` (ratios, seed, strategy, block size, stratify, materialize), ``samples``
    ({sample id: {split, source_tile, group, variant, image_tif, image_jpg, mask,
    materialized: {image_tif, image_jpg, mask}}}; paths relative to the dataset folder with '/',
    null where a format is absent), ``groups`` ({group id: {split, tiles}}), ``summary``
    (per split: tiles, groups, samples, variants, gully pixel share) and ``materialized_files``.

Groups and leakage
    The unit that is assigned to a split is a *group*: one source tile (STRATEGY 0) or a
    spatial block of BLOCK_SIZE x BLOCK_SIZE tiles taken from the index's row/col (STRATEGY 1;
    block ``<scene>_b<row // B>_<col // B>``). Augmented variants always go with their source
    tile, so no source tile or block is ever in two splits, whatever the order of the steps
    (the published order, augment everything then split, is safe too).

Allocation
    Groups are sorted by id, then (STRATIFY) put in bins of gully pixel share (bin 0: no gully
    pixels; the others: equal-count quantile bins of the positive shares, each about one dealing
    cycle of 1 / (smallest non-zero ratio) groups, i.e. 5 for 6:2:2). Each bin is shuffled with
    ``numpy.random.default_rng(SEED)`` and the bins are concatenated (without STRATIFY: one
    shuffled list). Groups are then dealt out in that order by sequential largest-remainder
    apportionment: each group goes to the split that is furthest below its quota
    ``ratio * tiles dealt so far`` (in tiles). Every prefix of the order, hence every bin, is
    therefore split by the ratios, and the final split sizes are within one group of
    ``ratio * tiles``. With STRATIFY, 32 such allocations are drawn from the seeded generator and
    the one whose splits' gully pixel shares are closest to the overall share is kept (the
    largest deviation is minimised). Same data and seed, same split.

Gully share
    From the masks: gully pixels are mask values 1..254 (every class but background 0; with the
    default class map exactly ``gully=1``), labelled pixels are those that are neither the ignore
    value (255, or ``ignore_value`` found in the dataset card) nor the mask's nodata value.
"""

import math
import os
import re
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
from osgeo import gdal

from . import dataset, gdalio, metrics
from .dataset import (  # noqa: F401 (the dataset contract, importable from here as before)
    AUGMENT_MANIFEST,
    AUGMENTED_DIR,
    MAX_LISTED,
    SIDE_EXTS,
    SIDE_SUFFIXES,
    SPLIT_MANIFEST,
    TileSample,
    collect_tiles,
    ignore_value,
    read_json,
    read_variants,
    write_json,
)
from .errors import GullySegError
from .feedback import Feedback
from .materialize import (  # noqa: F401 (importable from here as before)
    _owned,
    _plan_files,
    check_outputs_free,
    link_or_copy,
    materialize,
    remove_owned,
)
from .results import DictAccess

SPLITS = dataset.SPLITS  # ("train", "val", "test")
STRATEGY_TILE = 0
STRATEGY_BLOCK = 1
STRATEGY_NAMES = {STRATEGY_TILE: "source tile", STRATEGY_BLOCK: "spatial block"}
DEFAULT_IGNORE = dataset.MASK_IGNORE
_TILE_RE = re.compile(r"^(?P<scene>.*)_r\d+_c\d+$")
MANIFEST_FORMAT = "gullyseg-split/1"


@dataclass
class SplitResult(DictAccess):
    """What ``split_dataset`` did (also readable as a dict: ``result["counts"]["train"]``)."""

    counts: dict  # samples per split (tiles and their variants)
    tiles: dict  # source tiles per split
    summary: dict  # per split: tiles, groups, samples, variants, gully share
    summary_text: str
    manifest: str  # path of split.json
    links: int  # materialised files hard-linked
    copies: int  # materialised files copied


# --- parameters ------------------------------------------------------------------------

def parse_ratios(text) -> tuple:
    """'6:2:2', '0.7,0.15,0.15', '1 0 0' ... -> three non-negative floats summing to 1."""
    if isinstance(text, (list, tuple)):
        parts = list(text)
    else:
        parts = [p for p in re.split(r"[:,;/\s]+", str(text or "").strip()) if p]
    try:
        values = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise GullySegError(
            f"RATIOS: '{text}' is not three numbers for train, val and test, such as '6:2:2' or '0.7,0.15,0.15'."
        ) from None
    if len(values) != 3:
        raise GullySegError(f"RATIOS: '{text}' has {len(values)} numbers; give three (train, val, test), e.g. '6:2:2'.")
    if any(not np.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise GullySegError(f"RATIOS: '{text}' must be three non-negative numbers, not all zero.")
    total = sum(values)
    return tuple(v / total for v in values)


def ratios_label(ratios) -> str:
    return ":".join(f"{r:g}" for r in ratios)


# --- mask pixels ----------------------------------------------------------------------

def count_mask_pixels(paths, tiles, ignore, feedback) -> None:
    """Set ``gully`` and ``labelled`` pixel counts on every tile from its mask (and check sizes)."""
    for i, tile in enumerate(tiles):
        feedback.check_cancelled()
        mask_path = paths.abs(tile.mask)
        ds = gdalio.open_raster(mask_path, "DATASET")
        band = ds.GetRasterBand(1)
        size = (ds.RasterXSize, ds.RasterYSize)
        values = band.ReadAsArray()
        nodata = band.GetNoDataValue()
        ds = None
        image = gdal.OpenEx(paths.abs(next(iter(tile.images.values()))), gdal.OF_RASTER)
        if image is not None and (image.RasterXSize, image.RasterYSize) != size:
            raise GullySegError(
                f"DATASET: mask '{mask_path}' is {size[0]}x{size[1]} pixels but its tile's image is "
                f"{image.RasterXSize}x{image.RasterYSize}; rasterise the labels again."
            )
        image = None
        labelled = values != ignore
        if nodata is not None and nodata != ignore:
            labelled &= values != nodata
        tile.labelled = int(labelled.sum())
        tile.gully = int((labelled & (values > 0) & (values < dataset.MASK_IGNORE)).sum())
        if i % 16 == 0:
            feedback.progress(100.0 * (i + 1) / len(tiles))


# --- groups and allocation -------------------------------------------------------------

def group_of(tile, strategy, block_size) -> str:
    if strategy == STRATEGY_TILE:
        return tile.tile_id
    if tile.row is None or tile.col is None:
        raise GullySegError(
            f"STRATEGY: spatial blocks need the tiles' row and col in the index; tile '{tile.tile_id}' has none."
        )
    match = _TILE_RE.match(tile.tile_id)
    scene = match.group("scene") if match else ""
    return f"{scene}_b{int(tile.row) // block_size:04d}_{int(tile.col) // block_size:04d}"


def stratum_bins(shares, ratios) -> tuple:
    """Bin per group: 0 for no gully pixels, 1..n equal-count quantile bins of the positive shares.

    A bin holds about one dealing cycle, 1 / (smallest non-zero ratio) groups (5 for 6:2:2), so
    every split gets a share of every narrow range of gully shares.
    """
    positive = sorted((s, i) for i, s in enumerate(shares) if s > 0)
    cycle = max(2, math.ceil(1.0 / min(r for r in ratios if r > 0) - 1e-9))
    n_bins = max(1, len(positive) // cycle)
    bins = [0] * len(shares)
    for rank, (_, i) in enumerate(positive):
        bins[i] = 1 + rank * n_bins // len(positive)
    return bins, n_bins


def deal(order, weights, ratios) -> list:
    """Sequential largest remainder: each item to the split furthest below ``ratio * dealt``."""
    active = [k for k, r in enumerate(ratios) if r > 0]
    filled = [0.0] * len(ratios)
    dealt = 0.0
    out = []
    for item in order:
        dealt += weights[item]
        k = max(active, key=lambda j: (ratios[j] * dealt - filled[j], -j))
        filled[k] += weights[item]
        out.append(k)
    return out


CANDIDATES = 32  # stratified allocations tried per run; the best balanced one is kept


def share_spread(assigned, pixels, ratios) -> float:
    """Largest |gully share of a split - overall share| over the non-empty splits with a ratio."""
    gully = [0.0] * len(SPLITS)
    labelled = [0.0] * len(SPLITS)
    for g, k in assigned.items():
        gully[k] += pixels[g][0]
        labelled[k] += pixels[g][1]
    total = sum(labelled)
    if not total:
        return 0.0
    overall = sum(gully) / total
    return max((abs(gully[k] / labelled[k] - overall) for k in range(len(SPLITS))
                if ratios[k] > 0 and labelled[k] > 0), default=0.0)


def allocate(group_ids, weights, shares, ratios, seed, stratify, pixels=None, candidates=CANDIDATES) -> tuple:
    """{group id: split name}, and the number of stratification bins used.

    Without ``stratify``: one seeded shuffle, dealt out. With it: the groups are binned by gully
    share, each bin shuffled, and dealt out; ``candidates`` such allocations are drawn from the
    seeded generator and the one whose splits' gully pixel shares are closest to the overall
    share (``pixels``: {group: (gully, labelled)}) is kept. Every candidate meets the ratios within
    one group, so the choice only improves the balance. Same inputs and seed, same result.
    """
    ids = sorted(group_ids)
    rng = np.random.default_rng(int(seed))
    if not stratify:
        order = [ids[i] for i in rng.permutation(len(ids))]
        return {g: SPLITS[k] for g, k in zip(order, deal(order, weights, ratios))}, 0
    bins, n_bins = stratum_bins([shares[g] for g in ids], ratios)
    members = [[g for g, gb in zip(ids, bins) if gb == b] for b in range(n_bins + 1)]
    best, best_spread = None, None
    for _ in range(max(1, candidates if pixels else 1)):
        order = []
        for group in members:
            order += [group[i] for i in rng.permutation(len(group))]
        assigned = dict(zip(order, deal(order, weights, ratios)))
        spread = share_spread(assigned, pixels, ratios) if pixels else 0.0
        if best is None or spread < best_spread - 1e-12:
            best, best_spread = assigned, spread
    return {g: SPLITS[k] for g, k in best.items()}, n_bins


# --- outputs: lists, materialised folders (materialize.py), manifest ---------------------

def build_samples(tiles, groups, variants) -> dict:
    """Sample entries for every tile that has a split, and for its variants."""
    samples = {}
    by_tile = {t.tile_id: t for t in tiles}
    for t in tiles:
        if t.split not in SPLITS:
            continue
        samples[t.tile_id] = {
            "split": t.split, "source_tile": t.tile_id, "group": groups.get(t.tile_id, t.tile_id),
            "variant": False, "image_tif": t.images.get("tif"), "image_jpg": t.images.get("jpg"), "mask": t.mask,
        }
    for vid, entry in variants.items():
        source = by_tile.get(entry["source_tile"])
        if source is None or source.split not in SPLITS:
            continue
        samples[vid] = {
            "split": source.split, "source_tile": source.tile_id, "group": groups.get(source.tile_id, source.tile_id),
            "variant": True, "image_tif": entry.get("image_tif"), "image_jpg": entry.get("image_jpg"),
            "mask": entry["mask"],
        }
    return samples


def summarize(tiles, samples) -> dict:
    summary = {}
    for name in SPLITS:
        members = [t for t in tiles if t.split == name]
        gully = sum(t.gully for t in members)
        labelled = sum(t.labelled for t in members)
        in_split = [s for s in samples.values() if s["split"] == name]
        summary[name] = {
            "tiles": len(members),
            "groups": len({s["group"] for s in in_split if not s["variant"]}),
            "samples": len(in_split),
            "variants": sum(1 for s in in_split if s["variant"]),
            "gully_pixels": gully,
            "labelled_pixels": labelled,
            "gully_share": round(gully / labelled, 6) if labelled else 0.0,
        }
    return summary


def summary_text(summary) -> str:
    parts = []
    for name in SPLITS:
        s = summary[name]
        parts.append(
            f"{name}: {s['tiles']} tiles in {s['groups']} groups, {s['samples']} samples "
            f"({s['variants']} augmented), gully pixel share {100.0 * s['gully_share']:.2f} %"
        )
    return "; ".join(parts)


def counts_section(card, records, summary) -> dict:
    """The card's 'counts' section with per-status and per-split numbers merged in."""
    counts = dict(card.get("counts") or {}) if isinstance(card.get("counts"), dict) else {}
    status = {}
    for rec in records:
        key = rec.get("status") or dataset.STATUS_UNSCREENED
        status[key] = status.get(key, 0) + 1
    counts["tiles"] = len(records)
    for key in dataset.STATUSES:
        counts[key] = status.get(key, 0)
    counts["per_split"] = {name: {"tiles": summary[name]["tiles"], "samples": summary[name]["samples"]}
                           for name in SPLITS}
    return counts


def write_outputs(paths, records, tiles, groups, settings, overwrite=False, feedback=None, extra_warnings=()) -> dict:
    """Write lists, (materialised folders), split.json, the augment manifest's split fields and the card.

    ``tiles`` carry their split; ``groups`` maps tile id -> group id. Shared by splitdataset
    and augment (which adds its variants to the existing split). Returns the manifest.
    """
    feedback = feedback or Feedback()
    manifest_path = os.path.join(paths.root, SPLIT_MANIFEST)
    previous = read_json(manifest_path, "DATASET")
    tile_ids = {t.tile_id for t in tiles}
    variants = read_variants(paths, tile_ids)
    samples = build_samples(tiles, groups, variants)
    plan = _plan_files(paths, samples) if settings.get("materialize") else []
    check_outputs_free(paths, [rel for _, rel in plan], previous, overwrite)

    if settings.get("materialize"):
        files, links, copies = materialize(paths, plan, previous, feedback.scaled(0, 95))
        feedback.info(f"Materialised {len(files)} files: {links} hard links, {copies} copies.")
    else:
        remove_owned(paths, previous)
        files, links, copies = [], 0, 0
    for name in SPLITS:
        ids = sorted(sid for sid, s in samples.items() if s["split"] == name)
        path = os.path.join(paths.root, f"{name}.txt")
        with gdalio.atomic_output(path, overwrite=True, what=f"{name}.txt") as tmp:
            with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
                handle.write("".join(f"{sid}\n" for sid in ids))
    summary = summarize(tiles, samples)
    group_map = {}
    for t in tiles:
        if t.split in SPLITS:
            g = group_map.setdefault(groups.get(t.tile_id, t.tile_id), {"split": t.split, "tiles": []})
            g["tiles"].append(t.tile_id)
    manifest = {
        "format": MANIFEST_FORMAT,
        "settings": settings,
        "lists": {name: f"{name}.txt" for name in SPLITS},
        "samples": samples,
        "groups": group_map,
        "summary": summary,
        "materialized_files": files,
        "materialized_links": links,
        "materialized_copies": copies,
    }
    write_json(manifest_path, manifest, what=SPLIT_MANIFEST)
    dataset.set_variant_splits(paths, {t.tile_id: t.split for t in tiles})

    card = dataset.read_card(paths.root)
    split_card = dict(settings)
    split_card.update({
        "rule": "groups (source tiles or spatial blocks) are assigned whole; augmented variants follow their "
                "source tile, so no source tile or block is in two splits",
        "lists": [f"{name}.txt" for name in SPLITS],
        "manifest": SPLIT_MANIFEST,
        "sample_id": "file stem: the tile id, or <tile_id>__aNN for augmented variants",
        "folders": "<split>/images/<id>.tif|.jpg and <split>/masks/<id>.tif" if settings.get("materialize") else None,
        "summary": summary,
        "gully_pixels": "mask values 1..254; labelled = not the ignore value nor the mask nodata",
    })
    dataset.update_card(paths.root, split=split_card, counts=counts_section(card, records, summary),
                        evaluation=metrics.card_section())
    for line in summary_text(summary).split("; "):
        feedback.info(f"  {line}")
    return manifest


def refresh_outputs(paths, tiles, overwrite=False, feedback=None) -> None:
    """Rewrite the split's lists, folders and manifest after the variants changed (augment.py).

    Keeps the previous split's settings and groups (split.json; else the index's split field).
    """
    feedback = feedback or Feedback()
    previous = read_json(os.path.join(paths.root, SPLIT_MANIFEST), "DATASET") or {}
    settings = previous.get("settings") or {"materialize": False, "note": "split read from the index"}
    groups = {}
    for gid, g in (previous.get("groups") or {}).items():
        for tid in g.get("tiles", []):
            groups[tid] = gid
    ignore = settings.get("ignore_value", ignore_value(dataset.read_card(paths.root)))
    count_mask_pixels(paths, tiles, ignore, feedback.scaled(0, 30))
    write_outputs(paths, records_after(paths), tiles, groups, settings, overwrite=overwrite,
                  feedback=feedback.scaled(30, 100))


# --- the step --------------------------------------------------------------------------

def split_dataset(root: str, ratios: Union[str, Sequence[float]] = "6:2:2", seed: int = 42,
                  strategy: int = STRATEGY_TILE, block_size: int = 4, stratify: bool = True,
                  materialize: bool = True, overwrite: bool = False,
                  feedback: Optional[Feedback] = None) -> SplitResult:
    """Split the dataset folder ``root`` into train/val/test (see the module docstring).

    Returns a ``SplitResult``.
    """
    feedback = feedback or Feedback()
    ratio_values = parse_ratios(ratios)
    if strategy not in STRATEGY_NAMES:
        raise GullySegError(f"STRATEGY must be 0 (source tile) or 1 (spatial blocks), not {strategy}.")
    block_size = int(block_size)
    if strategy == STRATEGY_BLOCK and block_size < 1:
        raise GullySegError(f"BLOCK_SIZE must be at least 1 tile (got {block_size}).")
    paths, records, tiles = collect_tiles(root)
    card = dataset.read_card(paths.root)
    ignore = ignore_value(card)
    feedback.info(f"{len(tiles)} tiles to split {ratios_label(ratio_values)} (seed {seed}); "
                  f"groups: {STRATEGY_NAMES[strategy]}{f' {block_size}x{block_size}' if strategy else ''}.")
    count_mask_pixels(paths, tiles, ignore, feedback.scaled(0, 40))

    groups = {t.tile_id: group_of(t, strategy, block_size) for t in tiles}
    weights, gully, labelled = {}, {}, {}
    for t in tiles:
        g = groups[t.tile_id]
        weights[g] = weights.get(g, 0) + 1
        gully[g] = gully.get(g, 0) + t.gully
        labelled[g] = labelled.get(g, 0) + t.labelled
    shares = {g: (gully[g] / labelled[g] if labelled[g] else 0.0) for g in weights}
    pixels = {g: (gully[g], labelled[g]) for g in weights}
    split_of_group, n_bins = allocate(list(weights), weights, shares, ratio_values, seed, stratify, pixels)
    for t in tiles:
        t.split = split_of_group[groups[t.tile_id]]
    if strategy == STRATEGY_TILE:
        tiling = card.get("tiling") if isinstance(card.get("tiling"), dict) else {}
        size = tiling.get("tile_size")
        stride = tiling.get("stride") or size
        if stride and size and stride < size:
            feedback.warn(f"Tiles overlap (stride {stride} < tile size {size}): neighbouring tiles share pixels. "
                          "Use STRATEGY=1 (spatial blocks) so overlapping tiles stay in one split.")

    feedback.check_cancelled()
    previous = read_json(os.path.join(paths.root, SPLIT_MANIFEST), "DATASET")
    settings = {
        "ratios": [round(r, 6) for r in ratio_values],
        "ratios_given": str(ratios) if not isinstance(ratios, (list, tuple)) else ratios_label(ratios),
        "seed": int(seed),
        "strategy": int(strategy),
        "strategy_name": STRATEGY_NAMES[strategy],
        "block_size": block_size if strategy == STRATEGY_BLOCK else None,
        "stratify": bool(stratify),
        "stratify_bins": n_bins if stratify else 0,
        "stratify_candidates": CANDIDATES if stratify else 0,
        "materialize": bool(materialize),
        "ignore_value": ignore,
    }
    # Everything is checked: from here on files change. Foreign files in the way stop us first.
    tile_ids = {t.tile_id for t in tiles}
    samples_preview = build_samples(tiles, groups, read_variants(paths, tile_ids))
    plan = _plan_files(paths, samples_preview) if materialize else []
    check_outputs_free(paths, [rel for _, rel in plan], previous, overwrite)

    updates = {r["tile_id"]: {"split": ""} for r in records if (r.get("split") or "")}
    updates.update({t.tile_id: {"split": t.split} for t in tiles})
    dataset.update_index(paths.index, updates)
    manifest = write_outputs(paths, records_after(paths), tiles, groups, settings, overwrite=overwrite,
                             feedback=feedback.scaled(40, 100))
    summary = manifest["summary"]
    moved = [s for s in manifest["samples"].values() if s["variant"] and s["split"] in ("val", "test")]
    if moved:
        feedback.warn(
            f"{len(moved)} augmented variants are in val/test (they follow their source tiles, so nothing leaks). "
            "For evaluation on original tiles only, split first, then augment the train split (the default)."
        )
    feedback.progress(100)
    return SplitResult(
        counts={name: summary[name]["samples"] for name in SPLITS},
        tiles={name: summary[name]["tiles"] for name in SPLITS},
        summary=summary,
        summary_text=summary_text(summary),
        manifest=os.path.join(paths.root, SPLIT_MANIFEST),
        links=manifest["materialized_links"],
        copies=manifest["materialized_copies"],
    )


def records_after(paths) -> list:
    records, _ = dataset.read_index(paths.index)
    return records
