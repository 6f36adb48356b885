"""Burn Labelme shapes and polygon layers into tile masks with GDAL (step 4), and export tiles
for Labelme (step 3).

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
import csv
import json
import math
import os
import shutil

import numpy as np
from osgeo import gdal, ogr, osr

from . import dataset, gdalio, labelme, safefiles, windows
from .errors import GullySegError
from .feedback import Feedback
from .labelme import ERROR, WARNING, Problem
from .stretch import percentile_limits

PIXEL_GT = (0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
BURN_FIELD = "burn"
REPORT_FIELDS = ["file", "tile_id", "shape_index", "severity", "problem"]
MAX_LOGGED_PROBLEMS = 200
_MASK_SIDES = [".tif.aux.xml", ".tif.msk"]  # the only side files a mask may get


def _pixel_srs():
    srs = osr.SpatialReference()
    srs.SetLocalCS("Labelme pixel coordinates")
    return srs


def burn_rule(all_touched):
    return ("all touched: every pixel a shape touches is burnt" if all_touched
            else "pixel centre: a pixel is burnt when its centre is inside the shape (gdal_rasterize default)")


# --- the burning itself ---------------------------------------------------------------------

class GeometryLayer:
    """An in-memory OGR layer of (geometry, burn value) in one CRS, burnt tile by tile.

    Features keep their order (later burn over earlier); a spatial filter picks those near a tile.
    """

    def __init__(self, crs_wkt=None):
        self._ds = ogr.GetDriverByName("Memory").CreateDataSource("gullyseg_burn")
        srs = None
        if crs_wkt:
            srs = osr.SpatialReference()
            srs.ImportFromWkt(crs_wkt)
            srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        else:
            srs = _pixel_srs()
        self.srs = srs
        self.layer = self._ds.CreateLayer("shapes", srs, ogr.wkbUnknown)
        self.layer.CreateField(ogr.FieldDefn(BURN_FIELD, ogr.OFTInteger))
        self._defn = self.layer.GetLayerDefn()
        self.count = 0

    def add(self, geometry, value):
        if isinstance(geometry, str):
            geometry = ogr.CreateGeometryFromWkt(geometry)
        if geometry is None or geometry.IsEmpty():
            return
        feat = ogr.Feature(self._defn)
        feat.SetGeometry(geometry)
        feat.SetField(BURN_FIELD, int(value))
        self.layer.CreateFeature(feat)
        self.count += 1

    def burn(self, ds, all_touched, bounds=None):
        """Burn into band 1 of ``ds`` (features within ``bounds`` if given, in layer order)."""
        if self.count == 0:
            return
        if bounds is not None:
            self.layer.SetSpatialFilterRect(*bounds)
        else:
            self.layer.SetSpatialFilter(None)
        options = [f"ATTRIBUTE={BURN_FIELD}"]
        if all_touched:
            options.append("ALL_TOUCHED=TRUE")
        gdal.RasterizeLayer(ds, [1], self.layer, options=options)
        self.layer.SetSpatialFilter(None)


def _mem_raster(width, height, geotransform, srs_wkt):
    ds = gdal.GetDriverByName("MEM").Create("", int(width), int(height), 1, gdal.GDT_Byte)
    ds.SetGeoTransform(tuple(geotransform))
    ds.SetProjection(srs_wkt)
    return ds


def burn_items(ds, items, all_touched):
    """Burn Labelme BurnItems (pixel space) into band 1 of ``ds`` in their order.

    ``ds``'s geotransform is switched to pixel space for the duration and restored.
    """
    if not items:
        return
    saved_gt, saved_wkt = ds.GetGeoTransform(), ds.GetProjection()
    ds.SetGeoTransform(PIXEL_GT)
    ds.SetProjection(_pixel_srs().ExportToWkt())
    width, height = ds.RasterXSize, ds.RasterYSize
    band = ds.GetRasterBand(1)
    run = GeometryLayer()
    for item in items:
        if item.geometry is not None:
            run.add(item.geometry, item.value)
            continue
        run.burn(ds, all_touched)  # everything before this mask shape, then the mask over it
        run = GeometryLayer()
        mask, x0, y0 = item.mask, item.x0, item.y0
        part = windows.intersection((x0, y0, mask.shape[1], mask.shape[0]), (0, 0, width, height))
        if part is not None:
            xa, ya, w, h = part
            arr = band.ReadAsArray(xa, ya, w, h)
            arr[mask[ya - y0:ya - y0 + h, xa - x0:xa - x0 + w]] = item.value
            band.WriteArray(arr, xa, ya)
    run.burn(ds, all_touched)
    ds.SetGeoTransform(saved_gt)
    ds.SetProjection(saved_wkt)


def rasterize_shapes(width, height, items, all_touched=False):
    """Labelme BurnItems -> uint8 array (height, width), background 0. For one image."""
    ds = _mem_raster(width, height, PIXEL_GT, _pixel_srs().ExportToWkt())
    burn_items(ds, items, all_touched)
    return ds.GetRasterBand(1).ReadAsArray()


def rasterize_labelme_file(path, classes, width=None, height=None, all_touched=False, line_width=10.0,
                           point_radius=5.0, unknown_labels="error"):
    """One Labelme file -> (uint8 label map, problems). Size from the file unless given."""
    problems = []
    doc = labelme.read_labelme(path, problems)
    if doc is None:
        raise GullySegError("; ".join(str(p) for p in problems))
    width = width or doc.width
    height = height or doc.height
    if not width or not height:
        raise GullySegError(f"'{path}': no imageWidth/imageHeight; give the size.")
    items, ok = labelme.shape_items(doc, width, height, classes, line_width, point_radius, problems,
                                    unknown_labels=unknown_labels)
    if not ok or any(p.severity == ERROR for p in problems):
        raise GullySegError("; ".join(str(p) for p in problems if p.severity == ERROR))
    return rasterize_shapes(width, height, items, all_touched), problems


# --- tiles ----------------------------------------------------------------------------------

class TileGrid:
    """A tile's grid: size, geotransform, CRS and (optionally) its image for nodata."""

    def __init__(self, tile_id, width, height, geotransform, crs_wkt, image=None, nodata_frac=0.0):
        self.tile_id = tile_id
        self.width = int(width)
        self.height = int(height)
        self.geotransform = tuple(geotransform)
        self.crs_wkt = crs_wkt
        self.image = image
        self.nodata_frac = nodata_frac or 0.0

    @property
    def bounds(self):
        return windows.bounds_of(self.geotransform, 0, 0, self.width, self.height)

    def to_pixel(self):
        """(x, y) map coordinates -> (col, row), computed as GDAL's rasterizer does."""
        inv = gdal.InvGeoTransform(self.geotransform)

        def _apply(x, y):
            return inv[0] + x * inv[1] + y * inv[2], inv[3] + x * inv[4] + y * inv[5]

        return _apply


