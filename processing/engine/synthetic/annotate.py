"""Labelme files for a scene's tiles (as an annotator leaves them after step 3)."""

import os
from dataclasses import dataclass

from osgeo import ogr

from .. import dataset, gdalio, labelme, windows
from ..errors import GullySegError
from ..feedback import Feedback
from .params import GULLY_LABEL, GULLY_LAYER

LABELME_VERSION = labelme.LABELME_VERSION


@dataclass
class LabelmeResult:
    out_dir: str
    written: list  # paths of the JSON files written
    skipped_existing: int = 0
    shapes: int = 0


def write_labelme_for_tiles(scene_path, gullies_path, out_dir=None, tile_index=None, tile_size=256,
                            image_dir="../images", include_empty=True, label=GULLY_LABEL, simplify_px=0.6,
                            overwrite=False, feedback=None) -> LabelmeResult:
    """Write one Labelme JSON per tile of ``scene_path`` with its gully polygons.

    Tiles come from ``tile_index`` (the grid-division step's index.gpkg: tile_id, x_off, y_off,
    width, height, image_jpg) or, without it, from ``windows.iter_windows(width, height,
    tile_size)`` with ids ``dataset.tile_id(<scene stem>, row, col)``.

    out_dir: folder for the JSON files (default <dataset>/labelme next to the index; required
    without an index). Each file is <tile_id>.json; ``imagePath`` is the tile's JPEG relative
    to out_dir (from the index's image_jpg, else ``image_dir/<tile_id>.jpg``).
    Polygons are clipped to the tile, converted to tile pixel coordinates (pixel-corner based,
    0,0 = the tile's top-left corner), simplified by ``simplify_px`` like a hand-drawn outline,
    split where they have holes (Labelme polygons have none), and slivers under 2 px² dropped.
    include_empty: also write files with no shapes for tiles without gullies (negative samples),
    but never for tiles entirely outside the scene footprint. Existing JSON files are kept
    (an annotator's work) unless ``overwrite``.
    """

    feedback = feedback or Feedback()
    scene, info = gdalio.open_checked(scene_path, "INPUT")
    gt = info.geotransform
    if not gullies_path or not os.path.exists(str(gullies_path)):
        raise GullySegError(f"GULLIES: polygon file '{gullies_path}' does not exist.")
    vds = ogr.Open(str(gullies_path))
    layer = vds.GetLayerByName(GULLY_LAYER) or vds.GetLayer(0)
    if tile_index:
        records, _ = dataset.read_index(tile_index)
        paths = dataset.DatasetPaths.from_index(tile_index)
        out_dir = out_dir or paths.labelme
        tiles = []
        for rec in records:
            image = rec.get("image_jpg") or rec.get("image_tif") or f"{dataset.IMAGES_DIR}/{rec['tile_id']}.jpg"
            rel = os.path.relpath(paths.abs(image), os.path.abspath(out_dir)).replace(os.sep, "/")
            tiles.append((rec["tile_id"], rec["x_off"], rec["y_off"], rec["width"], rec["height"], rel))
    else:
        if not out_dir:
            raise GullySegError("OUTPUT_DIR: a folder for the Labelme files is needed when no tile index is given.")
        stem = os.path.splitext(os.path.basename(str(scene_path)))[0]
        tiles = []
        for win in windows.iter_windows(info.width, info.height, tile_size):
            tid = dataset.tile_id(stem, win.row, win.col)
            tiles.append((tid, win.x_off, win.y_off, win.width, win.height, f"{image_dir}/{tid}.jpg"))
    os.makedirs(out_dir, exist_ok=True)
    result = LabelmeResult(out_dir=os.path.abspath(out_dir), written=[])
    for n, (tid, x_off, y_off, w, h, image_path) in enumerate(tiles):
        feedback.check_cancelled()
        target = os.path.join(out_dir, f"{tid}.json")
        if os.path.exists(target) and not overwrite:
            result.skipped_existing += 1
            continue
        shapes = labelme.layer_shapes(layer, windows.geotransform_at(gt, x_off, y_off), w, h, label,
                                      simplify_px=simplify_px, min_area=2.0, decimals=2)
        if not shapes:
            part = windows.intersection((x_off, y_off, w, h), (0, 0, info.width, info.height))
            if not include_empty or part is None or not gdalio.valid_mask(scene, *part).any():
                continue
        doc = labelme.labelme_document(shapes, image_path, w, h)
        with gdalio.atomic_output(target, overwrite=overwrite, what="Labelme file") as tmp:
            labelme.write_labelme(tmp, doc)
        result.written.append(os.path.abspath(target))
        result.shapes += len(shapes)
        feedback.progress(100.0 * (n + 1) / len(tiles))
    layer = None
    vds = scene = None
    return result
