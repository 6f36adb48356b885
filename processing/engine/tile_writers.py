"""The tile files of gridtiles: GeoTIFF tiles (exact pixels), JPEG quick-looks (8-bit, stretched
once for the scene) with world file and CRS, written by a small thread pool through
``gdalio.atomic_output``; which files of a dataset folder a run owns, and their removal."""

import contextlib
import os
import re
import shutil
import uuid
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, ThreadPoolExecutor, wait

import numpy as np
from osgeo import gdal

from . import dataset, gdalio
from .errors import GullySegError
from .stretch import stretch_to_byte

JPEG_QUALITY = 90
# GeoTIFF tiles: DEFLATE, one strip per tile (a 256x256 tile is a single block). The benchmark
# gives gdal_retile.py the same compression so both write the same kind of file.
TILE_GTIFF_OPTIONS = list(gdalio.GTIFF_SMALL)


def _to_byte(arr, bands, stretch, valid):
    """(len(bands), h, w) uint8 from a tile array using the scene-wide stretch."""
    data = arr[[b - 1 for b in bands]]
    if stretch["method"] != "none":
        return stretch_to_byte(data, stretch["low"], stretch["high"], valid)
    out = data.astype(np.uint8)
    if valid is not None:
        out[:, ~valid] = 0
    return out


# --- writers ------------------------------------------------------------------------------

def _write_gtiff(path, arr, gdal_type, geotransform, crs_wkt, nodata, mask, overwrite):
    bands, height, width = arr.shape
    with gdalio.atomic_output(path, overwrite=overwrite, what="OUTPUT_DIR", side_suffixes=_TIF_SIDES) as tmp:
        with gdalio.checked_write(path, "OUTPUT_DIR"):  # GDAL's write errors (full disk) raise before the rename
            ds = gdalio.create_raster(tmp, width, height, bands, gdal_type, geotransform, crs_wkt,
                                      nodata=nodata, options=TILE_GTIFF_OPTIONS)
            try:
                ds.WriteRaster(0, 0, width, height, np.ascontiguousarray(arr),
                               width, height, gdal_type, list(range(1, bands + 1)))
                if mask is not None:
                    ds.CreateMaskBand(gdal.GMF_PER_DATASET)
                    ds.GetRasterBand(1).GetMaskBand().WriteArray(mask.astype(np.uint8) * 255)
                ds.FlushCache()
            finally:
                ds = None  # closed inside checked_write, also after an error


def _world_file_text(gt):
    """ESRI world file: pixel sizes, rotations, and the centre of the upper-left pixel."""
    cx = gt[0] + gt[1] / 2.0 + gt[2] / 2.0
    cy = gt[3] + gt[4] / 2.0 + gt[5] / 2.0
    return "\n".join(repr(float(v)) for v in (gt[1], gt[4], gt[2], gt[5], cx, cy)) + "\n"


# the only side files the tile writers make (atomic_output then needs no directory listing)
_TIF_SIDES = [".tif.aux.xml", ".tif.msk"]
_JPG_SIDES = [".jgw", ".jpg.aux.xml", ".wld"]
_MEM = gdal.GetDriverByName("MEM")
_JPEG = gdal.GetDriverByName("JPEG")


def _write_jpeg(path, rgb, geotransform, crs_wkt, overwrite):
    bands, height, width = rgb.shape
    with gdalio.atomic_output(path, overwrite=overwrite, what="OUTPUT_DIR", side_suffixes=_JPG_SIDES) as tmp:
        mem = _MEM.Create("", width, height, bands, gdal.GDT_Byte)
        mem.WriteRaster(0, 0, width, height, np.ascontiguousarray(rgb), width, height,
                        gdal.GDT_Byte, list(range(1, bands + 1)))
        mem.SetGeoTransform(tuple(geotransform))
        mem.SetProjection(crs_wkt)
        if bands == 3:
            for i, ci in enumerate((gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand)):
                mem.GetRasterBand(i + 1).SetColorInterpretation(ci)
        with gdalio.checked_write(path, "OUTPUT_DIR"):
            out = _JPEG.CreateCopy(tmp, mem, 0, [f"QUALITY={JPEG_QUALITY}"])
            if out is None:
                raise GullySegError(f"OUTPUT_DIR: GDAL could not write the JPEG tile '{path}'.")
            out.FlushCache()
            out = None
        mem = None
        with open(os.path.splitext(tmp)[0] + ".jgw", "w", encoding="ascii") as handle:
            handle.write(_world_file_text(geotransform))


