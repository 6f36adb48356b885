"""Step 1 of the workflow: cut a scene into a regular grid of georeferenced tiles.

``grid_tiles`` creates (or refreshes) a dataset folder (see ``dataset.py``):

    <dataset>/index.gpkg            one polygon per written tile (footprint in the scene CRS)
    <dataset>/images/<id>.tif       exact copies of the scene's pixels (= gdal_translate -srcwin)
    <dataset>/images/<id>.jpg       8-bit RGB (or grey) quick-looks, stretched once for the whole
                                    scene, with <id>.jgw and <id>.jpg.aux.xml (CRS)
    <dataset>/dataset.json, .md     the dataset card (sections 'source', 'tiling', 'counts')

Streaming: the scene is read one strip of tile rows at a time (the full width of the grid row,
or the part the AOI needs), every tile of that grid row is cut from the strip, and GDAL's block
cache for the scene is released after each strip, so memory does not grow with the scene.

Every file goes through ``gdalio.atomic_output``; if the run fails or is cancelled, the tiles it
has written are removed again and no index is written, so nothing points at a missing file.
"""

import os
import re
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from osgeo import gdal, ogr

from . import dataset, gdalio, windows
from . import stretch as _stretch
from .errors import Cancelled, GullySegError
from .feedback import Feedback
from .stretch import STRETCH_PERCENTILES, stretch_to_byte  # noqa: F401 (re-exported)
from .tile_writers import (  # noqa: F401 (JPEG_QUALITY, TILE_GTIFF_OPTIONS importable from here as before)
    _JPG_SIDES,
    _TIF_SIDES,
    JPEG_QUALITY,
    TILE_GTIFF_OPTIONS,
    _check_output,
    _drop_staging,
    _owned_files,
    _remove,
    _remove_earlier_run,
    _remove_leftovers,
    _staging,
    _swap_in,
    _TileWriter,
    _to_byte,
    _undo,
    _write_gtiff,
    _write_jpeg,
)

FORMAT_GTIFF = 0
FORMAT_JPEG = 1
FORMAT_BOTH = 2
FORMAT_NAMES = {FORMAT_GTIFF: ["tif"], FORMAT_JPEG: ["jpg"], FORMAT_BOTH: ["tif", "jpg"]}

DEFAULT_TILE_SIZE = 256
MAX_TILE_SIZE = 8192  # a tile (all bands, padding, its JPEG) is held in memory whole
DEFAULT_MAX_NODATA = 0.999
STRETCH_FULL_READ_PIXELS = _stretch.STRETCH_FULL_READ_PIXELS  # scenes up to this size are read whole
# Value that fills padding (EDGE=pad) in bands that have no nodata value; the padding is also
# declared invalid by an internal mask band on those tiles (GDAL's per-dataset mask).
DEFAULT_PAD_VALUE = 0




@dataclass
class TilingResult:
    output_dir: str
    index_path: str
    tile_count: int
    skipped_count: int
    skipped_nodata: int = 0
    skipped_aoi: int = 0
    grid_rows: int = 0
    grid_cols: int = 0
    records: list = field(default_factory=list)
    stretch: dict = field(default_factory=dict)


def scene_name_from_path(path) -> str:
    """The scene part of tile ids: the file's stem with anything but [A-Za-z0-9_-] replaced by '_'."""
    stem = os.path.splitext(os.path.basename(str(path).rstrip("/")))[0]
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")
    return name or "scene"