def tile_grid(rec, paths, index_crs):
    """The grid of an index record: from its GeoTIFF (exact) when present, else from the index."""
    image = paths.abs(rec.get("image_tif") or "")
    if image and os.path.exists(image):
        try:
            ds = gdal.Open(image)
            gt = ds.GetGeoTransform(can_return_null=True)
            wkt = ds.GetProjection() or index_crs
            if gt:
                return TileGrid(rec["tile_id"], ds.RasterXSize, ds.RasterYSize, gt, wkt, image, rec.get("nodata_frac"))
        except RuntimeError:
            pass
    width, height = int(rec["width"]), int(rec["height"])
    if "bounds" not in rec:
        raise GullySegError(f"TILES: tile '{rec['tile_id']}' has no footprint and no GeoTIFF to take its grid from.")
    xmin, ymin, xmax, ymax = rec["bounds"]
    gt = (xmin, (xmax - xmin) / width, 0.0, ymax, 0.0, -(ymax - ymin) / height)
    jpg = paths.abs(rec.get("image_jpg") or "")
    return TileGrid(rec["tile_id"], width, height, gt, index_crs,
                    image if image and os.path.exists(image) else (jpg if jpg and os.path.exists(jpg) else None),
                    rec.get("nodata_frac"))


def _index_path_and_paths(index_path):
    if not index_path or not os.path.exists(str(index_path)):
        raise GullySegError(f"TILES: tile index '{index_path}' does not exist.")
    return str(index_path), dataset.DatasetPaths.from_index(index_path)


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


