"""Options of a segment run: output tables shared with the algorithm and the dock, and their checks.

``COMPRESSIONS`` and ``TTA_NAMES`` are the one table of COMPRESSION and TTA choices (the
algorithm and the dock import them from here); ``SegmentOptions`` is the one validated options
object of ``segment_raster`` (built before anything is read or written).
"""

import math
import os
from dataclasses import dataclass, field

from .. import gdalio
from ..errors import GullySegError

PROB_SCALE = 254
NODATA = 255
TTA_NONE, TTA_FLIPS, TTA_DIHEDRAL = 0, 1, 2
TTA_NAMES = {TTA_NONE: "none", TTA_FLIPS: "flips (4 passes)", TTA_DIHEDRAL: "flips and rotations (8 passes)"}
# the choices' labels in the Toolbox and the dock (the index is the TTA value)
TTA_LABELS = ["None", "Flips (4 passes)", "Flips and rotations (8 passes)"]
RESOLUTION_TOLERANCE = 0.10
INPUT_MAX_FACTOR = 2.0  # integer data more than this many times input_max is refused (above 1x: a warning)
MIN_AREA_PIXELS = 4  # the default MIN_AREA of polygons: the area of this many pixels
# output compression (tiled 256 x 256 GeoTIFFs). DEFLATE level 1 (the default): any GIS software reads
# it, ~9x less CPU than level 6 for ~4 % larger files. ZSTD level 1: about the same size, 2-4x less
# CPU again to write, faster to read, but only GDAL-based software (QGIS, GDAL 2.3+) reads it, not
# ArcGIS. Scratch rasters that only GDAL reads back use ZSTD.
COMPRESSIONS = {
    "DEFLATE": ["COMPRESS=DEFLATE", "ZLEVEL=1"],
    "ZSTD": ["COMPRESS=ZSTD", "ZSTD_LEVEL=1"],
    "LZW": ["COMPRESS=LZW"],
    "NONE": ["COMPRESS=NONE"],
}
# (COMPRESSION name, label) in the Toolbox and the dock; the index is the algorithm's enum value
COMPRESSION_LABELS = [
    ("DEFLATE", "DEFLATE (any GIS software reads it)"),
    ("ZSTD", "ZSTD (2-4x faster to write and read; GDAL-based software such as QGIS only, not ArcGIS)"),
    ("LZW", "LZW"),
    ("NONE", "None (largest files)"),
]


def output_options(compression="DEFLATE") -> list:
    """GDAL creation options of the output GeoTIFFs for a COMPRESSION name."""
    key = str(compression or "DEFLATE").upper()
    if key not in COMPRESSIONS:
        raise GullySegError(f"COMPRESSION must be one of {', '.join(COMPRESSIONS)} (got {compression!r}).")
    return [o for o in gdalio.GTIFF_TILED if not o.startswith("COMPRESS=")] + COMPRESSIONS[key]


def _region_from_extent(info, extent):
    gt = info.geotransform
    xmin, ymin, xmax, ymax = [float(v) for v in extent]
    if not (xmax > xmin and ymax > ymin):
        raise GullySegError(f"EXTENT: {extent} is empty (xmin, ymin, xmax, ymax).")
    eps = 1e-6
    c0 = math.floor((xmin - gt[0]) / gt[1] + eps)
    c1 = math.ceil((xmax - gt[0]) / gt[1] - eps)
    r0 = math.floor((ymax - gt[3]) / gt[5] + eps)
    r1 = math.ceil((ymin - gt[3]) / gt[5] - eps)
    c0, c1 = max(0, c0), min(info.width, c1)
    r0, r1 = max(0, r0), min(info.height, r1)
    if c1 <= c0 or r1 <= r0:
        return None
    return c0, r0, c1 - c0, r1 - r0


def _intersect(a, b):
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1 - x0, y1 - y0


def _overlap_and_context(model, overlap, context_margin, feedback):
    """(overlap, context margin) in pixels: the parameters, else the model's; checked.

    A context margin needs overlap >= 2 x margin (every pixel in some window's core): a smaller
    overlap is raised to that, and the log says so.
    """
    core = min(model.core)
    overlap = model.overlap if overlap is None or overlap < 0 else int(overlap)
    if overlap >= core:
        raise GullySegError(f"OVERLAP {overlap} must be smaller than the window ({core} pixels).")
    source = "CONTEXT_MARGIN"
    if context_margin is None or context_margin < 0:
        context_margin, source = model.context_margin, "the model's metadata (gullyseg.context_margin)"
    context = int(context_margin)
    if context and 2 * context >= core:
        raise GullySegError(
            f"CONTEXT_MARGIN {context} (from {source}) leaves no core of the {core} px window: 2 x margin must be "
            "smaller than the window; use a smaller margin or a model with larger windows.")
    if context and overlap < 2 * context:
        feedback.info(f"OVERLAP {overlap} px raised to {2 * context} px: twice the context margin of {context} px "
                      f"(from {source}), so every pixel lies in some window's core.")
        overlap = 2 * context
        if overlap >= core:
            raise GullySegError(f"CONTEXT_MARGIN {context}: the overlap it needs ({overlap} px) is not smaller than "
                                f"the window ({core} px); use a smaller margin.")
    elif context:
        feedback.info(f"Context margin {context} px (from {source}): window edges with a neighbour are ignored "
                      "that far in, then blended.")
    return overlap, context


