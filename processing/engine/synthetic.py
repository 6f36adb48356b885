"""Synthetic gully scenes: deterministic, streaming, realistic demo and test data.

A scene looks like 0.75 m imagery of loess hills: rolling terrain with texture, terraced
fields, vegetation, roads and tracks, shadows, dendritic gully networks with shaded walls and
lighter floors, and check dams with flat, brighter silted dam land upstream. It comes with
its ground truth for the class ``gully`` (polygons in a GeoPackage and a pixel mask on the
scene grid) that agree exactly: the mask IS the GDAL pixel-centre rasterisation of the
polygons (``gdal_rasterize`` / ``gdal.RasterizeLayer`` default rule).

Class convention (as in the published dataset): the class ``gully`` covers the gully channel
and its silted dam land; the check-dam embankment itself (a built structure, often a track)
is background.

How it scales to 31,000 x 31,000 pixels with flat memory:

* every random field (terrain, texture, vegetation, roads, terraces, sensor noise) is a pure
  function of ABSOLUTE pixel coordinates and the seed (hashed-lattice value noise, evaluated
  with separable interpolation matrices), so each window is computed on its own and windows
  join seamlessly;
* the vector features (gully networks, check dams, dam land) are generated cell by cell
  (1024-pixel cells, each seeded by ``(seed, row, col)``) and streamed into the GeoPackage;
  windows then fetch the features they need with an OGR spatial filter and rasterise them
  with GDAL on the window's grid (plus a halo for the shading, so no seams);
* the image and the mask are written window by window (``windows.iter_windows``, 512-pixel
  windows aligned to the 256x256 GeoTIFF blocks).

Same seed and arguments, same bytes (GeoTIFFs and GeoPackage: OGR_CURRENT_DATE is pinned).
"""

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

from . import gdalio
from .errors import GullySegError
from .feedback import Feedback
from .windows import iter_windows

DEFAULT_ORIGIN = (420000.0, 7010000.0)  # upper-left corner, WGS 84 / UTM zone 6N (Alaska)
DEFAULT_PIXEL_SIZE = 0.75
DEFAULT_EPSG = 32606
GULLY_LAYER = "gullies"
GULLY_LABEL = "gully"
MASK_GULLY, MASK_BACKGROUND, MASK_NODATA = 1, 0, 255
IMAGE_NODATA = 0
BAND_SETS = {
    "rgb": ("red", "green", "blue"),
    "bgrn": ("blue", "green", "red", "nir"),
}
MIN_SIZE, MAX_SIZE = 16, 100_000
WINDOW = 512  # generation window (two 256 blocks)
HALO = 40  # extra pixels around a window for shading and distances (> every effect radius)
CELL = 1024  # feature-generation cell (pixels)
FIXED_DATE = "2024-01-01T00:00:00Z"  # pinned GPKG timestamps (determinism)


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
    def gully_fraction(self):
        """Share of valid (inside-footprint) pixels that are gully."""
        return self.gully_pixels / self.valid_pixels if self.valid_pixels else 0.0


# --------------------------------------------------------------------------------------
# Noise: pure functions of absolute pixel coordinates
# --------------------------------------------------------------------------------------

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xC2B2AE3D27D4EB4F)
_F1 = np.uint64(0xBF58476D1CE4E5B9)
_F2 = np.uint64(0x94D049BB133111EB)


def _hash01(ix, iy, seed):
    """Uniform [0, 1) from integer lattice coordinates (broadcasting arrays) and a seed."""
    ix = np.asarray(ix, dtype=np.int64).astype(np.uint64)
    iy = np.asarray(iy, dtype=np.int64).astype(np.uint64)
    s = np.uint64(((int(seed) * 0x2545F4914F6CDD1D + 0x632BE59BD9B4E019) * 0x165667B19E3779F9)
                  & 0xFFFFFFFFFFFFFFFF)
    h = (ix * _M1) ^ (iy * _M2) ^ s
    h ^= h >> np.uint64(30)
    h *= _F1
    h ^= h >> np.uint64(27)
    h *= _F2
    h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def _axis_weights(start, n, scale):
    """Interpolation matrix (n x m) from lattice nodes to pixel centres along one axis."""
    u = (start + np.arange(n) + 0.5) / scale
    i0 = np.floor(u).astype(np.int64)
    f = u - i0
    s = f * f * (3.0 - 2.0 * f)
    first = int(i0.min())
    m = int(i0.max()) - first + 2
    w = np.zeros((n, m), dtype=np.float32)
    rows = np.arange(n)
    w[rows, i0 - first] = 1.0 - s
    w[rows, i0 - first + 1] = s
    return w, first, m


