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

from . import dataset, gdalio, windows
from .errors import GullySegError
from .feedback import Feedback

DEFAULT_ORIGIN = (420000.0, 7010000.0)  # upper-left corner, WGS 84 / UTM zone 6N (Alaska)
DEFAULT_PIXEL_SIZE = 0.75
DEFAULT_EPSG = 32606
GULLY_LAYER = "gullies"
GULLY_LABEL = "gully"
MASK_GULLY, MASK_BACKGROUND, MASK_NODATA = 1, 0, dataset.MASK_IGNORE
IMAGE_NODATA = 0
BAND_SETS = {
    "rgb": ("red", "green", "blue"),
    "bgrn": ("blue", "green", "red", "nir"),
}
MIN_SIZE, MAX_SIZE = 16, 100_000
WINDOW = 512  # generation window (two 256 blocks)
HALO = 56  # extra pixels around a window for shading and distances (> every effect radius)
CELL = 1024  # feature-generation cell (pixels)
TERRAIN_SCALE = 800  # pixels: the largest terrain octave (hills)
MIN_SHARE = 0.04  # scenes get extra networks until the gully polygons cover this share
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
        # interpolate along y on the small lattice, then gather the two columns of each pixel
        ix, sx = self._sparse("x", float(scale), wx)
        iy, syw = self._sparse("y", float(sy), wy)
        rows = lat[iy] * (1 - syw)[:, None] + lat[iy + 1] * syw[:, None]
        return rows[:, ix] * (1 - sx) + rows[:, ix + 1] * sx

    def _sparse(self, axis, scale, w):
        """(first node index, weight of the second node) per pixel, from the weight matrix."""
        key = ("s", axis, scale)
        if key not in self._cache:
            n, origin = (self.w, self.x0) if axis == "x" else (self.h, self.y0)
            i0 = np.floor((origin + np.arange(n) + 0.5) / scale).astype(np.int64)
            start = i0 - i0.min()
            self._cache[key] = (start, w[np.arange(n), start + 1])
        return self._cache[key]

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
        """Per-pixel uniform noise in [0, 1) (a 32-bit integer hash: cheap for every pixel)."""
        xs = (np.arange(self.x0, self.x0 + self.w, dtype=np.int64) & 0xFFFFFFFF).astype(np.uint32)
        ys = (np.arange(self.y0, self.y0 + self.h, dtype=np.int64) & 0xFFFFFFFF).astype(np.uint32)
        key = np.uint32((self.seed * 1013 + salt) * 0x9E3779B9 & 0xFFFFFFFF)
        h = (ys[:, None] * np.uint32(0x85EBCA6B)) ^ (xs[None, :] * np.uint32(0xC2B2AE35)) ^ key
        h ^= h >> np.uint32(16)
        h *= np.uint32(0x7FEB352D)
        h ^= h >> np.uint32(15)
        h *= np.uint32(0x846CA68B)
        h ^= h >> np.uint32(16)
        return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)


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


def _value_points(px, py, scale, salt, seed):
    """Value noise at arbitrary pixel positions; the same field as ``_Grid.value``."""
    u, v = np.asarray(px, dtype=np.float64) / scale, np.asarray(py, dtype=np.float64) / scale
    iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    fu, fv = u - iu, v - iv
    su, sv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
    s = seed * 1009 + salt
    top = _hash01(iu, iv, s) * (1 - su) + _hash01(iu + 1, iv, s) * su
    bottom = _hash01(iu, iv + 1, s) * (1 - su) + _hash01(iu + 1, iv + 1, s) * su
    return top * (1 - sv) + bottom * sv


def _terrain_points(px, py, seed):
    """The large-scale terrain (``_Grid.fbm(TERRAIN_SCALE, 4, salt=1)``) at pixel positions."""
    total, amp, norm, s = 0.0, 1.0, 0.0, float(TERRAIN_SCALE)
    for k in range(4):
        total = total + amp * _value_points(px, py, s, 1 + 7919 * k, seed)
        norm += amp
        amp *= 0.5
        s /= 2.0
    return total / norm


_MAX_TURN = math.radians(65)