class _TileWriter:
    """Writes tiles in a few threads (GDAL compresses and writes without holding the GIL).

    At most ``2 x threads`` tiles wait in memory; the first error is raised in the caller.
    """

    def __init__(self, threads=None):
        self.threads = threads or max(1, min(4, os.cpu_count() or 1))
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="gullyseg-tiles")
        self.pending = set()

    def submit(self, fn, *args):
        if len(self.pending) >= 2 * self.threads:
            self._collect(FIRST_COMPLETED)
        self.pending.add(self.pool.submit(fn, *args))

    def _collect(self, how):
        done, self.pending = wait(self.pending, return_when=how)
        for future in done:
            future.result()

    def finish(self):
        try:
            self._collect(ALL_COMPLETED)
        finally:
            self.pool.shutdown(wait=True)

    def abort(self):
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pending = set()


# --- the files a run owns ----------------------------------------------------------------

_TILE_FILE = re.compile(r"^[A-Za-z0-9_.-]+_r\d{4,}_c\d{4,}\.(tif|tiff|jpg|jgw|wld|tfw)(\.aux\.xml)?$")
_PARTIAL = re.compile(r"^\..*\.partial-[0-9a-f]{8}")


def _owned_files(root, index_path):
    """Files of ``root`` that grid division owns (replaced by OVERWRITE)."""
    paths = dataset.DatasetPaths(root)
    owned = []
    for p in (paths.index, index_path):  # the GeoPackage and SQLite's own side files, nothing else
        owned += [q for q in (p, p + "-journal", p + "-wal", p + "-shm", p + ".aux.xml") if os.path.exists(q)]
    owned += [p for p in (paths.card, paths.card_md) if os.path.exists(p)]
    if os.path.isdir(paths.images):
        for name in sorted(os.listdir(paths.images)):
            full = os.path.join(paths.images, name)
            if os.path.isfile(full) and (_TILE_FILE.match(name) or _PARTIAL.match(name)):
                owned.append(full)
    return sorted(set(owned))