class _Grid:
    """A window in absolute pixel coordinates; evaluates noise fields on it."""

    def __init__(self, x0, y0, w, h, seed):
        self.x0, self.y0, self.w, self.h, self.seed = x0, y0, w, h, seed
        self._cache = {}

    def _weights(self, axis, scale):
        key = (axis, scale)
        if key not in self._cache:
            if axis == "x":
                self._cache[key] = _axis_weights(self.x0, self.w, scale)
            else:
                self._cache[key] = _axis_weights(self.y0, self.h, scale)
        return self._cache[key]

    def value(self, scale, salt, scale_y=None):
        """Smooth value noise in [0, 1] with lattice spacing ``scale`` pixels (x and y)."""
        sy = scale if scale_y is None else scale_y
        wx, fx, mx = self._weights("x", float(scale))
        wy, fy, my = self._weights("y", float(sy))
        lat = _hash01(np.arange(fx, fx + mx)[None, :], np.arange(fy, fy + my)[:, None],
                      self.seed * 1009 + salt).astype(np.float32)
        return wy @ lat @ wx.T

    def fbm(self, scale, octaves, salt, gain=0.5, lacunarity=2.0):
        """Fractal sum of value noise, normalised to about [0, 1] (mean 0.5)."""
        total = np.zeros((self.h, self.w), dtype=np.float32)
        amp, norm, s = 1.0, 0.0, float(scale)
        for k in range(octaves):
            if s < 1.5:
                break
            total += amp * self.value(s, salt + 7919 * k)
            norm += amp
            amp *= gain
            s /= lacunarity
        return total / norm

    def white(self, salt):
        """Per-pixel uniform noise in [0, 1)."""
        xs = np.arange(self.x0, self.x0 + self.w)[None, :]
        ys = np.arange(self.y0, self.y0 + self.h)[:, None]
        return _hash01(xs, ys, self.seed * 1013 + salt).astype(np.float32)


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


# --------------------------------------------------------------------------------------
# Vector features: gully networks and check dams, generated cell by cell
# --------------------------------------------------------------------------------------

class _Geo:
    """Pixel <-> map coordinates of the scene (north-up)."""

    def __init__(self, origin, pixel_size):
        self.x0, self.y0 = origin
        self.ps = pixel_size

    def xy(self, px, py):
        return self.x0 + px * self.ps, self.y0 - py * self.ps


def _segment_buffer(geo, x1, y1, x2, y2, radius_px):
    line = ogr.Geometry(ogr.wkbLineString)
    line.AddPoint_2D(*geo.xy(x1, y1))
    line.AddPoint_2D(*geo.xy(x2, y2))
    return line.Buffer(radius_px * geo.ps, 3)


def _polyline_buffer(geo, pts, radii):
    """Union of round-capped segment buffers with per-vertex radii (pixels)."""
    multi = ogr.Geometry(ogr.wkbMultiPolygon)
    for (x1, y1), (x2, y2), r1, r2 in zip(pts[:-1], pts[1:], radii[:-1], radii[1:]):
        poly = _segment_buffer(geo, x1, y1, x2, y2, 0.5 * (r1 + r2))
        _add_polygons(multi, poly)
    return multi.UnionCascaded() if multi.GetGeometryCount() else None


def _add_polygons(multi, geom):
    if geom is None or geom.IsEmpty():
        return
    name = geom.GetGeometryName()
    if name == "POLYGON":
        multi.AddGeometry(geom)
    elif name in ("MULTIPOLYGON", "GEOMETRYCOLLECTION"):
        for i in range(geom.GetGeometryCount()):
            _add_polygons(multi, geom.GetGeometryRef(i))