class _Slope:
    """Uphill directions of the terrain around a network, from a coarse lookup grid (fast)."""

    SPACING = 20.0

    def __init__(self, seed, cx, cy, radius):
        self.x0 = cx - radius
        self.y0 = cy - radius
        n = int(2 * radius / self.SPACING) + 2
        xs = self.x0 + np.arange(n) * self.SPACING
        ys = self.y0 + np.arange(n) * self.SPACING
        gx, gy = np.meshgrid(xs, ys)
        ty, tx = np.gradient(_terrain_points(gx, gy, seed))
        self.angle = np.arctan2(ty, tx)
        self.n = n

    def uphill(self, x, y):
        i = int(round((y - self.y0) / self.SPACING))
        j = int(round((x - self.x0) / self.SPACING))
        if 0 <= i < self.n and 0 <= j < self.n:
            return float(self.angle[i, j])
        return None


def _angle_diff(a, b):
    return (a - b + math.pi) % (2 * math.pi) - math.pi


def _walk(rng, x, y, heading, length, step, wiggle, slope=None, steer=0.0, max_turn=_MAX_TURN):
    """A meandering polyline (pixels) from (x, y) with a persistent, slowly turning heading.

    With ``steer`` > 0 the heading is pulled towards the terrain's uphill direction (gullies
    grow headward, up the slope, from their outlet). The heading never strays more than
    ``max_turn`` from the initial one, so branches fan out instead of looping back.
    """
    pts = [(x, y)]
    base = heading
    turn = 0.0
    n = max(2, int(length / step))
    for _ in range(n):
        turn = 0.7 * turn + rng.normal(0.0, wiggle)
        heading += turn
        if steer > 0 and slope is not None:
            up = slope.uphill(x, y)
            if up is not None:
                heading += steer * _angle_diff(up, heading)
        dev = _angle_diff(heading, base)
        if abs(dev) > max_turn:
            heading = base + math.copysign(max_turn, dev)
            turn = 0.0
        x += step * math.cos(heading)
        y += step * math.sin(heading)
        pts.append((x, y))
    return pts


def _branch(rng, x, y, heading, length, width, depth, out, slope, trunk=False):
    """Grow a gully branch upstream (away from its outlet) with tributaries and side bays.

    Appends (points, radii) to ``out``; returns the branch's points and radii.
    """
    step = 10.0
    pts = _walk(rng, x, y, heading, length, step, 0.07 if trunk else 0.1, slope, 0.06 if trunk else 0.0,
                math.radians(70 if trunk else 40))
    n = len(pts)
    t = np.linspace(0.0, 1.0, n)
    wobble = 1.0 + 0.22 * np.sin(np.cumsum(rng.normal(0, 0.6, n))) + rng.normal(0, 0.07, n)
    radii = 0.5 * width * (1.0 - 0.6 * t ** 1.2) * wobble
    radii = np.maximum(radii, 3.5)
    out.append((pts, radii))
    # side bays: short lobes that make the rim scalloped, as headward erosion does
    for k in range(1, n - 1):
        if rng.random() < 0.12:
            px, py = pts[k]
            h = math.atan2(pts[k + 1][1] - py, pts[k + 1][0] - px)
            side = 1 if rng.random() < 0.5 else -1
            stub = _walk(rng, px, py, h + side * math.radians(rng.uniform(55, 100)),
                         rng.uniform(0.5, 1.1) * radii[k] + 3, 5.0, 0.2)
            r = radii[k] * rng.uniform(0.55, 0.8)
            out.append((stub, np.linspace(r, r * 0.6, len(stub))))
    if depth <= 0:
        return pts, radii
    # tributaries: alternating sides, 30..75 degrees off the branch, upstream
    k = int(rng.integers(2, 5))
    side = 1 if rng.random() < 0.5 else -1
    while k < n - 3:
        px, py = pts[k]
        h = math.atan2(pts[k + 1][1] - py, pts[k + 1][0] - px)
        angle = h + side * math.radians(rng.uniform(30, 75))
        remaining = (n - k) * step
        blen = remaining * rng.uniform(0.35, 0.85)
        bwidth = 2 * radii[k] * rng.uniform(0.45, 0.75)
        if blen > 50 and bwidth > 9:
            _branch(rng, px, py, angle, blen, bwidth, depth - 1, out, slope)
        side = -side
        k += int(rng.integers(5, 12))
    return pts, radii


