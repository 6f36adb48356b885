"""Noise: pure functions of absolute pixel coordinates and the seed (hashed-lattice value noise)."""


import numpy as np

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