def write_report(path, problems):
    """Problems -> CSV (or JSON when ``path`` ends with .json), written atomically."""
    if not path:
        return None
    with gdalio.atomic_output(path, overwrite=True, what="OUTPUT_REPORT") as tmp:
        if str(path).lower().endswith(".json"):
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump([p.as_dict() for p in problems], handle, indent=2)
                handle.write("\n")
        else:
            with open(tmp, "w", encoding="utf-8", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=REPORT_FIELDS)
                writer.writeheader()
                for p in problems:
                    writer.writerow(p.as_dict())
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


def rasterize_labels(index_path, labelme_dir=None, vector=None, vector_crs=None, classes=None,
                     all_touched=False, line_width=10.0, point_radius=5.0, output_dir=None, strict=True,
                     unknown_labels="error", ignore_nodata=True, overwrite=False, report_path=None,
                     feedback=None):
    """Rasterise Labelme files and/or polygons into one mask per tile.

    index_path: the dataset's tile index. labelme_dir: folder of Labelme JSON (default
    <dataset>/labelme; a missing default folder is fine when ``vector`` is given).
    vector: optional iterable of ``(wkt, label_or_value)`` in the index CRS (``vector_crs`` is
    the WKT of their CRS when it is not the index's; the Processing algorithm reprojects them
    with QGIS first). A label (str) is looked up in ``classes``; an int is burnt as is.
    classes: a ClassMap (default ``gully=1``). unknown_labels: 'error' or 'skip'.
    strict: any ERROR stops the run before a mask is written; otherwise bad files are skipped.
    ignore_nodata: pixels where the tile's image has no data burn the ignore value.
    Returns a dict: mask_count, problem_count, error_count, skipped_files, problems, report,
    output_dir, masks {tile_id: path}.
    """
    feedback = feedback or Feedback()
    classes = classes or labelme.parse_classes("gully=1")
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

    # 2. Parse and check every Labelme file before anything is written ---------------------
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

    # 3. Polygons ------------------------------------------------------------------------
    layer = None
    if vector is not None:
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

    errors = [p for p in problems if p.severity == ERROR]
    warnings = [p for p in problems if p.severity == WARNING]
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

    # 4. Which tiles get a mask -------------------------------------------------------------
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
            ds = _mem_raster(grid.width, grid.height, grid.geotransform, grid.crs_wkt)
            if layer is not None:
                layer.burn(ds, all_touched, grid.bounds)
            json_path = None
            if tid in per_tile:
                json_path, items = per_tile[tid]
                burn_items(ds, items, all_touched)
            arr = ds.GetRasterBand(1).ReadAsArray()
            if ignore_nodata and grid.nodata_frac > 0 and grid.image and os.path.exists(grid.image):
                img = gdal.Open(grid.image)
                if (img.RasterXSize, img.RasterYSize) == (grid.width, grid.height):
                    valid = gdalio.valid_mask(img, 0, 0, grid.width, grid.height)
                    arr[~valid] = ignore
                    ds.GetRasterBand(1).WriteArray(arr)
                img = None
            labelled = int(np.count_nonzero(arr != ignore))
            frac = float(np.count_nonzero(np.isin(arr, fg_values))) / labelled if labelled else 0.0
            tmp = stack.enter_context(gdalio.atomic_output(masks[tid], overwrite=overwrite, what="OUTPUT_DIR",
                                                          side_suffixes=_MASK_SIDES))
            with gdalio.checked_write(masks[tid], "OUTPUT_DIR"):
                out = gdalio.create_raster(tmp, grid.width, grid.height, 1, gdal.GDT_Byte, grid.geotransform,
                                           grid.crs_wkt, nodata=ignore, options=gdalio.GTIFF_SMALL)
                out.GetRasterBand(1).WriteArray(arr)
                out.FlushCache()
                out = None
            ds = None
            values = {"gully_frac": round(frac, 6), "mask": _rel_or_abs(paths, masks[tid])}
            if json_path:
                values["labelme"] = _rel_or_abs(paths, json_path)
            updates[tid] = values

        dataset.update_index(index_path, updates)
    card_labels = {
        "classes": classes.as_dict(),
        "ignore_value": ignore,
        "background_value": 0,
        "all_touched": bool(all_touched),
        "burn_rule": burn_rule(all_touched),
        "burn_order": "VECTOR polygons in layer order, then Labelme shapes in file order; later over earlier",
        "line_width_px": float(line_width),
        "point_radius_px": float(point_radius),
        "nodata_is_ignore": bool(ignore_nodata),
        "masks": len(targets),
        "labelme_files": len(per_tile),
        "vector_features": layer.count if layer is not None else 0,
        "masks_dir": _rel_or_abs(paths, output_dir),
    }
    dataset.update_card(paths.root, labels=card_labels)
    report = write_report(report_path, problems)
    feedback.progress(100.0)
    feedback.info(f"{len(targets)} mask(s) written to {output_dir} ({burn_rule(all_touched)}); "
                  f"{len(errors)} error(s), {len(warnings)} warning(s).")
    return {
        "mask_count": len(targets),
        "problem_count": len(problems),
        "error_count": len(errors),
        "skipped_files": len(bad_files),
        "problems": problems,
        "report": report,
        "output_dir": output_dir,
        "masks": masks,
    }


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


