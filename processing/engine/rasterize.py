"""Burn Labelme shapes and polygon layers into tile masks with GDAL (step 4). The export of tiles
for Labelme (step 3) is in ``labelme_export.py`` (its names are importable from here too).

Masks are uint8, one band, with the tile's size, geotransform and CRS: 0 background, 1..254
classes, the ignore value (default 255, also the mask's nodata value) for ``__ignore__``.

Burn rule: GDAL's rasterizer, as ``gdal_rasterize``. With ``all_touched=False`` (default) a
pixel is burnt when its centre is inside the shape; with ``True`` every pixel the shape
touches is burnt. Shapes burn in order, later over earlier: first the VECTOR polygons (layer
order), then the Labelme shapes (file order, as Labelme itself does), so an annotator's
``_background_`` or ``__ignore__`` shape can correct a digitised polygon.

Labelme shapes are burnt in the tile's pixel space (geotransform ``(0, 1, 0, 0, 0, 1)``:
x right, y down, pixel-corner origin), polygons in map space on the tile's georeferenced
grid; both on the same array.
"""

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from osgeo import gdal, ogr, osr

from . import dataset, gdalio, labelme
from . import report as reports
from .burn import (  # noqa: F401 (importable from here as before)
    BURN_FIELD,
    PIXEL_GT,
    GeometryLayer,
    _mem_raster,
    burn_items,
    burn_rule,
    rasterize_labelme_file,
    rasterize_shapes,
)
from .dataset import TileGrid, tile_grid  # noqa: F401 (importable from here as before)
from .dataset import index_paths as _index_path_and_paths
from .dataset import rel_or_abs as _rel_or_abs
from .errors import GullySegError
from .feedback import Feedback
from .labelme import ERROR, WARNING, Problem
from .labelme_export import ExportResult, export_labelme, write_tile_jpeg  # noqa: F401 (as before)
from .results import DictAccess

REPORT_FIELDS = ["file", "tile_id", "shape_index", "severity", "problem"]
MAX_LOGGED_PROBLEMS = 200
_MASK_SIDES = [".tif.aux.xml", ".tif.msk"]  # the only side files a mask may get


@dataclass
class RasterizeResult(DictAccess):
    """What ``rasterize_labels`` did (also readable as a dict: ``result["mask_count"]``)."""

    mask_count: int  # masks written
    problem_count: int  # problems found (errors and warnings)
    error_count: int
    skipped_files: int  # Labelme files left out because of errors
    problems: list  # [labelme.Problem]
    report: Optional[str]  # the problem report (CSV) or None
    output_dir: str
    masks: dict  # {tile_id: mask path}


# --- rasterizelabels ------------------------------------------------------------------------

def _match_tile(doc_path, doc, tiles_by_id):
    stem = os.path.splitext(os.path.basename(doc_path))[0]
    if stem in tiles_by_id:
        return stem
    if doc is not None and doc.image_path:
        image_stem = os.path.splitext(os.path.basename(doc.image_path.replace("\\", "/")))[0]
        if image_stem in tiles_by_id:
            return image_stem
    return None


def write_report(path, problems) -> Optional[str]:
    """Problems -> CSV (or JSON when ``path`` ends with .json), written atomically."""
    if not path:
        return None
    if str(path).lower().endswith(".json"):
        reports.write_json(path, [p.as_dict() for p in problems])
    else:
        reports.write_csv(path, REPORT_FIELDS, [p.as_dict() for p in problems])
    return path


def _log_problems(problems, feedback):
    for p in problems[:MAX_LOGGED_PROBLEMS]:
        feedback.warn(str(p))
    if len(problems) > MAX_LOGGED_PROBLEMS:
        feedback.warn(f"... and {len(problems) - MAX_LOGGED_PROBLEMS} more problems (see the report).")