def _as_multipolygon(geom):
    multi = ogr.Geometry(ogr.wkbMultiPolygon)
    _add_polygons(multi, geom)
    return multi


def _walk(rng, x, y, heading, length, step, wiggle):
    """A meandering polyline (pixels) from (x, y) with a persistent, slowly turning heading."""
    pts = [(x, y)]
    turn = 0.0
    n = max(2, int(length / step))
    for _ in range(n):
        turn = 0.7 * turn + rng.normal(0.0, wiggle)
        heading += turn
        x += step * math.cos(heading)
        y += step * math.sin(heading)
        pts.append((x, y))
    return pts


def _branch(rng, x, y, heading, length, width, depth, out):
    """Grow a gully branch upstream (away from its outlet) and its tributaries recursively.

    Appends (points, radii) to ``out``; returns the trunk's points and radii.
    """
    step = 10.0
    pts = _walk(rng, x, y, heading, length, step, 0.10 if depth > 0 else 0.16)
    n = len(pts)
    t = np.linspace(0.0, 1.0, n)
    wobble = 1.0 + 0.18 * np.sin(np.cumsum(rng.normal(0, 0.5, n))) + rng.normal(0, 0.05, n)
    radii = 0.5 * width * (1.0 - 0.65 * t ** 1.3) * wobble
    radii = np.maximum(radii, 2.5)
    out.append((pts, radii))
    if depth <= 0:
        return pts, radii
    # tributaries: alternating sides, angles 30..75 degrees upstream
    k = int(rng.integers(2, 5))
    side = 1 if rng.random() < 0.5 else -1
    while k < n - 3:
        px, py = pts[k]
        h = math.atan2(pts[k + 1][1] - py, pts[k + 1][0] - px)
        angle = h + side * math.radians(rng.uniform(30, 75))
        remaining = (n - k) * step
        blen = remaining * rng.uniform(0.35, 0.8)
        bwidth = 2 * radii[k] * rng.uniform(0.45, 0.75)
        if blen > 40 and bwidth > 5:
            _branch(rng, px, py, angle, blen, bwidth, depth - 1, out)
        side = -side
        k += int(rng.integers(4, 10))
    return pts, radii


def _halfplane_box(geo, px, py, dx, dy, size):
    """Polygon covering the side of the line through (px, py) ⟂ (dx, dy) that (dx, dy) points to."""
    nx, ny = -dy, dx
    corners = [
        (px + nx * size, py + ny * size),
        (px + nx * size + dx * size, py + ny * size + dy * size),
        (px - nx * size + dx * size, py - ny * size + dy * size),
        (px - nx * size, py - ny * size),
    ]
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for cx, cy in corners + corners[:1]:
        ring.AddPoint_2D(*geo.xy(cx, cy))
    poly = ogr.Geometry(ogr.wkbPolygon)
    poly.AddGeometry(ring)
    return poly


