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

The package: ``params`` (constants), ``noise`` (value noise), ``features`` (vector features),
``render`` (a window's pixels), ``scene`` (``make_scene``), ``annotate`` (Labelme files for tiles).
"""

from .annotate import LABELME_VERSION, LabelmeResult, write_labelme_for_tiles
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
    MASK_BACKGROUND,
    MASK_GULLY,
    MASK_NODATA,
    MAX_SIZE,
    MIN_SHARE,
    MIN_SIZE,
    TERRAIN_SCALE,
    WINDOW,
)
from .scene import SceneResult, make_scene

__all__ = [
    "BAND_SETS", "CELL", "DEFAULT_EPSG", "DEFAULT_ORIGIN", "DEFAULT_PIXEL_SIZE", "FIXED_DATE", "GULLY_LABEL",
    "GULLY_LAYER", "HALO", "IMAGE_NODATA", "LABELME_VERSION", "MASK_BACKGROUND", "MASK_GULLY", "MASK_NODATA",
    "MAX_SIZE", "MIN_SHARE", "MIN_SIZE", "TERRAIN_SCALE", "WINDOW", "LabelmeResult", "SceneResult", "make_scene",
    "write_labelme_for_tiles",
]