def parse_band_list(text, band_count, what="JPEG_BANDS") -> Optional[list]:
    """'3,2,1' -> [3, 2, 1]; '' or None -> None. One or three bands, each within 1..band_count."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, str):
        parts = [p for p in re.split(r"[\s,;]+", text.strip()) if p]
        try:
            bands = [int(p) for p in parts]
        except ValueError:
            raise GullySegError(f"{what}: '{text}' is not a list of band numbers such as '3,2,1'.") from None
    else:
        bands = [int(b) for b in text]
    if len(bands) not in (1, 3):
        raise GullySegError(f"{what}: give three bands (R,G,B) or one (grey), not {len(bands)} ({text}).")
    bad = [b for b in bands if b < 1 or b > band_count]
    if bad:
        raise GullySegError(f"{what}: band(s) {bad} do not exist; the scene has {band_count} band(s).")
    return bands


def default_jpeg_bands(ds) -> list:
    """Red, green, blue by colour interpretation; else 3,2,1 for 4 bands (BGRN); else 1,2,3; else 1."""
    count = ds.RasterCount
    interp = {ds.GetRasterBand(i).GetColorInterpretation(): i for i in range(count, 0, -1)}
    rgb = [interp.get(c) for c in (gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand)]
    if all(rgb):
        return rgb
    if count == 4:
        return [3, 2, 1]
    if count >= 3:
        return [1, 2, 3]
    return [1]


# --- nodata ----------------------------------------------------------------------------

class _Validity(gdalio.Validity):
    """The scene's validity (``gdalio.Validity`` over all bands); kept for the name's callers."""

    def __init__(self, ds, info=None):
        super().__init__(ds)


# --- the stretch for JPEG tiles (engine/stretch.py) ----------------------------------------

def compute_stretch(ds, bands, validity, percentiles=STRETCH_PERCENTILES, max_samples=2_000_000,
                    feedback=None) -> dict:
    """``stretch.compute_stretch`` with this module's ``STRETCH_FULL_READ_PIXELS``."""
    return _stretch.compute_stretch(ds, bands, validity, percentiles, max_samples, feedback,
                                    full_read_pixels=STRETCH_FULL_READ_PIXELS)


# --- AOI ----------------------------------------------------------------------------------

def _aoi_geometry(aoi, crs_wkt):
    """A single OGR geometry (scene CRS) from WKT strings / OGR geometries, or None."""
    if aoi is None:
        return None
    items = [aoi] if isinstance(aoi, (str, ogr.Geometry)) else list(aoi)
    union = ogr.Geometry(ogr.wkbMultiPolygon)
    for n, item in enumerate(items):
        geom = item.Clone() if isinstance(item, ogr.Geometry) else ogr.CreateGeometryFromWkt(str(item))
        if geom is None or geom.IsEmpty():
            continue
        if geom.GetDimension() < 2:
            raise GullySegError(f"AOI: feature {n + 1} is not a polygon ({geom.GetGeometryName()}).")
        if not geom.IsValid():
            geom = geom.Buffer(0)
        flat = geom.Clone()
        flat.FlattenTo2D()
        if flat.GetGeometryType() == ogr.wkbPolygon:
            union.AddGeometry(flat)
        else:
            for i in range(flat.GetGeometryCount()):
                part = flat.GetGeometryRef(i)
                if part.GetGeometryType() == ogr.wkbPolygon:
                    union.AddGeometry(part)
    if union.IsEmpty():
        raise GullySegError("AOI: the layer has no polygon (all features empty); give polygons or no AOI.")
    union = union.UnionCascaded() if union.GetGeometryCount() > 1 else union
    return union


def _inside_aoi(aoi, bounds):
    poly = dataset.tile_polygon(bounds)
    return aoi.Intersects(poly) and not aoi.Touches(poly)


# --- the main entry point -----------------------------------------------------------------