def _polyline_buffer(geo, pts, radii, run=3):
    """Union of round-capped buffers of short runs of the polyline, each with its mean radius."""
    multi = ogr.Geometry(ogr.wkbMultiPolygon)
    n = len(pts)
    for i in range(0, n - 1, run):
        chunk = pts[i:i + run + 1]
        line = ogr.Geometry(ogr.wkbLineString)
        for x, y in chunk:
            line.AddPoint_2D(*geo.xy(x, y))
        r = float(np.mean(radii[i:i + run + 1]))
        _add_polygons(multi, line.Buffer(r * geo.ps, 3))
    return multi.UnionCascaded() if multi.GetGeometryCount() else None


def _segment_buffer(geo, x1, y1, x2, y2, radius_px):
    line = ogr.Geometry(ogr.wkbLineString)
    line.AddPoint_2D(*geo.xy(x1, y1))
    line.AddPoint_2D(*geo.xy(x2, y2))
    return line.Buffer(radius_px * geo.ps, 3)


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


def _halfplane_box(geo, px, py, dx, dy, size):
    """Polygon covering the side of the line through (px, py) perpendicular to (dx, dy) that (dx, dy) points to."""
    nx, ny = -dy, dx
    corners = [
        (px + nx * size, py + ny * size),
        (px + nx * size + dx * size, py + ny * size + dy * size),
        (px - nx * size + dx * size, py - ny * size + dy * size),
        (px - nx * size, py - ny * size),
    ]
    return gdalio.ring_polygon([geo.xy(cx, cy) for cx, cy in corners])


def _network(seed, rng, ox, oy, geo, extent):
    """One dendritic gully network rooted (outlet) at pixel (ox, oy), or None if it misses ``extent``.

    Returns dict(gully=MultiPolygon incl. dam land minus dam bodies, damland=[...], dambody=[...]).
    """
    length = rng.uniform(350, 950)
    reach = length + 120.0  # no part of the network is farther than this from its outlet
    if (ox + reach < extent[0] or ox - reach > extent[2] or oy + reach < extent[1] or oy - reach > extent[3]):
        return None
    slope = _Slope(seed, ox, oy, reach)
    up = slope.uphill(ox, oy)
    heading = (up if up is not None else 0.0) + rng.normal(0, 0.5)
    width = rng.uniform(20, 52)
    depth = 2 if length > 700 else 1
    branches = []
    trunk_pts, trunk_r = _branch(rng, ox, oy, heading, length, width, depth, branches, slope, trunk=True)
    # dams are drawn from the random stream before any early exit (keeps the stream aligned)
    n = len(trunk_pts)
    n_dams = int(rng.choice([0, 1, 1, 2, 3], p=[0.25, 0.3, 0.2, 0.15, 0.1])) if n > 20 else 0
    dam_draws = [(int(rng.integers(2, max(3, int(n * 0.6)))), rng.uniform(2.5, 4.0), int(rng.integers(5, 14)))
                 for _ in range(n_dams)]
    xs = [x for pts, _ in branches for x, _ in pts]
    ys = [y for pts, _ in branches for _, y in pts]
    reach = 40.0
    if (max(xs) + reach < extent[0] or min(xs) - reach > extent[2]
            or max(ys) + reach < extent[1] or min(ys) - reach > extent[3]):
        return None
    parts = ogr.Geometry(ogr.wkbMultiPolygon)
    for pts, radii in branches:
        _add_polygons(parts, _polyline_buffer(geo, pts, radii))
    gully = parts.UnionCascaded()
    damlands, dambodies, used = [], [], []
    for i, body_r, run in dam_draws:
        if any(abs(i - j) < 10 for j in used) or i + 1 >= n:
            continue
        used.append(i)
        (ax, ay), (bx, by) = trunk_pts[i], trunk_pts[i + 1]
        dl = math.hypot(bx - ax, by - ay) or 1.0
        dx, dy = (bx - ax) / dl, (by - ay) / dl  # upstream direction
        r = float(trunk_r[i])
        half = r * 1.35 + 6.0
        body = _segment_buffer(geo, ax - dy * half, ay + dx * half, ax + dy * half, ay - dx * half, body_r)
        k = min(n, i + run)
        land = _polyline_buffer(geo, trunk_pts[i:k], np.asarray(trunk_r[i:k]) * 1.1 + 2.0)
        if land is None:
            continue
        land = land.Intersection(_halfplane_box(geo, ax, ay, dx, dy, 500.0))
        if land is None or land.IsEmpty():
            continue
        gully = gully.Union(land)
        damlands.append(land)
        dambodies.append(body)
    for body in dambodies:
        gully = gully.Difference(body)
    return {"gully": gully, "damland": damlands, "dambody": dambodies}


