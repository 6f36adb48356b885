"""GDAL helpers shared by every engine module: opening, checks, creation, atomic outputs."""

import contextlib
import glob
import math
import os
import re
import uuid
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
from osgeo import gdal, gdal_array, ogr, osr

from . import windows
from .errors import GullySegError

# Creation options for the GeoTIFFs GullySeg writes.
GTIFF_TILED = ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER"]
GTIFF_SMALL = ["COMPRESS=DEFLATE"]  # small tiles/masks: one strip block is fine

# Drivers that GullySeg's worker threads write with. GDAL (3.6 at least) builds a driver's creation
# option list lazily on first use without a lock: two threads writing their first JPEG at once parse a
# half-built XML string ("Didn't find expected '=' for value of attribute ..."), which checked_write
# then reports as a failed write. Building the lists once here, in the importing thread, avoids it.
THREADED_DRIVERS = ("GTiff", "JPEG", "PNG", "MEM")


def warm_up_drivers(names=THREADED_DRIVERS) -> None:
    """Build the creation option lists of ``names`` now, in this thread (see THREADED_DRIVERS)."""
    for name in names:
        driver = gdal.GetDriverByName(name)
        if driver is not None:
            driver.GetMetadataItem(gdal.DMD_CREATIONOPTIONLIST)


warm_up_drivers()


@dataclass
class RasterInfo:
    path: str
    width: int
    height: int
    bands: int
    gdal_type: int  # gdal.GDT_* of band 1
    dtype: np.dtype
    geotransform: tuple
    crs_wkt: str
    nodata: list  # per band, None where unset
    block_size: tuple  # (w, h) of band 1's internal blocks

    @property
    def pixel_size(self) -> tuple:
        return abs(self.geotransform[1]), abs(self.geotransform[5])

    @property
    def srs(self) -> Optional[osr.SpatialReference]:
        if not self.crs_wkt:
            return None
        srs = osr.SpatialReference()
        srs.ImportFromWkt(self.crs_wkt)
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        return srs

    @property
    def crs_label(self) -> str:
        return crs_label(self.srs)


def crs_label(srs) -> str:
    """'EPSG:32606 (WGS 84 / UTM zone 6N)' or the CRS name."""
    if srs is None:
        return "no CRS"
    name = srs.GetName() or "unnamed CRS"
    code = srs.GetAuthorityCode(None)
    auth = srs.GetAuthorityName(None)
    return f"{auth}:{code} ({name})" if code and auth else name


def open_raster(path, what="INPUT", update=False) -> gdal.Dataset:
    """Open a GDAL raster or raise a GullySegError naming ``what`` and the file."""
    if not path:
        raise GullySegError(f"{what}: no raster given.")
    if not str(path).startswith("/vsi") and "://" not in str(path) and not os.path.exists(path):
        raise GullySegError(f"{what}: raster file '{path}' does not exist.")
    try:
        ds = gdal.Open(str(path), gdal.GA_Update if update else gdal.GA_ReadOnly)
    except RuntimeError as exc:
        raise GullySegError(f"{what}: cannot open '{path}' as a raster: {exc}") from None
    if ds is None or ds.RasterCount == 0:
        raise GullySegError(f"{what}: '{path}' is not a raster GDAL can read (no bands).")
    return ds


def raster_info(ds, path=None) -> RasterInfo:
    band = ds.GetRasterBand(1)
    nodata = [ds.GetRasterBand(i + 1).GetNoDataValue() for i in range(ds.RasterCount)]
    return RasterInfo(
        path=path or ds.GetDescription(),
        width=ds.RasterXSize,
        height=ds.RasterYSize,
        bands=ds.RasterCount,
        gdal_type=band.DataType,
        dtype=np.dtype(gdal_array.GDALTypeCodeToNumericTypeCode(band.DataType)),
        geotransform=tuple(ds.GetGeoTransform(can_return_null=True) or ()),
        crs_wkt=ds.GetProjection() or "",
        nodata=nodata,
        block_size=tuple(band.GetBlockSize()),
    )