def _rel_or_abs(paths, path):
    rel = paths.rel(path)
    return rel if not rel.startswith("..") else os.path.abspath(path).replace(os.sep, "/")


# --- exportlabelme ---------------------------------------------------------------------------

def _jpeg_bands(ds):
    n = ds.RasterCount
    if n >= 4:
        return [3, 2, 1]  # B, G, R, NIR scenes (PMS): true colour
    if n == 3:
        return [1, 2, 3]
    return [1]


def write_tile_jpeg(image_tif, path):
    """A JPEG for Labelme from a tile GeoTIFF (8-bit as is; other types stretched 2-98 %)."""
    src = gdal.Open(image_tif)
    bands = _jpeg_bands(src)
    scale = None
    if src.GetRasterBand(1).DataType != gdal.GDT_Byte:
        scale = []
        data = gdalio.read_window(src, 0, 0, src.RasterXSize, src.RasterYSize, bands)
        valid = gdalio.Validity(src, bands).mask(data, 0, 0, src.RasterXSize, src.RasterYSize)
        for band in data:
            values = band[valid]
            lo, hi = percentile_limits(values) if values.size else (0.0, 1.0)
            scale.append([lo, hi, 0, 255])
    opts = gdal.TranslateOptions(format="JPEG", bandList=bands, outputType=gdal.GDT_Byte,
                                 scaleParams=scale, creationOptions=["QUALITY=95", "WORLDFILE=NO"])
    with gdalio.checked_write(path, "OUTPUT_DIR"):
        out = gdal.Translate(path, src, options=opts)
        out.FlushCache()
        out = None
    src = None


