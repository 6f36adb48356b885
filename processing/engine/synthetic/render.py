"""Rendering: reflectance of a window from its rasterised features and noise fields, and encoding."""

import math

import numpy as np
from osgeo import gdal

from .noise import _hash01, _smoothstep
from .params import IMAGE_NODATA, TERRAIN_SCALE

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