def require_georeferenced(info, what="INPUT") -> None:
    """North-up geotransform and a CRS, or a clear error."""
    gt = info.geotransform
    if not gt or tuple(gt) == (0.0, 1.0, 0.0, 0.0, 0.0, 1.0):
        raise GullySegError(
            f"{what}: '{info.path}' has no geotransform (it is not georeferenced); "
            "georeference it first (Raster > Georeferencer)."
        )
    if gt[2] != 0 or gt[4] != 0:
        raise GullySegError(
            f"{what}: '{info.path}' has a rotated geotransform {tuple(gt)}; GullySeg needs a north-up "
            "raster. Warp it first (gdalwarp, or Raster > Projections > Warp)."
        )
    if gt[1] <= 0 or gt[5] >= 0:
        raise GullySegError(f"{what}: '{info.path}' has an unusual geotransform {tuple(gt)} (flipped axes).")
    if not info.crs_wkt:
        raise GullySegError(f"{what}: '{info.path}' has no CRS. Assign its CRS first (e.g. EPSG:32606).")


def require_projected(srs, what, path) -> None:
    """A projected CRS in metres, or a clear error (pixel sizes, areas and tile sizes need metres)."""
    if srs is None:
        raise GullySegError(f"{what}: '{path}' has no CRS. Assign its CRS first (e.g. EPSG:32606).")
    if srs.IsGeographic() or not srs.IsProjected():
        raise GullySegError(
            f"{what}: '{path}' is in a geographic CRS, {crs_label(srs)}, measured in degrees. "
            "GullySeg needs a projected CRS in metres, such as WGS 84 / UTM zone 6N (EPSG:32606): "
            "reproject it first (Raster > Projections > Warp)."
        )
    if abs(srs.GetLinearUnits() - 1.0) > 1e-9:
        raise GullySegError(
            f"{what}: '{path}' is in {crs_label(srs)}, whose unit is '{srs.GetLinearUnitsName()}', not metres. "
            "Reproject it to a metric CRS such as EPSG:32606 first."
        )


def open_checked(path, what="INPUT", projected=True) -> tuple:
    """Open a raster, require north-up georeferencing and (optionally) a metric CRS."""
    ds = open_raster(path, what)
    info = raster_info(ds, str(path))
    require_georeferenced(info, what)
    if projected:
        require_projected(info.srs, what, info.path)
    return ds, info


def read_window(ds, x_off, y_off, width, height, bands=None) -> np.ndarray:
    """Read (bands, height, width) from ``ds``; ``bands`` is a 1-based list (default all)."""
    bands = list(bands or range(1, ds.RasterCount + 1))
    try:
        arr = ds.ReadAsArray(x_off, y_off, width, height, band_list=bands)
    except RuntimeError as exc:  # IReadBlock failed: a truncated or damaged file
        raise GullySegError(
            f"INPUT: cannot read the pixels of '{ds.GetDescription()}' at ({x_off}, {y_off}, {width}x{height}): "
            f"{' '.join(str(exc).split()).rstrip('.')}. The file may be truncated or damaged; "
            "check it with gdalinfo -checksum."
        ) from None
    return arr.reshape(len(bands), height, width)