def _place_jpeg(grid, rec, paths, out_dir, feedback):
    """The JPEG next to the JSON: a hard link to images/<id>.jpg (a copy if links fail), or a new one."""
    target = os.path.join(out_dir, f"{grid.tile_id}.jpg")
    if os.path.exists(target):
        return os.path.basename(target), False
    source = paths.abs(rec.get("image_jpg") or "")
    if not source or not os.path.exists(source):
        guess = os.path.join(paths.images, f"{grid.tile_id}.jpg")
        source = guess if os.path.exists(guess) else None
    if source:  # never link or copy a file from outside the dataset (a planted symlink) or a special file
        if not safefiles.is_inside(paths.root, source, real=True):
            raise GullySegError(f"TILES: the image '{source}' of tile '{grid.tile_id}' resolves outside the dataset "
                                f"folder '{paths.root}' (a link?); it is not exported.")
        safefiles.require_regular(source, "TILES")
    with gdalio.atomic_output(target, what="OUTPUT_DIR") as tmp:
        if source:
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
        else:
            tif = paths.abs(rec.get("image_tif") or "")
            if not tif or not os.path.exists(tif):
                raise GullySegError(f"TILES: tile '{grid.tile_id}' has neither a JPEG nor a GeoTIFF image.")
            write_tile_jpeg(tif, tmp)
            for side in (tmp + ".aux.xml",):
                if os.path.exists(side):
                    os.remove(side)
    return os.path.basename(target), True


