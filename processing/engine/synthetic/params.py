"""Synthetic scenes: the generator's constants (sizes, scales, band sets, the ground truth's values)."""



from .. import dataset

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