def _cell_features(seed, row, col, geo, density, extent, root=None):
    """Gully networks rooted in one CELL x CELL cell (each seeded by seed, row, col, k).

    ``extent``: (xmin, ymin, xmax, ymax) pixels of the scene; networks that miss it are skipped.
    ``root``: grow exactly one network from this pixel position instead.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 7, row + 1000, col + 1000]))
    count = 1 if root is not None else rng.poisson(density)
    networks = []
    for k in range(count):
        ox = (col + rng.random()) * CELL
        oy = (row + rng.random()) * CELL
        if root is not None:
            ox, oy = root
        nrng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 8, row + 1000, col + 1000, k]))
        net = _network(seed, nrng, ox, oy, geo, extent)
        if net is not None:
            networks.append(net)
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
    return gdalio.ring_polygon([geo.xy(px, py) for px, py in pts])


# --------------------------------------------------------------------------------------
# Rendering of one window
# --------------------------------------------------------------------------------------

# Surface reflectances (blue, green, red, NIR) of the materials
_LOESS = np.array([0.160, 0.215, 0.250, 0.310], dtype=np.float32)  # bare loess, dry
_LOESS_DARK = np.array([0.120, 0.160, 0.185, 0.255], dtype=np.float32)  # ploughed / moist loess
_FRESH = np.array([0.190, 0.245, 0.285, 0.330], dtype=np.float32)  # fresh loess on gully walls
_SEDIMENT = np.array([0.170, 0.220, 0.255, 0.300], dtype=np.float32)  # gully floor
_CROP = np.array([0.055, 0.100, 0.080, 0.400], dtype=np.float32)
_GRASS = np.array([0.095, 0.140, 0.145, 0.300], dtype=np.float32)  # fallow / grassland, yellowish
_SHRUB = np.array([0.040, 0.068, 0.055, 0.290], dtype=np.float32)
_ROAD = np.array([0.195, 0.240, 0.275, 0.300], dtype=np.float32)
_SUN_AZ, _SUN_EL = math.radians(150.0), math.radians(40.0)
# one pixel towards the sun in image axes (x east, y down): azimuth 150 = SSE
_SUN_DX, _SUN_DY = math.sin(_SUN_AZ), -math.cos(_SUN_AZ)


def _mix(weight, a, b):
    """Per-pixel blend of materials a and b ((4,) or (4, h, w)) by weight (h, w) -> (4, h, w).

    When ``a`` is already a (4, h, w) array it is updated in place (and returned).
    """
    weight = np.asarray(weight, dtype=np.float32)
    if a.ndim == 1:
        out = np.empty((4,) + weight.shape, dtype=np.float32)
        out[:] = a[:, None, None]
    else:
        out = a
    for i in range(4):
        bi = b[i] if b.ndim == 1 else b[i]
        out[i] += (bi - out[i]) * weight
    return out


def _rasterize(layer, geotransform, w, h, bounds):
    """Burn 1 where pixel centres fall inside the layer's polygons (GDAL's default rule)."""
    ds = gdal.GetDriverByName("MEM").Create("", w, h, 1, gdal.GDT_Byte)
    ds.SetGeoTransform(geotransform)
    layer.SetSpatialFilterRect(*bounds)
    gdal.RasterizeLayer(ds, [1], layer, burn_values=[1])
    layer.SetSpatialFilter(None)
    return ds.GetRasterBand(1).ReadAsArray()


def _proximity(mask, cap):
    """Distance (pixels) from every pixel to the nearest pixel where ``mask`` is set (capped)."""
    h, w = mask.shape
    mem = gdal.GetDriverByName("MEM")
    ds = mem.Create("", w, h, 1, gdal.GDT_Byte)
    ds.GetRasterBand(1).WriteArray(mask.astype(np.uint8))
    out = mem.Create("", w, h, 1, gdal.GDT_Float32)
    gdal.ComputeProximity(ds.GetRasterBand(1), out.GetRasterBand(1),
                          ["VALUES=1", f"MAXDIST={cap}", f"NODATA={cap}", "DISTUNITS=PIXEL"])
    return np.minimum(out.GetRasterBand(1).ReadAsArray(), cap)


def _shift(a, dx, dy, fill=0):
    """a shifted so that out[y, x] = a[y + dy, x + dx] (integer shifts, ``fill`` outside)."""
    out = np.full_like(a, fill)
    h, w = a.shape
    ys, yd = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
    xs, xd = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
    out[yd, xd] = a[ys, xs]
    return out


def _lines(field, half_width):
    """1 on the zero crossings of a smooth field, ``half_width`` pixels wide (soft edges)."""
    gy, gx = np.gradient(field)
    dist = np.abs(field) / (np.hypot(gx, gy) + 1e-7)
    return 1.0 - _smoothstep(half_width - 0.7, half_width + 0.7, dist)


def _render(g, gully, damland, dambody):
    """Surface reflectance times illumination, (4, h, w), for a haloed window ``g``."""
    is_g = gully > 0
    land = damland > 0
    body = dambody > 0
    channel = is_g & ~land
    # --- relief: rolling hills, micro-relief, incised gullies and their flanks ----------
    hills = g.fbm(TERRAIN_SCALE, 4, salt=1)
    z = hills * 140.0 + g.fbm(48, 3, salt=2) * 1.5
    d_in = _proximity(~is_g, 16.0)  # inside a gully: distance to its rim
    d_out = _proximity(is_g, 44.0)  # outside: distance to the nearest gully
    depth = 12.0 + 14.0 * g.value(350, salt=3)
    wall = _smoothstep(0.5, 9.0, d_in)  # 0 at the rim .. 1 on the floor
    z = z - np.where(channel, depth * wall, 0.0)
    z = z - np.where(is_g, 0.0, 0.3 * depth * (1.0 - _smoothstep(0.0, 28.0, d_out)) ** 2)
    z = np.where(land, hills * 140.0 - 0.7 * depth, z)  # silted dam land: flat
    z = z + np.where(body, 1.5, 0.0)
    dzdy, dzdx = np.gradient(z.astype(np.float32), 0.75)
    slope = np.arctan(np.hypot(dzdx, dzdy))
    aspect = np.arctan2(dzdx, -dzdy)  # downslope direction, clockwise from north (image y is down)
    shade = np.sin(_SUN_EL) * np.cos(slope) + np.cos(_SUN_EL) * np.sin(slope) * np.cos(_SUN_AZ - aspect)
    illum = 0.28 + 0.95 * np.clip(shade, 0.0, None)
    # cast shadow inside gullies: the rim towards the sun hides it (shadow length ~ depth / tan(el))
    shadow = np.zeros_like(illum)
    for k in (3, 6, 9, 12):
        behind = _shift(is_g.astype(np.uint8), int(round(k * _SUN_DX)), int(round(k * _SUN_DY)), fill=1)
        shadow = np.maximum(shadow, (channel & (behind == 0)) * (1.0 - k / 16.0))
    illum = illum * (1.0 - 0.55 * shadow)

    # --- land cover outside the gullies ------------------------------------------------
    farm = _smoothstep(0.45, 0.56, g.fbm(1500, 2, salt=4)) * ~is_g
    smooth = g.fbm(TERRAIN_SCALE, 2, salt=1)
    sgy, sgx = np.gradient(smooth)
    grad = np.hypot(sgx, sgy) + 1e-7
    step = 0.011
    phase = smooth / step
    dist_riser = np.abs(phase - np.round(phase)) * step / grad  # pixels to the nearest terrace riser
    riser = (1.0 - _smoothstep(0.8, 1.8, dist_riser)) * farm
    # riser faces: the downslope face is lit when the slope faces the sun
    facing = (sgx * _SUN_DX + sgy * _SUN_DY) / grad  # > 0: terrain rises towards the sun
    segment = np.floor(g.value(160, salt=5) * 5.0)
    tone = _hash01(np.floor(phase).astype(np.int64), segment.astype(np.int64), g.seed * 31 + 5).astype(np.float32)
    rows = 0.5 + 0.5 * np.sin(phase * (2 * math.pi * 5))  # crop rows along the contours
    texture = g.fbm(32, 4, salt=6)
    grain = g.white(7)
    base = _mix(np.clip(texture * 0.9 + 0.25 * grain - 0.25, 0, 1), _LOESS, _LOESS_DARK)
    # natural slopes: grass and shrub mottle
    wild = 1.0 - farm
    grass = _smoothstep(0.45, 0.65, g.fbm(90, 3, salt=8)) * 0.85
    refl = _mix(wild * grass, base.copy(), _GRASS)
    clumps = _smoothstep(0.68, 0.8, g.value(5, salt=19)) * _smoothstep(0.35, 0.6, g.fbm(220, 2, salt=20))
    refl = _mix(wild * clumps * 0.9, refl, _SHRUB)
    # fields: bare ploughed, green crop or fallow grass, one tone per terrace segment
    crop = np.clip((tone - 0.4) * 3.0, 0, 1) * (tone < 0.78)
    fallow = (tone >= 0.78).astype(np.float32)
    bare = (tone < 0.4).astype(np.float32)
    field_refl = _mix(crop * (0.75 + 0.25 * rows), base, _CROP)
    field_refl = _mix(fallow * 0.8, field_refl, _GRASS)
    field_refl = _mix(bare * 0.5 * rows, field_refl, _LOESS_DARK)
    refl = _mix(farm, refl, field_refl)
    refl = refl * (1.0 + riser * np.where(facing > 0, 0.25, -0.45))[None]
    # tree plantations (black locust): crowns with shadows away from the sun
    grove = _smoothstep(0.62, 0.7, g.fbm(300, 3, salt=9)) * ~is_g
    crowns = _smoothstep(0.55, 0.75, g.value(4, salt=10)) * grove
    crown_shadow = np.clip(_shift(crowns, -int(round(3 * _SUN_DX)), -int(round(3 * _SUN_DY))) - crowns, 0, 1)
    refl = _mix(crowns, refl, _SHRUB)
    illum = illum * (1.0 - 0.5 * crown_shadow)

    # --- roads along the ridges and field tracks (look like gully floors: bright loess) -----
    road_field = g.fbm(1700, 2, salt=12) - 0.5
    road = _lines(road_field, 2.6) * _smoothstep(0.3, 0.4, g.value(2500, salt=21))
    track = _lines(g.fbm(420, 2, salt=13) - 0.5, 1.1) * _smoothstep(0.55, 0.62, g.value(600, salt=14))
    lane = np.clip(road + 0.9 * track, 0, 1) * ~is_g
    ditch = np.clip(_lines(road_field, 4.2) - road, 0, 1) * ~is_g
    refl = _mix(lane, refl, _ROAD)
    refl = refl * (1.0 - 0.25 * ditch)[None]

    # --- gullies: fresh loess walls with rills, lighter sediment floor, some shrubs ------------
    gw = channel.astype(np.float32)
    rills = g.value(2.5, salt=15, scale_y=9) * 0.5 + g.value(9, salt=16, scale_y=2.5) * 0.5
    refl = _mix(gw * (1.0 - wall), refl, _FRESH)
    # wide floors carry light sediment; narrow, deep channels stay dark (shade, moist soil, shrubs)
    refl = _mix(gw * wall * _smoothstep(5.0, 12.0, d_in), refl, _SEDIMENT)
    refl = _mix(gw * (1.0 - _smoothstep(3.0, 9.0, d_in)) * _smoothstep(0.5, 3.0, d_in) * 0.5, refl, _SHRUB)
    refl = refl * (1.0 - 0.22 * gw * (1.0 - wall) * rills)[None]
    floor_tex = g.fbm(24, 3, salt=23)
    refl = _mix(gw * wall * _smoothstep(0.45, 0.7, floor_tex) * 0.6, refl, _LOESS_DARK)
    gveg = _smoothstep(0.5, 0.68, g.fbm(70, 3, salt=17)) * gw
    grass_floor = _smoothstep(0.4, 0.6, g.fbm(200, 2, salt=24)) * gw * wall
    refl = _mix(grass_floor * 0.7, refl, _GRASS)
    refl = _mix(gveg * 0.9, refl, _SHRUB)
    # dam land: flat silted fields, cropped or bare, rows across the channel; dam bodies compacted
    lw = land.astype(np.float32)
    land_crop = _smoothstep(0.35, 0.65, g.value(160, salt=18))
    land_rows = 0.5 + 0.5 * np.sin(g.value(400, salt=22) * 40.0 + hills * 900.0)
    land_refl = _mix(land_crop * (0.7 + 0.3 * land_rows), _SEDIMENT, _CROP)
    refl = _mix(lw, refl, land_refl)
    refl = _mix(body.astype(np.float32), refl, _ROAD * 1.08)
    return refl * illum[None]


def _blur(a):
    """A light [1, 2, 1] smoothing (the point spread of a pan-sharpened sensor), per band."""
    out = a.copy()
    out[..., 1:-1, :] = 0.25 * a[..., :-2, :] + 0.5 * a[..., 1:-1, :] + 0.25 * a[..., 2:, :]
    tmp = out.copy()
    out[..., :, 1:-1] = 0.25 * tmp[..., :, :-2] + 0.5 * tmp[..., :, 1:-1] + 0.25 * tmp[..., :, 2:]
    return out


def _encode(refl, bands, valid, white):
    """Reflectance (4, h, w) -> sensor values; 0 only outside the footprint."""
    noise = (white - 0.5)
    if bands == "bgrn":
        out = np.empty((4,) + refl.shape[1:], dtype=np.uint16)
        for i in range(4):
            dn = refl[i] * 2400.0 + 45.0 + noise * 12.0
            out[i] = np.clip(np.rint(dn), 1, 1023)
    else:
        out = np.empty((3,) + refl.shape[1:], dtype=np.uint8)
        for i, src in enumerate((2, 1, 0)):  # red, green, blue
            v = np.clip(refl[src] / 0.38, 0.0, 1.0) ** (1 / 1.2) * 255.0 + noise * 4.0
            out[i] = np.clip(np.rint(v), 1, 255)
    out[:, ~valid] = IMAGE_NODATA
    return out


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------

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
        hgt = windows.geotransform_at(gt, hx, hy)
        bounds = windows.bounds_of(gt, hx, hy, hw, hh)
        gully = _rasterize(glayer, hgt, hw, hh, bounds)
        land = _rasterize(land_layer, hgt, hw, hh, bounds)
        body = _rasterize(body_layer, hgt, hw, hh, bounds)
        valid = _rasterize(fp_layer, hgt, hw, hh, bounds).astype(bool)
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
    return gdalio.ring_polygon([(xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax)])


def _tile_shapes(layer, gt, x_off, y_off, w, h, label, simplify_px):
    """Gully polygons clipped to a tile, in tile pixel coordinates (pixel-corner based)."""
    ps_x, ps_y = gt[1], gt[5]
    xmin, ymin, xmax, ymax = windows.bounds_of(gt, x_off, y_off, w, h)
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
        shapes = _tile_shapes(layer, gt, x_off, y_off, w, h, label, simplify_px)
        if not shapes:
            part = windows.intersection((x_off, y_off, w, h), (0, 0, info.width, info.height))
            if not include_empty or part is None or not gdalio.valid_mask(scene, *part).any():
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