def _check_block(block, info, out, input_path):
    """A block (x, y, w, h) of input pixels, checked and clipped to the output region ``out``."""
    try:
        values = [float(v) for v in block]
    except (TypeError, ValueError):
        values = None
    if values is None or len(values) != 4 or not all(math.isfinite(v) and v.is_integer() for v in values):
        raise GullySegError(f"block: {block!r} must be four whole pixel numbers (x, y, width, height).")
    x, y, w, h = (int(v) for v in values)
    if w <= 0 or h <= 0:
        raise GullySegError(f"block: {block!r} is empty (width and height must be positive).")
    clipped = _intersect((x, y, w, h), out)
    if clipped is None:
        raise GullySegError(f"block: ({x}, {y}, {w}, {h}) does not overlap the output region {tuple(out)} "
                            f"(x, y, width, height in pixels of INPUT '{input_path}').")
    return clipped


def _check_output(path, what):
    if path is None:
        return None
    path = os.path.abspath(str(path))
    if os.path.splitext(path)[1].lower() not in (".tif", ".tiff"):
        raise GullySegError(f"{what}: '{path}' must be a GeoTIFF (.tif).")
    return path


@dataclass
class SegmentOptions:
    """The validated options of one ``segment_raster`` run (``SegmentOptions.build``): every check that
    needs no pixel is done before the raster is read or anything is written."""

    prob_path: str = None
    mask_path: str = None
    poly_path: str = None
    overwrite: bool = False
    threshold: float = 0.5
    threshold_source: str = "default"
    tta: int = TTA_NONE
    overlap: int = 0
    context: int = 0
    batch_size: int = 8
    min_area: float = None  # m2; None: MIN_AREA_PIXELS pixels
    simplify: float = 0.0
    compression: str = "DEFLATE"
    creation_options: list = field(default_factory=list)

    @property
    def paths(self) -> list:
        return [p for p in (self.prob_path, self.mask_path, self.poly_path) if p]

    @classmethod
    def build(cls, model, input_path, output_probability=None, output_mask=None, output_polygons=None,
              overwrite=False, threshold=None, tta=0, overlap=None, context_margin=None, batch_size=8,
              min_area=None, simplify=0, compression="DEFLATE", feedback=None):
        opts = cls(prob_path=_check_output(output_probability, "OUTPUT_PROBABILITY"),
                   mask_path=_check_output(output_mask, "OUTPUT_MASK"),
                   poly_path=os.path.abspath(str(output_polygons)) if output_polygons else None,
                   overwrite=bool(overwrite))
        opts._check_paths(input_path)
        if threshold is None or (isinstance(threshold, (int, float)) and threshold < 0):
            opts.threshold = model.threshold
            opts.threshold_source = "the model's metadata (seg_thresh)" if model.threshold_from_metadata else "default"
        else:
            opts.threshold, opts.threshold_source = float(threshold), "THRESHOLD"
        if not 0.0 <= opts.threshold <= 1.0:
            raise GullySegError(f"THRESHOLD must be within 0..1 (got {opts.threshold}).")
        opts.compression = str(compression or "DEFLATE").upper()
        opts.creation_options = output_options(compression)
        if tta not in TTA_NAMES:
            raise GullySegError(f"TTA must be 0 (none), 1 (flips) or 2 (flips and rotations), got {tta}.")
        opts.tta = tta
        opts.overlap, opts.context = _overlap_and_context(model, overlap, context_margin, feedback)
        if int(batch_size) < 1:
            raise GullySegError(f"BATCH_SIZE must be at least 1 (got {batch_size}).")
        opts.batch_size = int(batch_size)
        if (min_area is not None and min_area < 0) or simplify < 0:
            raise GullySegError("MIN_AREA and SIMPLIFY must not be negative.")
        opts.min_area, opts.simplify = min_area, float(simplify)
        return opts

    def _check_paths(self, input_path):
        if not self.paths:
            raise GullySegError("No output chosen: give OUTPUT_PROBABILITY, OUTPUT_MASK and/or OUTPUT_POLYGONS.")
        if len(set(self.paths)) != len(self.paths):
            raise GullySegError("OUTPUT_PROBABILITY, OUTPUT_MASK and OUTPUT_POLYGONS must be different files.")
        if os.path.abspath(str(input_path)) in self.paths:
            raise GullySegError("An output would overwrite INPUT; choose other output names.")
        if self.poly_path and os.path.splitext(self.poly_path)[1].lower() != ".gpkg":
            raise GullySegError(f"OUTPUT_POLYGONS: '{self.poly_path}' must be a GeoPackage (.gpkg).")
        for path, what in ((self.prob_path, "OUTPUT_PROBABILITY"), (self.mask_path, "OUTPUT_MASK"),
                           (self.poly_path, "OUTPUT_POLYGONS")):
            if path and os.path.exists(path) and not self.overwrite:
                raise GullySegError(f"{what}: '{path}' already exists; choose another name or allow overwriting.")