def _unknown_label_summary(problems):
    """'cloud' (a.json, b.json), 'Gully' (c.json) from unknown-label errors."""
    found = {}
    for p in problems:
        if p.severity == ERROR and "is not in the class map" in p.message:
            label = p.message.split("'")[1]
            found.setdefault(label, set()).add(os.path.basename(p.file))
    parts = []
    for label in sorted(found):
        files = sorted(found[label])
        more = f" and {len(files) - 5} more" if len(files) > 5 else ""
        parts.append(f"'{label}' ({', '.join(files[:5])}{more})")
    return parts


def _labelme_files(labelme_dir, paths, vector, records, feedback):
    """(folder, sorted .json paths) of the Labelme files to rasterise; an error when there is
    nothing to rasterise at all."""
    explicit_dir = bool(labelme_dir)
    labelme_dir = os.path.abspath(labelme_dir) if labelme_dir else paths.labelme
    json_files = []
    if os.path.isdir(labelme_dir):
        json_files = sorted(os.path.join(labelme_dir, n) for n in os.listdir(labelme_dir)
                            if n.lower().endswith(".json"))
    elif explicit_dir:
        raise GullySegError(f"LABELME_DIR: folder '{labelme_dir}' does not exist.")
    if not json_files and vector is None:
        raise GullySegError(
            f"LABELME_DIR: no Labelme .json files in '{labelme_dir}', and no VECTOR layer given: nothing to "
            "rasterise. Annotate the tiles exported by 'Export tiles for Labelme' first, or give a polygon layer."
        )
    feedback.info(f"{len(json_files)} Labelme file(s) in {labelme_dir}; {len(records)} tile(s) in the index.")
    return labelme_dir, json_files


def _parse_labelme_files(json_files, tiles_by_id, paths, index_crs, classes, line_width, point_radius,
                         unknown_labels, problems, feedback):
    """Read and check every Labelme file (before anything is written). Returns (per_tile
    {tile_id: (path, burn items)}, grids {tile_id: TileGrid}, bad_files); problems are appended."""
    per_tile = {}  # tile_id -> (json path, items)
    grids = {}
    bad_files = set()
    for k, path in enumerate(json_files):
        feedback.check_cancelled()
        feedback.progress(30.0 * k / max(1, len(json_files)))
        before = len(problems)
        doc = labelme.read_labelme(path, problems)
        if doc is None:
            bad_files.add(path)
            continue
        tid = _match_tile(path, doc, tiles_by_id)
        if tid is None:
            problems.append(Problem(path, "no tile in the index matches this file (neither its name nor its "
                                          f"imagePath '{doc.image_path}' is a tile id)"))
            bad_files.add(path)
            continue
        if tid in per_tile:
            problems.append(Problem(path, f"tile '{tid}' already has a Labelme file "
                                          f"({os.path.basename(per_tile[tid][0])}); this one is ignored", tile_id=tid))
            bad_files.add(path)
            continue
        grid = grids.get(tid) or tile_grid(tiles_by_id[tid], paths, index_crs)
        grids[tid] = grid
        if doc.width is None or doc.height is None:
            problems.append(Problem(path, f"no imageWidth/imageHeight; assuming the tile's {grid.width}x{grid.height}",
                                    WARNING, tile_id=tid))
        elif (doc.width, doc.height) != (grid.width, grid.height):
            problems.append(Problem(path, f"image size {doc.width}x{doc.height} differs from tile '{tid}' "
                                          f"({grid.width}x{grid.height}): the file belongs to another image",
                                    tile_id=tid))
            bad_files.add(path)
            continue
        items, ok = labelme.shape_items(doc, grid.width, grid.height, classes, line_width, point_radius,
                                        problems, tid, unknown_labels)
        for p in problems[before:]:
            p.tile_id = tid
        # a shape rejected while parsing (NaN points, no label, bad imageWidth ...) makes the file bad too
        if not ok or any(p.severity == ERROR for p in problems[before:]):
            bad_files.add(path)
            continue
        per_tile[tid] = (path, items)
    return per_tile, grids, bad_files