def representable(value, dtype) -> bool:
    """True when ``value`` is a value pixels of ``dtype`` can take (any value for float types)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return True
    limits = np.iinfo(dtype)
    return float(value).is_integer() and limits.min <= value <= limits.max


class Validity:
    """The one rule for which pixels of a raster hold data; every engine module uses it.

    A pixel is valid where every used band has data:

    * not equal to the band's nodata value (a value no pixel of the band's type can take marks
      nothing; a NaN nodata value is covered by the next rule);
    * finite, for floating-point bands: NaN (and infinity) is nodata whether or not a nodata
      value is declared;
    * set in the band's mask band or the dataset's mask (``.msk``, internal mask, alpha band);
      a per-dataset mask is read once.

    ``bands`` is a 1-based list (default all). ``nodata_values=False`` leaves the nodata values out
    (a caller with its own rule for them, e.g. evaluation, where a nodata value inside the class
    range is a class). The same rule as inference's reader (``inference._validity``).
    """

    def __init__(self, ds, bands=None, nodata_values=True):
        self.ds = ds
        self.bands = list(bands or range(1, ds.RasterCount + 1))
        objs = [ds.GetRasterBand(b) for b in self.bands]
        self.nodata = [b.GetNoDataValue() for b in objs]
        self.flags = [b.GetMaskFlags() for b in objs]
        self.dtypes = [np.dtype(gdal_array.GDALTypeCodeToNumericTypeCode(b.DataType)) for b in objs]
        self.floating = [d.kind == "f" for d in self.dtypes]
        self.by_value = [
            nodata_values and nd is not None and not math.isnan(nd) and representable(nd, dt)
            for nd, dt in zip(self.nodata, self.dtypes)
        ]
        self.mask_bands = []  # positions in ``bands`` whose mask band must be read
        per_dataset = False
        for i, flags in enumerate(self.flags):
            if flags & gdal.GMF_ALL_VALID or flags == gdal.GMF_NODATA:
                continue
            if flags & gdal.GMF_PER_DATASET:
                if per_dataset:
                    continue
                per_dataset = True
            self.mask_bands.append(i)
        self.alpha = any(f & gdal.GMF_ALPHA for f in self.flags)
        self.has_nodata_value = any(nd is not None for nd in self.nodata)
        self.all_valid = not any(self.by_value) and not any(self.floating) and not self.mask_bands

    def valid(self, raw, x_off, y_off, width, height) -> Optional[np.ndarray]:
        """Boolean (height, width) for ``raw`` = the used bands of that window; None when all valid.

        ``raw`` is (len(bands), height, width) as read by ``read_window(ds, ..., bands)``; it may be
        None when no band needs its values (no nodata value, no float band).
        """
        if self.all_valid:
            return None
        valid = np.ones((height, width), dtype=bool)
        for i in range(len(self.bands)):
            if self.by_value[i]:
                data = raw[i]
                valid &= data != data.dtype.type(self.nodata[i])  # a scalar of the data's type: fast
            if self.floating[i]:
                valid &= np.isfinite(raw[i])
        for i in self.mask_bands:
            valid &= self.ds.GetRasterBand(self.bands[i]).GetMaskBand().ReadAsArray(x_off, y_off, width, height) > 0
        return valid

    def mask(self, raw, x_off, y_off, width, height) -> np.ndarray:
        """Like ``valid`` but always an array."""
        valid = self.valid(raw, x_off, y_off, width, height)
        return np.ones((height, width), dtype=bool) if valid is None else valid

    def needs_values(self) -> bool:
        """True when ``valid`` needs the pixel values (nodata values or float bands)."""
        return any(self.by_value) or any(self.floating)

    def read_mask(self, x_off, y_off, width, height) -> np.ndarray:
        """Read what is needed and return the boolean (height, width) validity of a window."""
        raw = read_window(self.ds, x_off, y_off, width, height, self.bands) if self.needs_values() else None
        return self.mask(raw, x_off, y_off, width, height)

    def pad_values(self, default=0) -> list:
        """Per band: the nodata value where pixels can take it, else ``default`` (fills padding)."""
        return [nd if nd is not None and representable(nd, dt) else default
                for nd, dt in zip(self.nodata, self.dtypes)]


def validity(ds, bands, raw, x_off, y_off, width, height) -> np.ndarray:
    """Boolean (height, width): True where every band of ``bands`` has data (``Validity``'s rule).

    The drop-in form of inference's ``_validity(ds, bands, raw, x, y, w, h)``.
    """
    return Validity(ds, bands).mask(raw, x_off, y_off, width, height)


def valid_mask(ds, x_off, y_off, width, height) -> np.ndarray:
    """Boolean (height, width): True where every band has data (``Validity``'s rule)."""
    return Validity(ds).read_mask(x_off, y_off, width, height)


def create_raster(path, width, height, bands, gdal_type, geotransform=None, crs_wkt=None,
                  nodata=None, options=None, driver="GTiff") -> gdal.Dataset:
    """Create a raster (usually a temporary path from ``atomic_output``)."""
    drv = gdal.GetDriverByName(driver)
    try:
        ds = drv.Create(str(path), int(width), int(height), int(bands), gdal_type, options or [])
    except RuntimeError as exc:
        raise GullySegError(f"Cannot create '{path}': {exc}") from None
    if geotransform:
        ds.SetGeoTransform(tuple(geotransform))
    if crs_wkt:
        ds.SetProjection(crs_wkt)
    if nodata is not None:
        values = nodata if isinstance(nodata, (list, tuple)) else [nodata] * bands
        for i, value in enumerate(values):
            if value is not None:
                ds.GetRasterBand(i + 1).SetNoDataValue(float(value))
    return ds


def numpy_to_gdal_type(dtype) -> int:
    return gdal_array.NumericTypeCodeToGDALTypeCode(np.dtype(dtype).type)


# World files GDAL writes beside an image, by the image's extension.
_WORLD_FILES = {
    ".tif": (".tfw", ".tifw", ".wld"),
    ".tiff": (".tfw", ".tiffw", ".wld"),
    ".jpg": (".jgw", ".jpgw", ".wld"),
    ".jpeg": (".jgw", ".jpegw", ".wld"),
    ".png": (".pgw", ".pngw", ".wld"),
}


def _side_files(path):
    """Files GDAL/OGR writes beside ``path``: ``<file>.aux.xml/.ovr/.msk``, its world file, journals.

    Only files that belong to ``path`` itself: ``x.jpg`` is never a side file of ``x.tif``.
    """
    base, ext = os.path.splitext(path)
    found = glob.glob(glob.escape(path) + ".*")
    found += [base + suffix for suffix in _WORLD_FILES.get(ext.lower(), (".wld",))]
    found += [path + "-journal", path + "-wal", path + "-shm"]
    return [p for p in dict.fromkeys(found) if os.path.exists(p)]


def remove_with_side_files(path) -> None:
    """Remove ``path`` and the side files GDAL may have written with it."""
    for p in [path] + _side_files(path):
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.remove(p)


def _stale_partials(folder, stem, ext):
    """Hidden temporaries of ``stem`` left by a killed run (``.<stem>.partial-xxxxxxxx<ext>`` and sides)."""
    pattern = os.path.join(glob.escape(folder), glob.escape(f".{stem}.partial-") + "[0-9a-f]" * 8 + "*")
    return [p for p in glob.glob(pattern) if os.path.isfile(p) or os.path.islink(p)]


_PARTIAL_NAME = re.compile(r"^\..+\.partial-[0-9a-f]{8}")


def remove_stale_partials(folder) -> int:
    """Remove the hidden temporaries (``.<name>.partial-xxxxxxxx...``) a killed run left in ``folder``.

    Call it only where this run is the folder's one writer (a step's own output folder).
    Returns the number of files removed."""
    removed = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if _PARTIAL_NAME.match(entry.name) and not entry.is_dir(follow_symlinks=False):
                _quiet_remove(entry.path)
                removed += 1
    return removed


def make_folder(folder, what="OUTPUT") -> None:
    """``os.makedirs`` with a GullySegError (naming ``what`` and the folder) instead of an OSError."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise GullySegError(f"{what}: cannot create the folder '{folder}': {exc.strerror or exc}.") from None


def _quiet_remove(path):
    """Remove a temporary file; a failure to clean up must never hide the error being raised."""
    with contextlib.suppress(OSError):
        os.remove(path)


@contextlib.contextmanager
def atomic_output(path, overwrite=False, what="OUTPUT", side_suffixes=None) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it (and its side files) into place on success.

    On any exception (including ``Cancelled``) the temporary files are removed and nothing of
    the user's is touched; an OSError (full disk, read-only folder, permissions) becomes a
    GullySegError naming ``what`` and the file. Refuses an existing ``path`` unless ``overwrite``.
    side_suffixes: optional list of the only side files to expect, as suffixes of the file's stem
    (e.g. ``[".jgw", ".jpg.aux.xml"]``); then the folder is not listed, which matters when
    thousands of files are written into one folder (tiles). None: find side files by globbing,
    and first remove the hidden temporaries of the same output left by a killed run (kill -9).
    """
    path = os.path.abspath(str(path))
    if os.path.exists(path) and not overwrite:
        raise GullySegError(f"{what}: '{path}' already exists; choose another name or allow overwriting.")
    folder = os.path.dirname(path)
    stem, ext = os.path.splitext(os.path.basename(path))
    make_folder(folder, what)
    if side_suffixes is None:
        for stale in _stale_partials(folder, stem, ext):
            _quiet_remove(stale)
    tmp_stem = f".{stem}.partial-{uuid.uuid4().hex[:8]}"
    tmp = os.path.join(folder, tmp_stem + ext)

    def sides(of_stem):
        if side_suffixes is None:
            return _side_files(os.path.join(folder, of_stem + ext))
        return [p for p in (os.path.join(folder, of_stem + s) for s in side_suffixes) if os.path.exists(p)]

    def clean_up():
        for p in [tmp] + sides(tmp_stem):
            _quiet_remove(p)

    try:
        yield tmp
    except OSError as exc:
        clean_up()
        raise GullySegError(f"{what}: writing '{path}' failed: {exc}") from exc
    except BaseException:
        clean_up()
        raise
    if not os.path.exists(tmp):
        return  # the caller decided to write nothing
    try:
        if overwrite and os.path.exists(path):
            for p in sides(stem):  # the old file itself is replaced by the one rename below
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    os.remove(p)
        for side in sides(tmp_stem):
            suffix = os.path.basename(side)[len(tmp_stem):]
            os.replace(side, os.path.join(folder, stem + suffix))
        os.replace(tmp, path)
    except OSError as exc:
        clean_up()
        raise GullySegError(f"{what}: cannot put '{path}' in place: {exc.strerror or exc}.") from exc


class _GdalErrors:
    """A GDAL error handler that keeps the failures (thread-local: GDAL's handler stack is per thread)."""

    def __init__(self):
        self.messages = []

    def __call__(self, err_class, err_no, message):
        if err_class >= gdal.CE_Failure:
            self.messages.append(str(message))


@contextlib.contextmanager
def checked_write(path, what="OUTPUT") -> Iterator[None]:
    """Write (and close) a GDAL dataset inside this block; any GDAL failure becomes a GullySegError.

    GDAL reports write errors (full disk, I/O errors) at ``FlushCache`` or, worse, only while a
    dataset is destroyed (``ds = None``), where Python prints and drops them. Inside this block
    they are collected; the block must end with the dataset flushed and closed::

        with gdalio.checked_write(final_path, "OUTPUT_DIR"):
            ds = create_raster(tmp, ...)
            ...
            ds.FlushCache()
            ds = None

    Use it inside ``atomic_output``, so a failed file is removed and never renamed into place.
    """
    errors = _GdalErrors()
    gdal.PushErrorHandler(errors)
    try:
        try:
            yield
        except RuntimeError as exc:
            errors.messages.insert(0, str(exc))
    finally:
        gdal.PopErrorHandler()
    if errors.messages:
        detail = "; ".join(dict.fromkeys(errors.messages[:3]))
        raise GullySegError(f"{what}: GDAL could not write '{path}' (disk full or I/O error?): {detail}")


def ring_polygon(points) -> ogr.Geometry:
    """An OGR polygon with one ring through ``points`` [(x, y), ...], closed back to the first point."""
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for x, y in points:
        ring.AddPoint_2D(x, y)
    ring.AddPoint_2D(*points[0])
    poly = ogr.Geometry(ogr.wkbPolygon)
    poly.AddGeometry(ring)
    return poly


def polygon_mask(layer, gt, x_off, y_off, width, height, all_touched=False) -> np.ndarray:
    """uint8 (height, width): 1 where the polygons of OGR ``layer`` (in the raster's CRS) cover the
    pixel window (x_off, y_off, width, height) of a raster with geotransform ``gt``; GDAL's burn rule
    (pixel centre inside, or every touched pixel). Only features near the window are read."""
    ds = gdal.GetDriverByName("MEM").Create("", int(width), int(height), 1, gdal.GDT_Byte)
    ds.SetGeoTransform(windows.geotransform_at(gt, x_off, y_off))
    layer.SetSpatialFilterRect(*windows.bounds_of(gt, x_off, y_off, width, height))
    try:
        gdal.RasterizeLayer(ds, [1], layer, burn_values=[1], options=["ALL_TOUCHED=TRUE"] if all_touched else [])
    finally:
        layer.SetSpatialFilter(None)
    return ds.GetRasterBand(1).ReadAsArray()