def _check_output(root, index_path, overwrite, input_path):
    """Refuse a non-empty dataset folder or an existing index unless ``overwrite``."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise GullySegError(f"OUTPUT_DIR: '{root}' exists and is not a folder.")
    if os.path.isdir(index_path):
        raise GullySegError(f"OUTPUT_INDEX: '{index_path}' is a folder, not a GeoPackage file.")
    if not overwrite:
        if os.path.isdir(root) and os.listdir(root):
            raise GullySegError(
                f"OUTPUT_DIR: the dataset folder '{root}' is not empty. Choose an empty or new folder, "
                "or set OVERWRITE=true to replace the tiles, index and card of an earlier run "
                "(masks/, labelme/ and any other file are kept)."
            )
        if os.path.exists(index_path):
            raise GullySegError(f"OUTPUT_INDEX: '{index_path}' already exists; set OVERWRITE=true to replace it.")
    inp = os.path.abspath(input_path)
    if os.path.exists(inp) and inp in {os.path.abspath(p) for p in _owned_files(root, index_path)}:
        raise GullySegError(f"OUTPUT_DIR: the input '{input_path}' would be replaced by this run's outputs.")


def _warn_kept(root, feedback):
    """OVERWRITE never deletes masks/ or labelme/: say that they are kept."""
    kept = [d for d in (dataset.MASKS_DIR, dataset.LABELME_DIR) if os.path.isdir(os.path.join(root, d))
            and os.listdir(os.path.join(root, d))]
    if kept:
        feedback.warn(
            f"OVERWRITE: kept {', '.join(d + '/' for d in kept)} in '{root}' (annotations and masks are "
            "never deleted); they match the new tiles only if the grid is unchanged."
        )


def _remove_earlier_run(root, index_path, input_path, feedback):
    """OVERWRITE: remove the files an earlier run of this step wrote (only those; never masks or
    annotations, which are reported as kept)."""
    old = [p for p in _owned_files(root, index_path) if os.path.abspath(p) != os.path.abspath(input_path)]
    for p in old:
        _remove(p)
    if old:
        feedback.info(f"OVERWRITE: removed {len(old)} file(s) of the earlier run in '{root}'.")
    _warn_kept(root, feedback)


def _undo(written, created):
    """After an error or cancel: remove the tiles written (and their side files) and the folders
    this run created, if left empty."""
    for path in written:
        stem = os.path.splitext(path)[0]
        for side in [path] + [stem + suffix for suffix in (_TIF_SIDES + _JPG_SIDES)]:
            _remove(side)
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


# --- OVERWRITE beside the old dataset; leftovers of a killed run (issue 14) ----------------------

_STAGING_PREFIX = ".gullyseg-staging-"  # a new dataset being built beside the old one (OVERWRITE)
_OLD_PREFIX = ".gullyseg-old-"  # the old tiles, moved aside during the swap
_STAGED_INDEX = ".staged-"
_LEFTOVER = re.compile(r"^\.gullyseg-(staging|old)-[0-9a-f]{8}$")


def _staging(root, index_path, overwrite):
    """(staging folder, staged index path) when OVERWRITE replaces an earlier run, else (None, index_path).

    OVERWRITE builds the new tiles and index beside the old ones and swaps them in only when
    everything is written (``_swap_in``): a failure or cancel leaves the old dataset (index.gpkg
    with its screening decisions) as it was."""
    if not (overwrite and _owned_files(root, index_path)):
        return None, index_path
    tag = uuid.uuid4().hex[:8]
    name = f".{os.path.basename(index_path)}{_STAGED_INDEX}{tag}.gpkg"
    staged_index = os.path.join(os.path.dirname(index_path), name)
    return os.path.join(root, _STAGING_PREFIX + tag), staged_index


def _drop_staging(staging, staged_index):
    """After an error or cancel: remove the half-built new dataset (the old one is untouched)."""
    shutil.rmtree(staging, ignore_errors=True)
    gdalio.remove_with_side_files(staged_index)


def _remove_leftovers(root, feedback):
    """Remove what a killed run (kill -9) left: staging folders, staged indexes, hidden temporaries."""
    if not os.path.isdir(root):
        return
    removed = 0
    for entry in os.scandir(root):
        if _LEFTOVER.match(entry.name) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += 1
        elif _STAGED_INDEX in entry.name and entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
            gdalio.remove_with_side_files(entry.path)
            removed += 1
    removed += gdalio.remove_stale_partials(root)
    images = dataset.DatasetPaths(root).images
    if os.path.isdir(images):
        removed += gdalio.remove_stale_partials(images)
    if removed:
        feedback.info(f"OUTPUT_DIR: removed {removed} leftover(s) of an interrupted earlier run in '{root}'.")


def _swap_in(root, index_path, input_path, staging, staged_index, feedback):
    """Replace the old tiles and index by the staged ones; the index last, in one rename."""
    paths = dataset.DatasetPaths(root)
    old_files = [p for p in _owned_files(root, index_path)
                 if os.path.abspath(p) != os.path.abspath(input_path)
                 and os.path.dirname(os.path.abspath(p)) == paths.images]
    aside = os.path.join(root, f"{_OLD_PREFIX}{uuid.uuid4().hex[:8]}")
    os.makedirs(aside)
    os.makedirs(paths.images, exist_ok=True)
    moved = []
    try:
        for p in old_files:
            os.replace(p, os.path.join(aside, os.path.basename(p)))
            moved.append(p)
        new_images = os.path.join(staging, dataset.IMAGES_DIR)
        for name in os.listdir(new_images):
            os.replace(os.path.join(new_images, name), os.path.join(paths.images, name))
    except OSError as exc:  # put the old tiles back
        for p in moved:
            with contextlib.suppress(OSError):
                os.replace(os.path.join(aside, os.path.basename(p)), p)
        shutil.rmtree(aside, ignore_errors=True)
        raise GullySegError(f"OUTPUT_DIR: could not swap the new tiles into '{paths.images}': {exc}") from None
    for side in ("-journal", "-wal", "-shm", ".aux.xml"):  # the old index's SQLite files must not outlive it
        _remove(index_path + side)
    os.replace(staged_index, index_path)
    stale = [paths.card, paths.card_md]  # rebuilt by this run (update_card) rather than merged
    if os.path.abspath(paths.index) != os.path.abspath(index_path):
        stale += [paths.index + s for s in ("", "-journal", "-wal", "-shm", ".aux.xml")]
    for p in stale:
        _remove(p)
    shutil.rmtree(aside, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    if old_files:
        feedback.info(f"OVERWRITE: replaced {len(old_files)} file(s) of the earlier run in '{root}'.")
    _warn_kept(root, feedback)