def _check_parameters(input_path, info, tile_size, stride, edge, max_nodata, fmt):
    """Validated (tile_size, stride, max_nodata, formats), or a GullySegError naming the parameter."""
    try:
        tile_size = int(tile_size)
        stride = int(stride or 0)
    except (TypeError, ValueError):
        raise GullySegError(f"TILE_SIZE/STRIDE must be whole numbers (got {tile_size!r}, {stride!r}).") from None
    if not 1 <= tile_size <= MAX_TILE_SIZE:
        raise GullySegError(f"TILE_SIZE must be between 1 and {MAX_TILE_SIZE} pixels (got {tile_size}); tiles are "
                            "held in memory whole, and training tiles are usually 256 to 1024 pixels.")
    if stride < 0:
        raise GullySegError(f"STRIDE must be 0 (= TILE_SIZE) or a positive number of pixels (got {stride}).")
    if stride > tile_size:
        raise GullySegError(
            f"STRIDE {stride} is larger than TILE_SIZE {tile_size}: the pixels between tiles would be lost. "
            "Use STRIDE <= TILE_SIZE (0 means equal to TILE_SIZE)."
        )
    stride = stride or tile_size
    if edge not in windows.EDGE_NAMES:
        raise GullySegError(f"EDGE must be 0 (pad), 1 (skip) or 2 (shift), not {edge}.")
    if edge != windows.EDGE_PAD and (tile_size > info.width or tile_size > info.height):
        raise GullySegError(
            f"TILE_SIZE {tile_size} is larger than the scene '{input_path}' ({info.width}x{info.height} "
            f"pixels): with EDGE={windows.EDGE_NAMES[edge]} no tile fits. Use a smaller TILE_SIZE, or "
            "EDGE=pad for a single padded tile."
        )
    try:
        max_nodata = float(max_nodata)
    except (TypeError, ValueError):
        raise GullySegError(f"MAX_NODATA must be a number between 0 and 1 (got {max_nodata!r}).") from None
    if not 0.0 <= max_nodata <= 1.0:
        raise GullySegError(f"MAX_NODATA must be between 0 and 1 (got {max_nodata}).")
    if fmt not in FORMAT_NAMES:
        raise GullySegError(f"FORMAT must be 0 (GeoTIFF), 1 (JPEG) or 2 (both), not {fmt}.")
    return tile_size, stride, max_nodata, FORMAT_NAMES[fmt]


@dataclass
class _CutSettings:
    """What every tile of a run shares (the scene, the grid, the formats, the files)."""

    ds: object
    info: object
    paths: object
    scene: str
    tile_size: int
    max_nodata: float
    formats: list
    bands_rgb: list
    stretch: dict
    validity: object
    pad: list
    mask_tiles: bool
    overwrite: bool
    images_dir: str = ""  # where the tiles are written (a staging folder under OVERWRITE); '' = paths.images