def export_labelme(index_path, only_kept=True, prefill=None, label="gully", output_dir=None, feedback=None):
    """Write <dataset>/labelme/<tile_id>.json (+ its JPEG) for the tiles to annotate, and labels.txt.

    prefill: optional iterable of WKT polygons in the index CRS; clipped to each tile and written
    as Labelme polygons in pixel coordinates (holes as ``_background_`` polygons after their
    exterior). Existing JSON files are never overwritten (they are annotators' work): they are
    counted as skipped. Returns a dict: json_count, skipped_count, shape_count, jpeg_count,
    tile_count, output_dir, labels_file.
    """
    feedback = feedback or Feedback()
    label = (label or "").strip()
    if not label:
        raise GullySegError("LABEL: the class label must not be empty (e.g. 'gully').")
    if label in (labelme.IGNORE_LABEL, labelme.BACKGROUND_LABEL):
        raise GullySegError(f"LABEL: '{label}' is reserved by Labelme's conventions; use a class name like 'gully'.")
    index_path, paths = _index_path_and_paths(index_path)
    records, index_crs = dataset.read_index(index_path)
    tiles = dataset.tiles_for_work(records, only_kept=only_kept)
    if not tiles:
        raise GullySegError(f"TILES: the index '{index_path}' has no tiles.")
    out_dir = os.path.abspath(output_dir) if output_dir else paths.labelme
    labels_file = os.path.join(out_dir, "labels.txt")
    if os.path.lexists(labels_file):  # never write through a link that leaves the folder
        if not safefiles.is_inside(out_dir, labels_file, real=True):
            raise GullySegError(f"OUTPUT_DIR: '{labels_file}' is a link to '{os.path.realpath(labels_file)}', "
                                "outside the folder; GullySeg does not write through it. Remove the link.")
        safefiles.require_regular(labels_file, "OUTPUT_DIR")
    gdalio.make_folder(out_dir, "OUTPUT_DIR")
    layer = None
    if prefill is not None:
        prefill_ds = ogr.GetDriverByName("Memory").CreateDataSource("prefill")  # keeps the layer alive
        layer = prefill_ds.CreateLayer("p", None, ogr.wkbUnknown)
        count = 0
        for k, wkt in enumerate(prefill):
            if k % 1000 == 0:
                feedback.check_cancelled()
            geom = ogr.CreateGeometryFromWkt(wkt) if isinstance(wkt, str) else wkt
            if geom is None or geom.IsEmpty():
                continue
            if not geom.IsValid():
                geom = geom.MakeValid()
            feat = ogr.Feature(layer.GetLayerDefn())
            feat.SetGeometry(geom)
            layer.CreateFeature(feat)
            count += 1
        feedback.info(f"PREFILL: {count} polygon feature(s).")
    written = skipped = shapes_total = jpegs = 0
    updates = {}
    for k, rec in enumerate(tiles):
        feedback.check_cancelled()
        feedback.progress(100.0 * k / len(tiles))
        tid = rec["tile_id"]
        json_path = os.path.join(out_dir, f"{tid}.json")
        if os.path.exists(json_path):
            skipped += 1
            updates[tid] = {"labelme": _rel_or_abs(paths, json_path)}
            continue
        grid = tile_grid(rec, paths, index_crs)
        shapes = []
        if layer is not None:
            xmin, ymin, xmax, ymax = grid.bounds
            tile_poly = _box(grid.bounds)
            layer.SetSpatialFilterRect(xmin, ymin, xmax, ymax)
            parts = []
            for feat in layer:
                geom = feat.GetGeometryRef()
                clipped = geom.Intersection(tile_poly)
                if clipped is not None and not clipped.IsEmpty():
                    parts.append(clipped)
            layer.SetSpatialFilter(None)
            polygons = []
            for part in parts:
                labelme.collect_polygons(part, polygons)  # drops lines/points left by the clip
            if polygons:
                multi = ogr.Geometry(ogr.wkbMultiPolygon)
                for poly in polygons:
                    multi.AddGeometry(poly)
                # one label, so overlapping polygons merge; Labelme then draws disjoint parts
                union = multi.UnionCascaded() if len(polygons) > 1 else multi
                shapes = labelme.geometry_to_shapes(union, label, grid.to_pixel())
        image_name, new_jpeg = _place_jpeg(grid, rec, paths, out_dir, feedback)
        jpegs += int(new_jpeg)
        doc = labelme.labelme_document(shapes, image_name, grid.width, grid.height)
        with gdalio.atomic_output(json_path, what="OUTPUT_DIR") as tmp:
            labelme.write_labelme(tmp, doc)
        written += 1
        shapes_total += len(shapes)
        updates[tid] = {"labelme": _rel_or_abs(paths, json_path)}
    if not os.path.exists(labels_file):
        with gdalio.atomic_output(labels_file, what="OUTPUT_DIR") as tmp:
            labelme.write_labels_txt(tmp, [label])
    else:
        text = safefiles.read_bytes(labels_file, "OUTPUT_DIR", safefiles.MAX_TEXT_BYTES).decode("utf-8", "replace")
        names = [line.strip() for line in text.splitlines() if line.strip()]
        if label not in names:
            with gdalio.atomic_output(labels_file, overwrite=True, what="OUTPUT_DIR") as tmp:
                with open(tmp, "w", encoding="utf-8") as handle:
                    handle.write(text + ("" if not text or text.endswith("\n") else "\n") + label + "\n")
            feedback.info(f"Added '{label}' to the existing {labels_file}.")
    dataset.update_index(index_path, updates)
    dataset.update_card(paths.root, labelme={
        "folder": _rel_or_abs(paths, out_dir),
        "label": label,
        "labels_file": _rel_or_abs(paths, labels_file),
        "files": sum(1 for n in os.listdir(out_dir) if n.lower().endswith(".json")),
        "only_kept": bool(only_kept),
        "prefilled": prefill is not None,
        "coordinates": "Labelme pixel coordinates, pixel-corner based: (0, 0) is the tile's top-left corner",
    })
    if skipped:
        feedback.warn(f"{skipped} tile(s) already had a Labelme file; kept as they are (annotators' work).")
    feedback.progress(100.0)
    feedback.info(
        f"{written} Labelme file(s) written to {out_dir} ({shapes_total} prefilled shape(s)); {skipped} skipped. "
        f"Annotate with: labelme \"{out_dir}\" --labels \"{labels_file}\" --nodata --autosave"
    )
    return {
        "json_count": written,
        "skipped_count": skipped,
        "shape_count": shapes_total,
        "jpeg_count": jpegs,
        "tile_count": len(tiles),
        "output_dir": out_dir,
        "labels_file": labels_file,
    }
