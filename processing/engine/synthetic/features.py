"""Vector features: gully networks and check dams, generated cell by cell; the scene footprint."""

import math

import numpy as np
from osgeo import ogr

from .. import gdalio
from .noise import _hash01
from .params import CELL, TERRAIN_SCALE


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
