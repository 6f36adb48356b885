"""make_scene: the scene, its mask and its polygons, written window by window (the public API)."""

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
from osgeo import gdal, ogr, osr

from .. import gdalio, windows
from ..errors import GullySegError
from ..feedback import Feedback
from .features import _as_multipolygon, _cell_features, _footprint, _Geo
from .noise import _Grid
from .params import (
    BAND_SETS,
    CELL,
    DEFAULT_EPSG,
    DEFAULT_ORIGIN,
    DEFAULT_PIXEL_SIZE,
    FIXED_DATE,
    GULLY_LABEL,
    GULLY_LAYER,
    HALO,
    IMAGE_NODATA,
    MASK_NODATA,
    MAX_SIZE,
    MIN_SHARE,
    MIN_SIZE,
    WINDOW,
)
from .render import _blur, _encode, _render


@dataclass
class SceneResult:
    path: str
    mask_path: str
    gullies_path: str
    width: int
    height: int
    bands: str
    seed: int
    epsg: int
    pixel_size: float
    geotransform: tuple
    dtype: str
    band_names: tuple
    nodata_edge: bool
    valid_pixels: int = 0
    gully_pixels: int = 0
    gully_count: int = 0
    dam_count: int = 0
    windows_written: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def gully_fraction(self) -> float:
        """Share of valid (inside-footprint) pixels that are gully."""
        return self.gully_pixels / self.valid_pixels if self.valid_pixels else 0.0




def _check_args(path, width, height, seed, bands, pixel_size, epsg, mask_path, gullies_path, overwrite):
    for name, value in (("WIDTH", width), ("HEIGHT", height)):
        if not isinstance(value, (int, np.integer)) or not MIN_SIZE <= int(value) <= MAX_SIZE:
            raise GullySegError(
                f"{name}: must be a whole number of pixels from {MIN_SIZE} to {MAX_SIZE} (got {value!r}).")
    if not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise GullySegError(f"SEED: must be a non-negative whole number (got {seed!r}).")
    if str(bands).lower() not in BAND_SETS:
        raise GullySegError(f"BANDS: must be one of {sorted(BAND_SETS)} (got {bands!r}).")
    if not pixel_size or pixel_size <= 0:
        raise GullySegError(f"pixel_size must be positive (got {pixel_size!r}).")
    srs = osr.SpatialReference()
    try:
        srs.ImportFromEPSG(int(epsg))
    except (RuntimeError, TypeError, ValueError):
        raise GullySegError(f"EPSG: {epsg!r} is not a known EPSG code.") from None
    gdalio.require_projected(srs, "EPSG", f"EPSG:{epsg}")
    outputs = [("OUTPUT", path), ("OUTPUT_MASK", mask_path), ("OUTPUT_GULLIES", gullies_path)]
    given = [(w, os.path.abspath(str(p))) for w, p in outputs if p]
    if not path:
        raise GullySegError("OUTPUT: no output path given for the scene.")
    if len({p for _, p in given}) != len(given):
        raise GullySegError("OUTPUT, OUTPUT_MASK and OUTPUT_GULLIES must be different files.")
    if not overwrite:
        for what, p in given:
            if os.path.exists(p):
                raise GullySegError(f"{what}: '{p}' already exists; choose another name or allow overwriting.")
    if gullies_path and not str(gullies_path).lower().endswith(".gpkg"):
        raise GullySegError(f"OUTPUT_GULLIES: '{gullies_path}' must be a GeoPackage (.gpkg).")
    return srs


@contextlib.contextmanager
def _maybe_atomic(path, overwrite, what, tmpdir, name):
    if path:
        with gdalio.atomic_output(path, overwrite=overwrite, what=what) as tmp:
            yield tmp
    else:
        yield os.path.join(tmpdir, name)


@contextlib.contextmanager
def _config(key, value):
    old = gdal.GetConfigOption(key)
    gdal.SetConfigOption(key, value)
    try:
        yield
    finally:
        gdal.SetConfigOption(key, old)