def _cut_rows(cut, by_row, writer, records, written, feedback, progress):
    """Read one strip per grid row and cut (and queue for writing) its tiles. Returns the number
    of tiles skipped for MAX_NODATA; ``records`` and ``written`` grow as tiles are queued."""
    ds, info, paths, tile_size, max_nodata = cut.ds, cut.info, cut.paths, cut.tile_size, cut.max_nodata
    formats, bands_rgb, stretch, validity, pad = cut.formats, cut.bands_rgb, cut.stretch, cut.validity, cut.pad
    mask_tiles, overwrite, scene, gt = cut.mask_tiles, cut.overwrite, cut.scene, info.geotransform
    tile_nodata = list(info.nodata)
    tile_pixels = float(tile_size * tile_size)
    skipped_nodata = 0
    block_h = max(1, ds.GetRasterBand(1).GetBlockSize()[1])
    grid_rows = sorted(by_row)
    strips_cached = 0
    for n, row in enumerate(grid_rows):
        wins = by_row[row]
        feedback.check_cancelled()
        y0 = wins[0].y_off
        sx0 = min(w.x_off for w in wins)
        sx1 = min(max(w.x_end for w in wins), info.width)
        sy1 = min(y0 + tile_size, info.height)
        strip = gdalio.read_window(ds, sx0, y0, sx1 - sx0, sy1 - y0)
        strip_valid = validity.valid(strip, sx0, y0, sx1 - sx0, sy1 - y0)
        # Release the scene's cached blocks so memory stays flat, unless the next strip needs
        # some of them again (tall blocks, overlapping strides): then after two strips at most.
        strips_cached += 1
        nxt = by_row[grid_rows[n + 1]][0].y_off if n + 1 < len(grid_rows) else None
        if nxt is None or nxt // block_h > (sy1 - 1) // block_h or strips_cached >= 2:
            ds.FlushCache()
            strips_cached = 0
        for win in wins:
            feedback.check_cancelled()
            part = win.clip(info.width, info.height)
            xa, ya, w, h = part
            cols_slice = slice(xa - sx0, xa - sx0 + w)
            inner = win.inner_slices(info.width, info.height)
            if strip_valid is None:
                n_valid = w * h
            else:
                valid_part = strip_valid[:, cols_slice]
                n_valid = int(np.count_nonzero(valid_part))
            nodata_frac = 1.0 - n_valid / tile_pixels
            if nodata_frac > max_nodata:
                skipped_nodata += 1
                continue
            padded = w != tile_size or h != tile_size
            if padded:
                arr = np.empty((info.bands, tile_size, tile_size), dtype=strip.dtype)
                for b in range(info.bands):
                    arr[b].fill(pad[b])
                arr[(slice(None),) + inner] = strip[:, :, cols_slice]
            else:
                arr = strip[:, :, cols_slice]
            valid = None
            if strip_valid is not None or padded:
                valid = np.zeros((tile_size, tile_size), dtype=bool)
                valid[inner] = True if strip_valid is None else strip_valid[:, cols_slice]
            tid = dataset.tile_id(scene, win.row, win.col)
            tile_gt = win.geotransform(gt)
            rec = {
                "tile_id": tid, "row": win.row, "col": win.col, "x_off": win.x_off, "y_off": win.y_off,
                "width": tile_size, "height": tile_size, "nodata_frac": round(nodata_frac, 6),
                "status": dataset.STATUS_UNSCREENED, "split": "", "image_tif": "", "image_jpg": "",
                "bounds": win.bounds(gt),
            }
            if "tif" in formats:
                path = os.path.join(cut.images_dir or paths.images, tid + ".tif")
                mask = valid if (mask_tiles and valid is not None and not valid.all()) else None
                written.append(path)
                writer.submit(_write_gtiff, path, arr, info.gdal_type, tile_gt, info.crs_wkt, tile_nodata,
                              mask, overwrite)
                rec["image_tif"] = paths.rel(os.path.join(paths.images, tid + ".tif"))
            if "jpg" in formats:
                path = os.path.join(cut.images_dir or paths.images, tid + ".jpg")
                written.append(path)
                writer.submit(_write_jpeg, path, _to_byte(arr, bands_rgb, stretch, valid), tile_gt,
                              info.crs_wkt, overwrite)
                rec["image_jpg"] = paths.rel(os.path.join(paths.images, tid + ".jpg"))
            records.append(rec)
        progress.progress(100.0 * (n + 1) / len(by_row))
    return skipped_nodata


def _plan_grid(info, tile_size, stride, edge, aoi_geom, feedback):
    """The grid's windows, its shape, the wanted windows by grid row, and the count outside the AOI."""
    gt = info.geotransform
    grid = list(windows.iter_windows(info.width, info.height, tile_size, stride, edge))
    rows, cols = windows.grid_shape(info.width, info.height, tile_size, stride, edge)
    wanted, skipped_aoi = [], 0
    for win in grid:
        if aoi_geom is not None and not _inside_aoi(aoi_geom, win.bounds(gt)):
            skipped_aoi += 1
            continue
        wanted.append(win)
    by_row = {}
    for win in wanted:
        by_row.setdefault(win.row, []).append(win)
    feedback.info(
        f"Grid: {rows} rows x {cols} columns of {tile_size}x{tile_size} px tiles, stride {stride}, "
        f"EDGE={windows.EDGE_NAMES[edge]}; {len(wanted)} tiles to cut"
        + (f" ({skipped_aoi} outside the AOI)" if aoi_geom is not None else "")
    )
    return grid, rows, cols, by_row, skipped_aoi


def _write_card(root, index_path, input_path, scene, info, stretch, tiling):
    """The dataset card's 'source', 'tiling' and 'counts' sections after a run."""
    card_stretch = dict(stretch)
    card_stretch.pop("sampled_pixels", None)
    tiling = dict(tiling, stretch=card_stretch or None, index=dataset.DatasetPaths(root).rel(index_path))
    dataset.update_card(
        root,
        source={
            "scene": os.path.abspath(str(input_path)) if os.path.exists(str(input_path)) else str(input_path),
            "scene_name": scene,
            "crs": info.crs_label,
            "crs_wkt": info.crs_wkt,
            "width": info.width,
            "height": info.height,
            "bands": info.bands,
            "data_type": gdal.GetDataTypeName(info.gdal_type),
            "nodata": info.nodata,
            "pixel_size": list(info.pixel_size),
            "geotransform": list(info.geotransform),
        },
        tiling=tiling,
        counts={"tiles": tiling["tile_count"], dataset.STATUS_UNSCREENED: tiling["tile_count"],
                dataset.STATUS_KEEP: 0, dataset.STATUS_REJECT: 0},
    )