def _cell_features(seed, row, col, geo, density, root=None):
    """Gully networks rooted in one cell: list of dicts(gully=, damland=[...], dambody=[...]).

    ``root``: grow exactly one network from this pixel position instead.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 7, row + 1000, col + 1000]))
    count = 1 if root is not None else rng.poisson(density)
    networks = []
    for _ in range(count):
        ox = (col + rng.random()) * CELL
        oy = (row + rng.random()) * CELL
        if root is not None:
            ox, oy = root
        heading = rng.uniform(0, 2 * math.pi)
        length = rng.uniform(350, 900)
        width = rng.uniform(22, 60)
        depth = 2 if length > 500 else 1
        branches = []
        trunk_pts, trunk_r = _branch(rng, ox, oy, heading, length, width, depth, branches)
        parts = ogr.Geometry(ogr.wkbMultiPolygon)
        for pts, radii in branches:
            _add_polygons(parts, _polyline_buffer(geo, pts, radii))
        gully = parts.UnionCascaded()
        damlands, dambodies = [], []
        n = len(trunk_pts)
        n_dams = int(rng.choice([0, 1, 1, 2], p=[0.3, 0.35, 0.2, 0.15])) if n > 20 else 0
        used = []
        for _ in range(n_dams):
            i = int(rng.integers(3, max(4, n // 2)))
            if any(abs(i - j) < 12 for j in used):
                continue
            used.append(i)
            (ax, ay), (bx, by) = trunk_pts[i], trunk_pts[i + 1]
            dl = math.hypot(bx - ax, by - ay) or 1.0
            dx, dy = (bx - ax) / dl, (by - ay) / dl  # upstream direction
            r = float(trunk_r[i])
            half = r * 1.25 + 6.0
            body = _segment_buffer(geo, ax - dy * half, ay + dx * half, ax + dy * half, ay - dx * half,
                                   rng.uniform(2.5, 4.0))
            k = min(n, i + int(rng.integers(8, 22)))
            upstream = trunk_pts[i:k]
            land = _polyline_buffer(geo, upstream, np.asarray(trunk_r[i:k]) * 1.18 + 2.0)
            if land is None:
                continue
            land = land.Intersection(_halfplane_box(geo, ax, ay, dx, dy, 400.0))
            if land is None or land.IsEmpty():
                continue
            gully = gully.Union(land)
            damlands.append(land)
            dambodies.append(body)
        for body in dambodies:
            gully = gully.Difference(body)
        networks.append({"gully": gully, "damland": damlands, "dambody": dambodies})
    return networks


def _footprint(width, height, nodata_edge, seed, geo):
    """The valid-data polygon (map coords): the scene rectangle, or a quadrilateral whose
    corners lie on the scene edges (a rotated scene edge leaving nodata wedges at the corners)."""
    if nodata_edge:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 11]))
        a, b, c, d = rng.uniform(0.06, 0.16, 4)
        pts = [(a * width, 0.0), (width, b * height), ((1 - c) * width, height), (0.0, (1 - d) * height)]
    else:
        pts = [(0.0, 0.0), (width, 0.0), (width, height), (0.0, height)]
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for px, py in pts + pts[:1]:
        ring.AddPoint_2D(*geo.xy(px, py))
    poly = ogr.Geometry(ogr.wkbPolygon)
    poly.AddGeometry(ring)
    return poly


# --------------------------------------------------------------------------------------
# Rendering of one window
# --------------------------------------------------------------------------------------

# Surface reflectances (blue, green, red, NIR)
_LOESS = np.array([0.135, 0.185, 0.245, 0.295], dtype=np.float32)
_LOESS_DARK = np.array([0.105, 0.140, 0.180, 0.245], dtype=np.float32)
_SEDIMENT = np.array([0.165, 0.215, 0.275, 0.310], dtype=np.float32)
_CROP = np.array([0.060, 0.105, 0.085, 0.380], dtype=np.float32)
_SHRUB = np.array([0.045, 0.075, 0.060, 0.300], dtype=np.float32)
_ROAD = np.array([0.170, 0.205, 0.250, 0.285], dtype=np.float32)
_DAMLAND = np.array([0.150, 0.200, 0.230, 0.330], dtype=np.float32)
_SUN_AZ, _SUN_EL = math.radians(150.0), math.radians(38.0)


def _mix(weight, a, b):
    """Per-pixel blend of materials a and b ((4,) or (4, h, w)) by weight (h, w) -> (4, h, w)."""
    a = a[:, None, None] if a.ndim == 1 else a
    b = b[:, None, None] if b.ndim == 1 else b
    return a + (b - a) * weight[None]


def _rasterize(layer, geotransform, w, h, bounds):
    """Burn 1 where pixel centres fall inside the layer's polygons (GDAL's default rule)."""
    ds = gdal.GetDriverByName("MEM").Create("", w, h, 1, gdal.GDT_Byte)
    ds.SetGeoTransform(geotransform)
    layer.SetSpatialFilterRect(*bounds)
    gdal.RasterizeLayer(ds, [1], layer, burn_values=[1])
    layer.SetSpatialFilter(None)
    return ds.GetRasterBand(1).ReadAsArray()


def _distance_inside(mask, cap):
    """Distance (pixels) from each pixel of ``mask`` to the nearest pixel outside it (capped)."""
    h, w = mask.shape
    ds = gdal.GetDriverByName("MEM").Create("", w, h, 1, gdal.GDT_Byte)
    ds.GetRasterBand(1).WriteArray((mask == 0).astype(np.uint8))
    out = gdal.GetDriverByName("MEM").Create("", w, h, 1, gdal.GDT_Float32)
    gdal.ComputeProximity(ds.GetRasterBand(1), out.GetRasterBand(1),
                          ["VALUES=1", f"MAXDIST={cap}", f"NODATA={cap}", "DISTUNITS=PIXEL"])
    return np.minimum(out.GetRasterBand(1).ReadAsArray(), cap)


def _render(grid, gully, damland, dambody, valid):
    """Surface reflectance (4, h, w) for a haloed window."""
    g = grid
    # terrain: rolling loess hills (metres) + gully incision
    hills = g.fbm(900, 4, salt=1) * 60.0 + g.fbm(140, 3, salt=2) * 6.0
    d_in = _distance_inside(gully, 16.0)
    wall = _smoothstep(0.0, 9.0, d_in)  # 0 at the rim, 1 on the floor
    floor_depth = 12.0 + 10.0 * g.value(300, salt=3)
    land = damland > 0
    z = hills - np.where(gully > 0, floor_depth * wall, 0.0)
    z = np.where(land, hills - floor_depth * 0.55, z)  # silted: flat, shallower
    dzdy, dzdx = np.gradient(z.astype(np.float32), 0.75)
    slope = np.arctan(np.hypot(dzdx, dzdy))
    aspect = np.arctan2(-dzdx, dzdy)
    shade = np.sin(_SUN_EL) * np.cos(slope) + np.cos(_SUN_EL) * np.sin(slope) * np.cos(_SUN_AZ - aspect)
    illum = 0.35 + 0.85 * np.clip(shade, 0.0, None)

    # farmland: terraces follow the contours of the smooth hills
    farm = _smoothstep(0.42, 0.55, g.fbm(1400, 2, salt=4))
    smooth = g.fbm(900, 2, salt=1)
    sy, sx = np.gradient(smooth)
    grad = np.hypot(sx, sy) + 1e-7
    step = 0.012
    phase = smooth / step
    frac = np.abs(phase - np.round(phase)) * step / grad  # pixels to the nearest contour line
    riser = (frac < 1.6).astype(np.float32) * farm
    field_id = np.floor(phase)
    field_tone = _hash01(field_id.astype(np.int64), np.floor(g.fbm(700, 1, salt=5) * 6).astype(np.int64),
                         g.seed * 31 + 5).astype(np.float32)

    # base material: loess with texture, fields with per-field tone
    tex = g.fbm(40, 4, salt=6)
    base = _mix(tex * 0.6 + 0.2 * g.white(7), _LOESS, _LOESS_DARK)
    crop_w = farm * np.clip((field_tone - 0.45) * 2.2, 0, 1) * (0.6 + 0.4 * g.value(25, salt=8))
    refl = _mix(crop_w, base, _CROP)
    refl = _mix(farm * (field_tone < 0.25) * 0.35, refl, _LOESS_DARK)
    # shrubs and trees: patches + scattered crowns
    veg = _smoothstep(0.62, 0.72, g.fbm(260, 4, salt=9))
    crowns = _smoothstep(0.80, 0.9, g.value(4, salt=10)) * _smoothstep(0.45, 0.6, g.fbm(500, 2, salt=11))
    refl = _mix(np.clip(veg * 0.9 + crowns * 0.8, 0, 1), refl, _SHRUB)

    # roads (on the ridges) and tracks: zero crossings of smooth fields
    rd = g.fbm(1600, 2, salt=12) - 0.5
    ry, rx = np.gradient(rd)
    road_d = np.abs(rd) / (np.hypot(rx, ry) + 1e-7)
    road = 1.0 - _smoothstep(2.5, 4.0, road_d)
    tr = g.fbm(450, 2, salt=13) - 0.5
    ty, tx = np.gradient(tr)
    track_d = np.abs(tr) / (np.hypot(tx, ty) + 1e-7)
    track = (1.0 - _smoothstep(0.8, 1.8, track_d)) * _smoothstep(0.5, 0.6, g.value(700, salt=14))
    lane = np.clip(road + track * 0.8, 0, 1) * (gully == 0)
    refl = _mix(lane, refl, _ROAD)

    # gully: floor sediment lighter, walls textured rills, some vegetation in the channel
    is_g = (gully > 0) & ~land
    rills = g.value(3, salt=15, scale_y=12) * 0.5 + g.value(12, salt=16, scale_y=3) * 0.5
    gw = np.where(is_g, 1.0, 0.0).astype(np.float32)
    refl = _mix(gw * (wall * 0.75), refl, _SEDIMENT)
    refl = refl * (1.0 - 0.18 * gw * (1.0 - wall) * rills)[None]
    gveg = _smoothstep(0.6, 0.75, g.fbm(60, 3, salt=17)) * gw
    refl = _mix(gveg * 0.8, refl, _SHRUB)
    # dam land: flat silted fields (bare or cropped), dam bodies compacted soil
    lw = land.astype(np.float32)
    land_tone = g.value(80, salt=18)
    refl = _mix(lw, refl, _mix(land_tone, _DAMLAND, _CROP))
    refl = _mix((dambody > 0).astype(np.float32), refl, _ROAD * 1.05)
    illum = np.where(land, 0.35 + 0.85 * math.sin(_SUN_EL) * 1.05, illum)

    # risers: steep terrace walls, dark when facing away from the sun
    refl = refl * (1.0 - 0.35 * riser)[None]
    # cast shadows of tree crowns (offset away from the sun)
    return refl * illum[None]


def _encode(refl, bands, valid, white):
    """Reflectance (4, h, w) -> sensor values; 0 only outside the footprint."""
    noise = (white - 0.5)
    if bands == "bgrn":
        out = np.empty((4,) + refl.shape[1:], dtype=np.uint16)
        for i in range(4):
            dn = refl[i] * 2300.0 + 40.0 + noise * 14.0
            out[i] = np.clip(np.rint(dn), 1, 1023)
    else:
        out = np.empty((3,) + refl.shape[1:], dtype=np.uint8)
        for i, src in enumerate((2, 1, 0)):  # red, green, blue
            v = np.clip(refl[src] / 0.36, 0.0, 1.0) ** (1 / 1.15) * 255.0 + noise * 5.0
            out[i] = np.clip(np.rint(v), 1, 255)
    out[:, ~valid] = IMAGE_NODATA
    return out


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------

def _check_args(path, width, height, seed, bands, pixel_size, epsg, mask_path, gullies_path, overwrite):
    for name, value in (("WIDTH", width), ("HEIGHT", height)):
        if not isinstance(value, (int, np.integer)) or not MIN_SIZE <= int(value) <= MAX_SIZE:
            raise GullySegError(f"{name}: must be a whole number of pixels from {MIN_SIZE} to {MAX_SIZE} (got {value!r}).")
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
               overwrite=False, feedback=None, density=2.5, window_size=WINDOW):
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
                gdalio.atomic_output(path, overwrite=overwrite, what="OUTPUT") as img_tmp:
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

    def emit(net):
        nonlocal network
        gully = _as_multipolygon(net["gully"].Intersection(footprint))
        if gully.IsEmpty():
            return
        network += 1
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
        for net in _cell_features(seed, r, c, geo, density):
            emit(net)
        feedback.progress(100.0 * (n + 1) / len(cells))
    if network == 0:
        # a small scene that no network reached: grow one from its centre (deterministic)
        for net in _cell_features(seed, -7, -7, geo, 0, root=(width / 2.0, height / 2.0)):
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

    wins = list(iter_windows(width, height, window_size))
    last_row = -1
    for n, win in enumerate(wins):
        feedback.check_cancelled()
        xa, ya, w, h = win.clip(width, height)
        hx, hy, hw, hh = xa - HALO, ya - HALO, w + 2 * HALO, h + 2 * HALO
        hgt = (gt[0] + hx * gt[1], gt[1], 0.0, gt[3] + hy * gt[5], 0.0, gt[5])
        bounds = (hgt[0], hgt[3] + hh * gt[5], hgt[0] + hw * gt[1], hgt[3])
        gully = _rasterize(glayer, hgt, hw, hh, bounds)
        land = _rasterize(land_layer, hgt, hw, hh, bounds)
        body = _rasterize(body_layer, hgt, hw, hh, bounds)
        valid = _rasterize(fp_layer, hgt, hw, hh, bounds).astype(bool)
        grid = _Grid(hx, hy, hw, hh, seed)
        refl = _render(grid, gully, land, body, valid)
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


# --------------------------------------------------------------------------------------
# Labelme files for a scene's tiles (as an annotator leaves them after step 3)
# --------------------------------------------------------------------------------------

LABELME_VERSION = "5.2.1"


@dataclass
class LabelmeResult:
    out_dir: str
    written: list  # paths of the JSON files written
    skipped_existing: int = 0
    shapes: int = 0


def _split_holes(poly, depth=0):
    """Hole-free polygons covering ``poly`` (Labelme polygons cannot have holes).

    Cuts along a vertical line (pixel edge where possible) through a hole, recursively.
    """
    if poly.GetGeometryCount() <= 1 or depth > 40:
        return [poly]
    hole = poly.GetGeometryRef(1)
    xmin, xmax, ymin, ymax = hole.GetEnvelope()
    cx = 0.5 * (xmin + xmax)
    # prefer a pixel edge (integer) inside the hole so no pixel centre lies on the cut
    for candidate in (math.floor(cx), math.ceil(cx), cx):
        if xmin < candidate < xmax:
            cx = candidate
            break
    pxmin, pxmax, pymin, pymax = poly.GetEnvelope()
    parts = []
    for a, b in ((pxmin - 1, cx), (cx, pxmax + 1)):
        box = _box(a, pymin - 1, b, pymax + 1)
        piece = poly.Intersection(box)
        multi = _as_multipolygon(piece)
        for i in range(multi.GetGeometryCount()):
            parts.extend(_split_holes(multi.GetGeometryRef(i).Clone(), depth=depth + 1))
    return parts


def _box(xmin, ymin, xmax, ymax):
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for x, y in ((xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax), (xmin, ymin)):
        ring.AddPoint_2D(x, y)
    poly = ogr.Geometry(ogr.wkbPolygon)
    poly.AddGeometry(ring)
    return poly


def _tile_shapes(layer, gt, x_off, y_off, w, h, label, simplify_px):
    """Gully polygons clipped to a tile, in tile pixel coordinates (pixel-corner based)."""
    ps_x, ps_y = gt[1], gt[5]
    xmin = gt[0] + x_off * ps_x
    ymax = gt[3] + y_off * ps_y
    xmax, ymin = xmin + w * ps_x, ymax + h * ps_y
    layer.SetSpatialFilterRect(xmin, ymin, xmax, ymax)
    tile_box = _box(xmin, ymin, xmax, ymax)
    shapes = []
    for feat in layer:
        geom = feat.GetGeometryRef()
        if geom is None:
            continue
        clipped = _as_multipolygon(geom.Intersection(tile_box))
        for i in range(clipped.GetGeometryCount()):
            poly = clipped.GetGeometryRef(i).Clone()
            # to tile pixel coordinates
            for r in range(poly.GetGeometryCount()):
                ring = poly.GetGeometryRef(r)
                for k in range(ring.GetPointCount()):
                    x, y = ring.GetX(k), ring.GetY(k)
                    ring.SetPoint_2D(k, (x - xmin) / ps_x, (y - ymax) / ps_y)
            if simplify_px > 0:
                poly = poly.SimplifyPreserveTopology(simplify_px)
            simple = _as_multipolygon(poly)
            pieces = []
            for j in range(simple.GetGeometryCount()):
                pieces.extend(_split_holes(simple.GetGeometryRef(j).Clone()))
            for part in pieces:
                if part.GetArea() < 2.0:
                    continue  # slivers along the tile edge: nobody draws those
                ring = part.GetGeometryRef(0)
                pts = [[round(min(max(ring.GetX(k), 0.0), w), 2), round(min(max(ring.GetY(k), 0.0), h), 2)]
                       for k in range(ring.GetPointCount() - 1)]
                if len(pts) < 3:
                    continue
                shapes.append({"label": label, "points": pts, "group_id": None, "description": "",
                               "shape_type": "polygon", "flags": {}})
    layer.SetSpatialFilter(None)
    return shapes


def write_labelme_for_tiles(scene_path, gullies_path, out_dir=None, tile_index=None, tile_size=256,
                            image_dir="../images", include_empty=True, label=GULLY_LABEL, simplify_px=0.6,
                            overwrite=False, feedback=None):
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
    from . import dataset as ds_mod  # local: dataset imports metadata; keep module import light

    feedback = feedback or Feedback()
    scene, info = gdalio.open_checked(scene_path, "INPUT")
    gt = info.geotransform
    if not gullies_path or not os.path.exists(str(gullies_path)):
        raise GullySegError(f"GULLIES: polygon file '{gullies_path}' does not exist.")
    vds = ogr.Open(str(gullies_path))
    layer = vds.GetLayerByName(GULLY_LAYER) or vds.GetLayer(0)
    if tile_index:
        records, _ = ds_mod.read_index(tile_index)
        paths = ds_mod.DatasetPaths.from_index(tile_index)
        out_dir = out_dir or paths.labelme
        tiles = []
        for rec in records:
            image = rec.get("image_jpg") or rec.get("image_tif") or f"{ds_mod.IMAGES_DIR}/{rec['tile_id']}.jpg"
            rel = os.path.relpath(paths.abs(image), os.path.abspath(out_dir)).replace(os.sep, "/")
            tiles.append((rec["tile_id"], rec["x_off"], rec["y_off"], rec["width"], rec["height"], rel))
    else:
        if not out_dir:
            raise GullySegError("OUTPUT_DIR: a folder for the Labelme files is needed when no tile index is given.")
        stem = os.path.splitext(os.path.basename(str(scene_path)))[0]
        tiles = []
        for win in iter_windows(info.width, info.height, tile_size):
            tid = ds_mod.tile_id(stem, win.row, win.col)
            tiles.append((tid, win.x_off, win.y_off, win.width, win.height, f"{image_dir}/{tid}.jpg"))
    os.makedirs(out_dir, exist_ok=True)
    result = LabelmeResult(out_dir=os.path.abspath(out_dir), written=[])
    for n, (tid, x_off, y_off, w, h, image_path) in enumerate(tiles):
        feedback.check_cancelled()
        target = os.path.join(out_dir, f"{tid}.json")
        if os.path.exists(target) and not overwrite:
            result.skipped_existing += 1
            continue
        shapes = _tile_shapes(layer, gt, x_off, y_off, w, h, label, simplify_px)
        if not shapes:
            part = (max(0, x_off), max(0, y_off), min(info.width, x_off + w), min(info.height, y_off + h))
            if not include_empty or part[2] <= part[0] or part[3] <= part[1] or not gdalio.valid_mask(
                    scene, part[0], part[1], part[2] - part[0], part[3] - part[1]).any():
                continue
        doc = {"version": LABELME_VERSION, "flags": {}, "shapes": shapes, "imagePath": image_path,
               "imageData": None, "imageHeight": int(h), "imageWidth": int(w)}
        with gdalio.atomic_output(target, overwrite=overwrite, what="Labelme file") as tmp:
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump(doc, handle, indent=2)
                handle.write("\n")
        result.written.append(os.path.abspath(target))
        result.shapes += len(shapes)
        feedback.progress(100.0 * (n + 1) / len(tiles))
    layer = None
    vds = scene = None
    return result