def _vector_layer(vector, vector_crs, index_crs, classes, unknown_labels, problems, feedback):
    """The VECTOR polygons as a GeometryLayer in the index CRS (None without VECTOR); problems
    are appended."""
    if vector is None:
        return None
    layer = GeometryLayer(index_crs)
    transform = _transform(vector_crs, index_crs)
    for k, (wkt, label) in enumerate(vector):
        if k % 1000 == 0:
            feedback.check_cancelled()
        if isinstance(label, str):
            if label not in classes:
                sev = WARNING if unknown_labels == "skip" else ERROR
                msg = f"label '{label}' is not in the class map (CLASSES)"
                problems.append(Problem("VECTOR", msg + ("; feature skipped" if sev == WARNING else ""), sev, k))
                continue
            value = classes.value(label)
        elif label is None:
            value = classes.first_class()[1]
        else:
            value = int(label)
            if not 0 <= value <= 255:
                problems.append(Problem("VECTOR", f"class value {value} is outside 0..255", ERROR, k))
                continue
        try:
            geom = ogr.CreateGeometryFromWkt(wkt) if isinstance(wkt, str) else wkt
        except RuntimeError as exc:
            problems.append(Problem("VECTOR", f"unreadable geometry: {exc}", ERROR, k))
            continue
        if geom is not None and transform is not None:
            geom = geom.Clone()
            geom.Transform(transform)
        layer.add(geom, value)
    feedback.info(f"{layer.count} polygon feature(s) from VECTOR.")
    return layer


def _burn_tile(grid, layer, items, all_touched, nodata_value=None):
    """A tile's mask array: VECTOR polygons, then its Labelme items; with ``nodata_value``, pixels
    where the tile's image has no data (``gdalio.Validity``) get that value."""
    ds = _mem_raster(grid.width, grid.height, grid.geotransform, grid.crs_wkt)
    if layer is not None:
        layer.burn(ds, all_touched, grid.bounds)
    if items is not None:
        burn_items(ds, items, all_touched)
    arr = ds.GetRasterBand(1).ReadAsArray()
    if nodata_value is not None and grid.nodata_frac > 0 and grid.image and os.path.exists(grid.image):
        img = gdal.Open(grid.image)
        if (img.RasterXSize, img.RasterYSize) == (grid.width, grid.height):
            arr[~gdalio.valid_mask(img, 0, 0, grid.width, grid.height)] = nodata_value
        img = None
    return arr


def _write_mask(path, arr, grid, ignore, overwrite, stack):
    """Write a mask under a hidden temporary name, renamed into place when ``stack`` closes
    (after the index update: a failed update leaves no orphan mask). GDAL's write errors raise."""
    tmp = stack.enter_context(gdalio.atomic_output(path, overwrite=overwrite, what="OUTPUT_DIR",
                                                   side_suffixes=_MASK_SIDES))
    with gdalio.checked_write(path, "OUTPUT_DIR"):
        out = gdalio.create_raster(tmp, grid.width, grid.height, 1, gdal.GDT_Byte, grid.geotransform,
                                   grid.crs_wkt, nodata=ignore, options=gdalio.GTIFF_SMALL)
        try:
            out.GetRasterBand(1).WriteArray(arr)
            out.FlushCache()
        finally:
            out = None  # closed inside checked_write, also after an error


def _stop_on_problems(problems, errors, bad_files, classes, strict, report_path, feedback):
    """Log the problems; with STRICT and any error, write the report and raise (nothing written)."""
    _log_problems(problems, feedback)
    unknown = _unknown_label_summary(problems)
    if unknown:
        feedback.warn("Labels not in the class map: " + "; ".join(unknown) +
                      f". Class map: {classes.as_dict()}. Add them to CLASSES or set UNKNOWN_LABELS=skip.")

    if errors and strict:
        report = write_report(report_path, problems)
        head = "; ".join(str(p) for p in errors[:5]) + (f"; ... {len(errors) - 5} more" if len(errors) > 5 else "")
        extra = (" Labels not in CLASSES: " + "; ".join(unknown) + ".") if unknown else ""
        where = f" Every problem is listed in '{report}'." if report else ""
        raise GullySegError(
            f"Labels: {len(errors)} problem(s) in {len({p.file for p in errors})} file(s); nothing was "
            f"written (STRICT=true).{extra} {head}.{where} Fix the files, or run with STRICT=false to skip them."
        )
    if errors:
        feedback.warn(f"{len(bad_files)} file(s) with errors skipped (STRICT=false).")