def make_scene(path, width=512, height=512, seed=0, bands="rgb", nodata_edge=False, mask_path=None,
               gullies_path=None, pixel_size=DEFAULT_PIXEL_SIZE, epsg=DEFAULT_EPSG, origin=None,
               overwrite=False, feedback=None, density=2.5, window_size=WINDOW) -> SceneResult:
    """Write a synthetic scene (and optionally its mask and gully polygons); return SceneResult.

    path: GeoTIFF (tiled 256x256, DEFLATE). bands: 'rgb' (3 x uint8) or 'bgrn' (4 x uint16,
    about 10-bit: blue, green, red, NIR). Nodata 0 on every band; valid pixels are >= 1.
    nodata_edge: a rotated scene edge; the corners outside the footprint are nodata.
    mask_path: uint8 GeoTIFF on the same grid: 1 gully, 0 background, 255 outside the footprint.
    gullies_path: GeoPackage, layer 'gullies' (MultiPolygon, field label='gully').
    origin: (x, y) of the upper-left corner in the CRS (default 420000, 7010000 in UTM 6N).
    density: mean gully networks per 1024x1024-pixel cell. window_size: generation window
    (a multiple of 256); the output does not depend on it.
    """
    feedback = feedback or Feedback()
    started = time.monotonic()
    bands = str(bands).lower()
    srs = _check_args(path, width, height, seed, bands, pixel_size, epsg, mask_path, gullies_path, overwrite)
    width, height, seed = int(width), int(height), int(seed)
    if window_size % 256:
        raise GullySegError(f"window_size must be a multiple of 256 (got {window_size}).")
    origin = tuple(origin) if origin is not None else DEFAULT_ORIGIN
    geo = _Geo(origin, float(pixel_size))
    gt = (origin[0], float(pixel_size), 0.0, origin[1], 0.0, -float(pixel_size))
    wkt = srs.ExportToWkt()
    rgb = bands == "rgb"
    result = SceneResult(
        path=os.path.abspath(path), mask_path=os.path.abspath(mask_path) if mask_path else None,
        gullies_path=os.path.abspath(gullies_path) if gullies_path else None, width=width, height=height,
        bands=bands, seed=seed, epsg=int(epsg), pixel_size=float(pixel_size), geotransform=gt,
        dtype="uint8" if rgb else "uint16", band_names=BAND_SETS[bands], nodata_edge=bool(nodata_edge))

    tmpdir = tempfile.mkdtemp(prefix="gullyseg_synth_")
    try:
        with _config("OGR_CURRENT_DATE", FIXED_DATE), \
                _maybe_atomic(gullies_path, overwrite, "OUTPUT_GULLIES", tmpdir, "gullies.gpkg") as gpkg_tmp, \
                _maybe_atomic(mask_path, overwrite, "OUTPUT_MASK", tmpdir, "mask.tif") as mask_tmp, \
                gdalio.atomic_output(path, overwrite=overwrite, what="OUTPUT") as img_tmp, \
                gdalio.checked_write(path, "OUTPUT"):  # GDAL's write errors (full disk) raise before the renames
            footprint = _footprint(width, height, nodata_edge, seed, geo)
            _write_features(gpkg_tmp, os.path.join(tmpdir, "render.gpkg"), srs, width, height, seed, geo,
                            footprint, density, feedback.scaled(0, 10), result)
            _write_rasters(img_tmp, mask_tmp if mask_path else None, gpkg_tmp, os.path.join(tmpdir, "render.gpkg"),
                           footprint, width, height, seed, gt, wkt, bands, window_size,
                           feedback.scaled(10, 100), result)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    result.seconds = time.monotonic() - started
    feedback.progress(100)
    feedback.info(
        f"Synthetic scene {width}x{height} ({bands}, seed {seed}): {result.gully_count} gully networks, "
        f"{result.dam_count} check dams, gully share {100 * result.gully_fraction:.1f} % of valid pixels."
    )
    return result


def _create_layer(ds, name, srs, fields=()):
    layer = ds.CreateLayer(name, srs, ogr.wkbMultiPolygon, ["FID=fid", "GEOMETRY_NAME=geom", "SPATIAL_INDEX=YES"])
    for fname, ftype in fields:
        layer.CreateField(ogr.FieldDefn(fname, ftype))
    return layer


def _write_features(gpkg_path, render_path, srs, width, height, seed, geo, footprint, density, feedback, result):
    """Generate the gully networks cell by cell, clip to the footprint, write both stores."""
    drv = ogr.GetDriverByName("GPKG")
    out = drv.CreateDataSource(gpkg_path)
    layer = _create_layer(out, GULLY_LAYER, srs, [("label", ogr.OFTString), ("network", ogr.OFTInteger),
                                                  ("dams", ogr.OFTInteger), ("area_m2", ogr.OFTReal)])
    aux = drv.CreateDataSource(render_path)
    layers = {name: _create_layer(aux, name, srs) for name in ("damland", "dambody")}
    rows, cols = math.ceil(height / CELL), math.ceil(width / CELL)
    # cells in a one-cell ring around the scene too: networks rooted outside may run into it
    cells = [(r, c) for r in range(-1, rows + 1) for c in range(-1, cols + 1)]
    network = 0
    out.StartTransaction()
    aux.StartTransaction()

    area = 0.0

    def emit(net):
        nonlocal network, area
        gully = _as_multipolygon(net["gully"].Intersection(footprint))
        if gully.IsEmpty():
            return
        network += 1
        area += gully.GetArea()
        feat = ogr.Feature(layer.GetLayerDefn())
        feat.SetField("label", GULLY_LABEL)
        feat.SetField("network", network)
        feat.SetField("dams", len(net["dambody"]))
        feat.SetField("area_m2", round(gully.GetArea(), 2))
        feat.SetGeometry(gully)
        layer.CreateFeature(feat)
        result.dam_count += len(net["dambody"])
        for name in ("damland", "dambody"):
            for geom in net[name]:
                aux_feat = ogr.Feature(layers[name].GetLayerDefn())
                aux_feat.SetGeometry(_as_multipolygon(geom))
                layers[name].CreateFeature(aux_feat)

    for n, (r, c) in enumerate(cells):
        feedback.check_cancelled()
        for net in _cell_features(seed, r, c, geo, density, (0, 0, width, height)):
            emit(net)
        feedback.progress(100.0 * (n + 1) / len(cells))
    # a scene that few networks reached (small scenes): grow more from inside it, so every
    # scene has a realistic gully share (deterministic: positions from the seed)
    extra = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 9]))
    fp_area = footprint.GetArea()
    for i in range(8):
        if area / fp_area >= MIN_SHARE:
            break
        root = (extra.uniform(0.15, 0.85) * width, extra.uniform(0.15, 0.85) * height)
        for net in _cell_features(seed, -50 - i, -50, geo, 0, (0, 0, width, height), root=root):
            emit(net)
    out.CommitTransaction()
    aux.CommitTransaction()
    result.gully_count = network
    layer = layers = None
    out = aux = None


