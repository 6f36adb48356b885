"""The split's outputs, shared by split.py (a new split) and augment.py (new variants join the
existing split): the list files, split.json, the materialised folders (``materialize.py``) and the
card's 'split' and 'counts' sections; the mask pixel counts behind the gully shares."""

import os

from osgeo import gdal

from . import dataset, gdalio, metrics
from .dataset import SPLIT_MANIFEST, SPLITS, ignore_value, read_json, read_variants, write_json
from .errors import GullySegError
from .feedback import Feedback
from .materialize import _plan_files, check_outputs_free, materialize, remove_owned

MANIFEST_FORMAT = "gullyseg-split/1"


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


def records_after(paths) -> list:
    records, _ = dataset.read_index(paths.index)
    return records
