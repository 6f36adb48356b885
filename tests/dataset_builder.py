"""Build small dataset folders for the split/augment tests from a synthetic scene.

The images come from GullySeg's grid step (tiling.grid_tiles); the masks are cut from the
scene's ground-truth mask (<name>_mask.tif) with GDAL's own translate (``-srcwin``), as the
label step would place them: masks/<tile_id>.tif, recorded in the index's ``mask`` field.
Tests ``import dataset_builder`` (conftest puts tests/ on sys.path).
"""

import os

from osgeo import gdal

from gullyseg.processing.engine import dataset, tiling


def mask_path_of(scene):
    return str(scene).replace(".tif", "_mask.tif")


def build_dataset(root, scene, tile_size=64, fmt=tiling.FORMAT_BOTH, masks=True, keep=None, write_mask_field=True):
    """Dataset folder ``root`` from ``scene``; returns the index records.

    keep: optional set of tile ids to mark 'keep' (the others 'reject').
    """
    tiling.grid_tiles(str(scene), str(root), tile_size=tile_size, fmt=fmt)
    index = os.path.join(str(root), dataset.INDEX_NAME)
    records, _ = dataset.read_index(index)
    updates = {}
    if masks:
        os.makedirs(os.path.join(str(root), dataset.MASKS_DIR), exist_ok=True)
        for rec in records:
            tid = rec["tile_id"]
            gdal.Translate(
                os.path.join(str(root), dataset.MASKS_DIR, f"{tid}.tif"), mask_path_of(scene),
                srcWin=[rec["x_off"], rec["y_off"], rec["width"], rec["height"]], creationOptions=["COMPRESS=DEFLATE"],
            )
            if write_mask_field:
                updates.setdefault(tid, {})["mask"] = f"masks/{tid}.tif"
    if keep is not None:
        for rec in records:
            updates.setdefault(rec["tile_id"], {})["status"] = "keep" if rec["tile_id"] in keep else "reject"
    dataset.update_index(index, updates)
    return dataset.read_index(index)[0]