def _write_rasters(img_path, mask_path, gpkg_path, render_path, footprint, width, height, seed, gt, wkt,
                   bands, window_size, feedback, result):
    rgb = bands == "rgb"
    nb = 3 if rgb else 4
    gtype = gdal.GDT_Byte if rgb else gdal.GDT_UInt16
    opts = list(gdalio.GTIFF_TILED) + (["PHOTOMETRIC=RGB"] if rgb else ["PHOTOMETRIC=MINISBLACK"])
    img = gdalio.create_raster(img_path, width, height, nb, gtype, gt, wkt, nodata=IMAGE_NODATA, options=opts)
    interp = (gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand) if rgb else (
        gdal.GCI_BlueBand, gdal.GCI_GreenBand, gdal.GCI_RedBand, gdal.GCI_Undefined)
    for i, (ci, name) in enumerate(zip(interp, BAND_SETS[bands])):
        band = img.GetRasterBand(i + 1)
        band.SetColorInterpretation(ci)
        band.SetDescription(name)
    img.SetMetadata({"GULLYSEG_SYNTHETIC": json.dumps({"seed": seed, "bands": bands}),
                     "AREA_OR_POINT": "Area"})
    mask = None
    if mask_path:
        mask = gdalio.create_raster(mask_path, width, height, 1, gdal.GDT_Byte, gt, wkt, nodata=MASK_NODATA,
                                    options=list(gdalio.GTIFF_TILED))
        mask.GetRasterBand(1).SetDescription("gully mask: 1 gully, 0 background, 255 outside the footprint")
    gdb = ogr.Open(gpkg_path)
    glayer = gdb.GetLayerByName(GULLY_LAYER)
    adb = ogr.Open(render_path)
    land_layer, body_layer = adb.GetLayerByName("damland"), adb.GetLayerByName("dambody")
    mem = ogr.GetDriverByName("Memory").CreateDataSource("fp")
    srs = osr.SpatialReference()
    srs.ImportFromWkt(wkt)
    fp_layer = mem.CreateLayer("footprint", srs, ogr.wkbPolygon)
    feat = ogr.Feature(fp_layer.GetLayerDefn())
    feat.SetGeometry(footprint)
    fp_layer.CreateFeature(feat)

    wins = list(windows.iter_windows(width, height, window_size))
    last_row = -1
    for n, win in enumerate(wins):
        feedback.check_cancelled()
        xa, ya, w, h = win.clip(width, height)
        hx, hy, hw, hh = xa - HALO, ya - HALO, w + 2 * HALO, h + 2 * HALO
        gully = gdalio.polygon_mask(glayer, gt, hx, hy, hw, hh)
        land = gdalio.polygon_mask(land_layer, gt, hx, hy, hw, hh)
        body = gdalio.polygon_mask(body_layer, gt, hx, hy, hw, hh)
        valid = gdalio.polygon_mask(fp_layer, gt, hx, hy, hw, hh).astype(bool)
        grid = _Grid(hx, hy, hw, hh, seed)
        refl = _blur(_render(grid, gully, land, body))
        white = grid.white(99)
        inner = (slice(HALO, HALO + h), slice(HALO, HALO + w))
        data = _encode(refl[:, inner[0], inner[1]], bands, valid[inner], white[inner])
        for i in range(nb):
            img.GetRasterBand(i + 1).WriteArray(data[i], xa, ya)
        g_in, v_in = gully[inner], valid[inner]
        result.valid_pixels += int(v_in.sum())
        result.gully_pixels += int((g_in.astype(bool) & v_in).sum())
        if mask is not None:
            m = np.where(v_in, g_in, MASK_NODATA).astype(np.uint8)
            mask.GetRasterBand(1).WriteArray(m, xa, ya)
        result.windows_written += 1
        if win.row != last_row:
            last_row = win.row
            img.FlushCache()
            if mask is not None:
                mask.FlushCache()
        feedback.progress(100.0 * (n + 1) / len(wins))
    img.FlushCache()
    img = None
    if mask is not None:
        mask.FlushCache()
        mask = None
    glayer = land_layer = body_layer = None
    gdb = adb = None