def _jpeg_stretch(ds, formats, bands_rgb, validity, progress, feedback):
    """The scene-wide stretch of the JPEG tiles ({} without JPEGs), logged."""
    if "jpg" not in formats:
        return {}
    stretch = compute_stretch(ds, bands_rgb, validity, feedback=progress)
    if stretch["method"] != "none":
        feedback.info(
            "JPEG stretch (whole scene, percentiles {}-{}): ".format(*STRETCH_PERCENTILES)
            + ", ".join(f"band {b}: {lo:g}..{hi:g}" for b, lo, hi in zip(bands_rgb, stretch["low"], stretch["high"]))
        )
    return stretch


def _warn_web_mercator(input_path, info, feedback):
    srs = info.srs
    if srs.GetAuthorityCode(None) in ("3857", "900913") or "Pseudo-Mercator" in (srs.GetName() or ""):
        feedback.warn(
            f"INPUT: '{input_path}' is in Web Mercator ({info.crs_label}); its 'metres' are stretched by "
            "1/cos(latitude), so pixel sizes and areas are not ground distances. Tiling works, but "
            "consider a UTM CRS for real work."
        )


def _output_paths(output_dir, output_index):
    """(dataset folder, its DatasetPaths, index path): OUTPUT_DIR and OUTPUT_INDEX checked."""
    root = os.path.abspath(str(output_dir)) if output_dir else None
    if not root:
        raise GullySegError("OUTPUT_DIR: no dataset folder given.")
    paths = dataset.DatasetPaths(root)
    index_path = os.path.abspath(str(output_index)) if output_index else paths.index
    if not index_path.lower().endswith(".gpkg"):
        raise GullySegError(f"OUTPUT_INDEX: '{index_path}' must be a GeoPackage (.gpkg).")
    return root, paths, index_path