def _labels_card(classes, all_touched, line_width, point_radius, ignore_nodata, masks, labelme_files,
                 vector_features, masks_dir):
    """The dataset card's 'labels' section."""
    return {
        "classes": classes.as_dict(),
        "ignore_value": classes.ignore_value,
        "background_value": 0,
        "all_touched": bool(all_touched),
        "burn_rule": burn_rule(all_touched),
        "burn_order": "VECTOR polygons in layer order, then Labelme shapes in file order; later over earlier",
        "line_width_px": float(line_width),
        "point_radius_px": float(point_radius),
        "nodata_is_ignore": bool(ignore_nodata),
        "masks": masks,
        "labelme_files": labelme_files,
        "vector_features": vector_features,
        "masks_dir": masks_dir,
    }


def _mask_targets(per_tile, layer, records, output_dir, overwrite, bad_files, problems, report_path):
    """(sorted tile ids, {tile id: mask path}): the tiles with Labelme shapes, and every kept tile when
    polygons are given; refuses none, or existing masks without OVERWRITE."""
    targets = set(per_tile)
    if layer is not None:
        targets |= {r["tile_id"] for r in dataset.tiles_for_work(records, only_kept=True)}
    targets = sorted(targets)
    if not targets:
        write_report(report_path, problems)
        raise GullySegError(
            "LABELME_DIR: no tile has a usable Labelme file"
            + (f" ({len(bad_files)} file(s) had errors)" if bad_files else "") + "; no mask written."
        )
    masks = {tid: os.path.join(output_dir, f"{tid}.tif") for tid in targets}
    existing = [p for p in masks.values() if os.path.exists(p)]
    if existing and not overwrite:
        raise GullySegError(
            f"OUTPUT_DIR: {len(existing)} mask(s) already exist in '{output_dir}' (e.g. "
            f"{os.path.basename(existing[0])}); set OVERWRITE=true to replace them."
        )
    return targets, masks


