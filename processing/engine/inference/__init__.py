"""Sliding-window ONNX inference over whole scenes: blended, streaming, cancellable.

The package, one job per module: ``options`` (the COMPRESSION and TTA tables, ``SegmentOptions``:
the one validated options object), ``weights`` (Hann tapers, the context margin, TTA transforms),
``runner`` (batches through the session, the cancel watcher), ``grid`` (windows, column panels,
blocks), ``readers`` (pixel validity: ``_validity`` is the one rule here; strips; arrays),
``pipeline`` (the blend loop ``_Blend``: reader thread -> model threads -> sums in window order),
``writer`` (rows -> GeoTIFF blocks), ``segment`` (``segment_raster`` -> ``SegmentResult``, the
resampled path), ``tiles`` (``predict_array``, ``predict_tiles``, ``score_tiles`` for the dock).

``segment_raster`` runs a model (``onnx_model.load_model``) over a GDAL raster:

* windows come from ``windows.iter_windows`` with EDGE_SHIFT (the last row and column end on the
  edge of the region), stride = window - overlap;
* each window's gully probability is weighted by a squared Hann window (tapered only on the sides
  that have a neighbour; floored at 1e-6 so every pixel keeps weight) and the sum is divided by the
  summed weights: no seams, and a fully convolutional model gives what one whole-image run gives
  away from window edges;
* streaming: a reader thread reads block-aligned strips of rows into one reused buffer ahead of
  the model (GDAL's block cache of the input is released after each strip) and normalises
  windows straight into whole batches (at most ``lanes + 2`` batch arrays, reused); on the CPU
  two model threads run two batches at once on half the threads each (``onnx_model.plan_threads``);
  the calling thread blends the results in window order (outputs do not depend on the lanes),
  an accumulator holds only the rows that windows still touch, and a writer thread writes
  finished rows in whole output blocks: peak memory never depends on the scene height;
* regions wider than ``PANEL_WIDTH`` columns are processed in column panels, one after the other
  by the same threads with the same buffers (boundaries on output block columns); each panel
  runs every window that touches it, in the same order with the same weights, so results are
  bit-identical to one full-width pass, and peak memory stops growing with the width too (the
  few windows across a boundary run twice);
* ``context_margin`` (the model's metadata or CONTEXT_MARGIN): a window's weight is 0 within that
  many pixels of a side with a neighbour, then tapered; with the model's receptive-field radius
  the result equals one whole-image run (OVERLAP is raised to twice the margin if smaller);
* a model whose output is the centred core of its window (valid convolutions) has its windows laid
  out by the core and read with the context around it (zeros beyond the scene edge, as Deepness);
* ``block`` (x, y, w, h): only the windows touching it run and only its pixels are written,
  bit-identical to the same pixels of a whole run (the same sums in the same order, as panels);
* nodata (band nodata values, NaN, mask bands, outside EXTENT / MASK_LAYER) is 255 in both
  outputs and 0 in the model's input; windows without a valid pixel are skipped;
* cancel: ``feedback`` is checked between batches and a watcher thread sets onnxruntime's
  ``RunOptions.terminate`` so a long ``session.run`` stops within about a second; partial outputs
  are removed (``gdalio.atomic_output``);
* when the model states a resolution and the raster's pixel size differs by more than 10 %, the
  model runs on a GDAL warped VRT at the model's resolution ('average' when coarsening,
  'bilinear' when refining); the probability is written on that grid to a temporary GeoTIFF and
  warped back (bilinear) onto the input grid, then the input's nodata/extent/mask are applied
  exactly on the input grid and the threshold is applied to the warped-back probability.

Outputs: probability uint8 ``round(p * 254)`` (255 nodata), mask uint8 0/1 (255 nodata), both
tiled GeoTIFFs (DEFLATE unless ``compression`` says otherwise) on the input's CRS and pixel grid (the EXTENT/MASK_LAYER
bounding box snapped outward to that grid); optional gully polygons (``polygonize``).
"""

from .grid import PANEL_WIDTH, _Grid, _Panel  # noqa: F401 - the public (and tested) names of the package
from .options import (  # noqa: F401
    COMPRESSION_LABELS,
    COMPRESSIONS,
    INPUT_MAX_FACTOR,
    MIN_AREA_PIXELS,
    NODATA,
    PROB_SCALE,
    RESOLUTION_TOLERANCE,
    TTA_DIHEDRAL,
    TTA_FLIPS,
    TTA_LABELS,
    TTA_NAMES,
    TTA_NONE,
    SegmentOptions,
    output_options,
)
from .readers import _validity, parse_mask_wkts  # noqa: F401
from .segment import SegmentResult, resolve_bands, segment_raster  # noqa: F401
from .tiles import predict_array, predict_tiles, score_tiles  # noqa: F401
from .weights import WEIGHT_FLOOR, _inverse_weight_sums, hann, tta_transforms, window_weight  # noqa: F401