def grid_tiles(input_path, output_dir, tile_size=DEFAULT_TILE_SIZE, stride=0, edge=windows.EDGE_PAD,
               max_nodata=DEFAULT_MAX_NODATA, aoi=None, fmt=FORMAT_BOTH, jpeg_bands=None,
               output_index=None, overwrite=False, feedback=None, scene_name=None) -> TilingResult:
    """Split ``input_path`` into tiles in the dataset folder ``output_dir``. Returns a TilingResult.

    tile_size: pixels (square). stride: pixels between tile origins; 0 = tile_size (no overlap).
    edge: windows.EDGE_PAD (0), EDGE_SKIP (1) or EDGE_SHIFT (2).
    max_nodata: tiles whose nodata fraction (nodata values, mask band, padding) exceeds it are
        not written. aoi: WKT string(s) or OGR geometries in the scene CRS; only tiles that
        intersect it are written. fmt: FORMAT_GTIFF, FORMAT_JPEG or FORMAT_BOTH.
    jpeg_bands: '3,2,1' / [3, 2, 1] / None (default_jpeg_bands). output_index: default
        <output_dir>/index.gpkg. overwrite: replace the files of an earlier run (only those).
    """
    feedback = feedback or Feedback()
    ds, info = gdalio.open_checked(input_path, "INPUT")
    _warn_web_mercator(input_path, info, feedback)

    tile_size, stride, max_nodata, formats = _check_parameters(input_path, info, tile_size, stride, edge,
                                                               max_nodata, fmt)
    bands_rgb = parse_band_list(jpeg_bands, info.bands) or default_jpeg_bands(ds)
    aoi_geom = _aoi_geometry(aoi, info.crs_wkt)
    gt = info.geotransform
    scene_bounds = windows.bounds_of(gt, 0, 0, info.width, info.height)
    if aoi_geom is not None and not aoi_geom.Intersects(dataset.tile_polygon(scene_bounds)):
        raise GullySegError(
            f"AOI: the area of interest does not overlap the scene '{input_path}' (after reprojection to "
            f"{info.crs_label}); no tile would be written."
        )

    root, paths, index_path = _output_paths(output_dir, output_index)
    _remove_leftovers(root, feedback)  # of a killed run (kill -9)
    _check_output(root, index_path, overwrite, input_path)
    created = [d for d in (root, paths.images) if not os.path.exists(d)]
    # OVERWRITE: the new tiles and index are built beside the old ones and swapped in on success
    staging, write_index_path = _staging(root, index_path, overwrite)
    images_dir = os.path.join(staging, dataset.IMAGES_DIR) if staging else paths.images
    scene = scene_name or scene_name_from_path(input_path)

    grid, rows, cols, by_row, skipped_aoi = _plan_grid(info, tile_size, stride, edge, aoi_geom, feedback)

    validity = _Validity(ds, info)
    pad = validity.pad_values(DEFAULT_PAD_VALUE)
    mask_tiles = not validity.has_nodata_value and not validity.alpha

    share_stretch = 10.0 if "jpg" in formats and info.dtype != np.uint8 else 0.0
    stretch = _jpeg_stretch(ds, formats, bands_rgb, validity, feedback.scaled(0, share_stretch), feedback)
    feedback.check_cancelled()

    gdalio.make_folder(images_dir, "OUTPUT_DIR")

    # cut --------------------------------------------------------------------------------
    progress = feedback.scaled(share_stretch, 99.0)
    records, written = [], []
    writer = _TileWriter()
    try:
        cut = _CutSettings(ds, info, paths, scene, tile_size, max_nodata, formats, bands_rgb, stretch, validity,
                           pad, mask_tiles, overwrite, images_dir)
        skipped_nodata = _cut_rows(cut, by_row, writer, records, written, feedback, progress)
        writer.finish()
        feedback.check_cancelled()
        if not records:
            feedback.warn("No tile was written: every tile exceeded MAX_NODATA or lay outside the AOI.")
        dataset.write_index(write_index_path, info.crs_wkt, records, overwrite=True)
        if staging:
            feedback.check_cancelled()
            _swap_in(root, index_path, input_path, staging, write_index_path, feedback)
    except BaseException as exc:
        writer.abort()  # waits for the tiles being written, so none is renamed into place later
        if staging:
            _drop_staging(staging, write_index_path)
        _undo([] if staging else written, created)
        if isinstance(exc, Cancelled):
            feedback.warn(f"Cancelled: removed the {len(written)} tile file(s) written so far; no index was written"
                          + ("; the earlier dataset is unchanged." if staging else "."))
        raise
    finally:
        ds = None

    skipped = skipped_nodata + skipped_aoi
    _write_card(root, index_path, input_path, scene, info, stretch, dict(
        tile_size=tile_size, stride=stride, edge=windows.EDGE_NAMES[edge],
        pad_value=pad if edge == windows.EDGE_PAD else None,
        padding_mask="internal mask band on padded tiles" if mask_tiles else "nodata value",
        max_nodata=max_nodata, aoi=aoi_geom is not None, formats=formats,
        jpeg_bands=bands_rgb if "jpg" in formats else None, grid_rows=rows, grid_cols=cols, grid_tiles=len(grid),
        tile_count=len(records), skipped_nodata=skipped_nodata, skipped_aoi=skipped_aoi,
    ))
    feedback.progress(100.0)
    feedback.info(
        f"{len(records)} tiles written to '{paths.images}', {skipped} skipped "
        f"({skipped_nodata} over MAX_NODATA, {skipped_aoi} outside the AOI); index '{index_path}'."
    )
    return TilingResult(
        output_dir=root, index_path=index_path, tile_count=len(records), skipped_count=skipped,
        skipped_nodata=skipped_nodata, skipped_aoi=skipped_aoi, grid_rows=rows, grid_cols=cols,
        records=records, stretch=stretch,
    )