def rasterize_labels(index_path: str, labelme_dir: Optional[str] = None, vector: Any = None,
                     vector_crs: Optional[str] = None, classes: Optional[labelme.ClassMap] = None,
                     all_touched: bool = False, line_width: float = 10.0, point_radius: float = 5.0,
                     output_dir: Optional[str] = None, strict: bool = True, unknown_labels: str = "error",
                     ignore_nodata: bool = True, overwrite: bool = False, report_path: Optional[str] = None,
                     feedback: Optional[Feedback] = None) -> RasterizeResult:
    """Rasterise Labelme files and/or polygons into one mask per tile.

    index_path: the dataset's tile index. labelme_dir: folder of Labelme JSON (default
    <dataset>/labelme; a missing default folder is fine when ``vector`` is given).
    vector: optional iterable of ``(wkt, label_or_value)`` in the index CRS (``vector_crs`` is
    the WKT of their CRS when it is not the index's; the Processing algorithm reprojects them
    with QGIS first). A label (str) is looked up in ``classes``; an int is burnt as is.
    classes: a ClassMap (default ``gully=1``). unknown_labels: 'error' or 'skip'.
    strict: any ERROR stops the run before a mask is written; otherwise bad files are skipped.
    ignore_nodata: pixels where the tile's image has no data burn the ignore value.
    Returns a ``RasterizeResult``.
    """
    feedback = feedback or Feedback()
    classes = classes or labelme.parse_class_map("gully=1")
    if unknown_labels not in ("error", "skip"):
        raise GullySegError(f"UNKNOWN_LABELS must be 'error' or 'skip' (got {unknown_labels!r}).")
    for name, value in (("LINE_WIDTH", line_width), ("POINT_RADIUS", point_radius)):
        if not (value >= 0 and math.isfinite(value)):
            raise GullySegError(f"{name} must be a number of pixels >= 0 (got {value}).")
    index_path, paths = _index_path_and_paths(index_path)
    records, index_crs = dataset.read_index(index_path)
    tiles_by_id = {r["tile_id"]: r for r in records}
    output_dir = os.path.abspath(output_dir) if output_dir else paths.masks
    problems = []

    # 1. Label sources ---------------------------------------------------------------------
    labelme_dir, json_files = _labelme_files(labelme_dir, paths, vector, records, feedback)

    # 2. Parse and check every Labelme file before anything is written ---------------------
    per_tile, grids, bad_files = _parse_labelme_files(json_files, tiles_by_id, paths, index_crs, classes, line_width,
                                                      point_radius, unknown_labels, problems, feedback)

    # 3. Polygons ------------------------------------------------------------------------
    layer = _vector_layer(vector, vector_crs, index_crs, classes, unknown_labels, problems, feedback)

    errors = [p for p in problems if p.severity == ERROR]
    warnings = [p for p in problems if p.severity == WARNING]
    _stop_on_problems(problems, errors, bad_files, classes, strict, report_path, feedback)

    # 4. Which tiles get a mask -------------------------------------------------------------
    targets, masks = _mask_targets(per_tile, layer, records, output_dir, overwrite, bad_files, problems,
                                   report_path)

    # 5. Burn and write ----------------------------------------------------------------------
    gdalio.make_folder(output_dir, "OUTPUT_DIR")
    gdalio.remove_stale_partials(output_dir)  # left by a killed run (kill -9)
    fg_values = np.array(classes.foreground_values() or [1], dtype=np.uint8)
    updates = {}
    ignore = classes.ignore_value
    # Masks stay under hidden temporary names until the index has been updated: a failed update
    # (read-only or locked index, full disk) removes them again, so no mask is orphaned.
    with contextlib.ExitStack() as stack:
        for k, tid in enumerate(targets):
            feedback.check_cancelled()
            feedback.progress(30.0 + 68.0 * k / len(targets))
            grid = grids.get(tid) or tile_grid(tiles_by_id[tid], paths, index_crs)
            json_path, items = per_tile.get(tid, (None, None))
            arr = _burn_tile(grid, layer, items, all_touched, ignore if ignore_nodata else None)
            labelled = int(np.count_nonzero(arr != ignore))
            frac = float(np.count_nonzero(np.isin(arr, fg_values))) / labelled if labelled else 0.0
            _write_mask(masks[tid], arr, grid, ignore, overwrite, stack)
            values = {"gully_frac": round(frac, 6), "mask": _rel_or_abs(paths, masks[tid])}
            if json_path:
                values["labelme"] = _rel_or_abs(paths, json_path)
            updates[tid] = values

        dataset.update_index(index_path, updates)
    card_labels = _labels_card(classes, all_touched, line_width, point_radius, ignore_nodata, len(targets),
                               len(per_tile), layer.count if layer is not None else 0,
                               _rel_or_abs(paths, output_dir))
    dataset.update_card(paths.root, labels=card_labels)
    report = write_report(report_path, problems)
    feedback.progress(100.0)
    feedback.info(f"{len(targets)} mask(s) written to {output_dir} ({burn_rule(all_touched)}); "
                  f"{len(errors)} error(s), {len(warnings)} warning(s).")
    return RasterizeResult(
        mask_count=len(targets),
        problem_count=len(problems),
        error_count=len(errors),
        skipped_files=len(bad_files),
        problems=problems,
        report=report,
        output_dir=output_dir,
        masks=masks,
    )


def _transform(src_wkt, dst_wkt):
    """OGR transformation from ``src_wkt`` to ``dst_wkt``, or None when they are the same CRS."""
    if not src_wkt or not dst_wkt:
        return None
    src, dst = osr.SpatialReference(), osr.SpatialReference()
    src.ImportFromWkt(src_wkt)
    dst.ImportFromWkt(dst_wkt)
    if src.IsSame(dst):
        return None
    for srs in (src, dst):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return osr.CoordinateTransformation(src, dst)


def _box(bounds):
    xmin, ymin, xmax, ymax = bounds
    return gdalio.ring_polygon([(xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax)])
