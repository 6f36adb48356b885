"""Export tiles for annotation in Labelme (step 3): one Labelme JSON per tile (optionally prefilled
with polygons), its JPEG beside it, and labels.txt."""

import os
import shutil
from dataclasses import dataclass
from typing import Iterable, Optional

from osgeo import gdal, ogr

from . import dataset, gdalio, labelme, safefiles
from .dataset import index_paths as _index_path_and_paths
from .dataset import rel_or_abs as _rel_or_abs
from .dataset import tile_grid
from .errors import GullySegError
from .feedback import Feedback
from .results import DictAccess
from .stretch import percentile_limits


@dataclass
class ExportResult(DictAccess):
    """What ``export_labelme`` did (also readable as a dict)."""

    json_count: int  # Labelme files written
    skipped_count: int  # existing files kept
    shape_count: int
    jpeg_count: int  # JPEGs made (the others are links to images/)
    tile_count: int
    output_dir: str
    labels_file: str


def _jpeg_bands(ds):
    n = ds.RasterCount
    if n >= 4:
        return [3, 2, 1]  # B, G, R, NIR scenes (PMS): true colour
    if n == 3:
        return [1, 2, 3]
    return [1]


def write_tile_jpeg(image_tif, path) -> None:
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


def _prefill_layer(prefill, feedback):
    """(datasource, layer): PREFILL's polygons (WKT or ogr geometries, made valid) in a memory layer."""
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
    return prefill_ds, layer


def _write_labels_file(labels_file, label, feedback):
    """labels.txt with ``label``: a new file, or ``label`` appended to an existing one that lacks it."""
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


def export_labelme(index_path: str, only_kept: bool = True, prefill: Optional[Iterable] = None, label: str = "gully",
                   output_dir: Optional[str] = None, feedback: Optional[Feedback] = None) -> ExportResult:
    """Write <dataset>/labelme/<tile_id>.json (+ its JPEG) for the tiles to annotate, and labels.txt.

    prefill: optional iterable of WKT polygons in the index CRS; clipped to each tile and written
    as Labelme polygons in pixel coordinates (holes as ``_background_`` polygons after their
    exterior). Existing JSON files are never overwritten (they are annotators' work): they are
    counted as skipped. Returns an ``ExportResult``.
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
    prefill_ds, layer = _prefill_layer(prefill, feedback) if prefill is not None else (None, None)
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
            shapes = labelme.layer_shapes(layer, grid.geotransform, grid.width, grid.height, label)
        image_name, new_jpeg = _place_jpeg(grid, rec, paths, out_dir, feedback)
        jpegs += int(new_jpeg)
        doc = labelme.labelme_document(shapes, image_name, grid.width, grid.height)
        with gdalio.atomic_output(json_path, what="OUTPUT_DIR") as tmp:
            labelme.write_labelme(tmp, doc)
        written += 1
        shapes_total += len(shapes)
        updates[tid] = {"labelme": _rel_or_abs(paths, json_path)}
    _write_labels_file(labels_file, label, feedback)
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
    return ExportResult(
        json_count=written,
        skipped_count=skipped,
        shape_count=shapes_total,
        jpeg_count=jpegs,
        tile_count=len(tiles),
        output_dir=out_dir,
        labels_file=labels_file,
    )
