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

from . import dataset
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
    remove_owned,
)
from .results import DictAccess
from .split_outputs import (  # noqa: F401 (importable from here as before)
    MANIFEST_FORMAT,
    build_samples,
    count_mask_pixels,
    counts_section,
    records_after,
    refresh_outputs,
    summarize,
    summary_text,
    write_outputs,
)

SPLITS = dataset.SPLITS  # ("train", "val", "test")
STRATEGY_TILE = 0
STRATEGY_BLOCK = 1
STRATEGY_NAMES = {STRATEGY_TILE: "source tile", STRATEGY_BLOCK: "spatial block"}
DEFAULT_IGNORE = dataset.MASK_IGNORE
_TILE_RE = re.compile(r"^(?P<scene>.*)_r\d+_c\d+$")


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
