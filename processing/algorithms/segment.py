"""gullyseg:segment - run an ONNX segmentation model over a raster layer (engine: inference.py)."""

from qgis.core import (
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
)

from ... import compat
from ..engine import inference
from ..engine.errors import GullySegError
from ..engine.onnx_model import load_model
from .base import GROUP_INFERENCE, GullySegAlgorithm, features_in_crs


class SegmentAlgorithm(GullySegAlgorithm):
    ALG_ID = "segment"
    DISPLAY_NAME = "Segment gullies with an ONNX model"
    GROUP = GROUP_INFERENCE
    HELP = (
        "Runs an ONNX segmentation model over a whole raster layer in overlapping windows and blends them "
        "(Hann-weighted, no seams), streaming: memory does not grow with the scene (31,000 x 31,000 pixel "
        "scenes are fine).\n\n"
        "MODEL: an .onnx file with input [N, C, H, W] float32 and a per-pixel output [N, 1, H, W], [N, H, W] or "
        "[N, K, H, W], of the window's size or its centred core (valid convolutions; the scene edge is then "
        "padded with zeros, as Deepness does); with several outputs the gully head is the one metadata names "
        "(docs/models.md lists every layout). Its metadata (Deepness keys model_type, class_names, resolution, "
        "tile_size, tiles_overlap, standardization_mean/std, seg_thresh, and GullySeg's key 'gullyseg': "
        "input_max, activation, gully_class, gully_output, bands, context_margin) sets the defaults; write it "
        "with 'Set ONNX model metadata'. 8-bit input is divided by 255 (16-bit by gullyseg.input_max: values "
        "above it are reported, far above it refused), then (x - mean) / std.\n"
        "BANDS: band order for the model's channels, e.g. 3,2,1 (default: the model's metadata, else 1..C).\n"
        "EXTENT / MASK_LAYER: segment only there (any CRS); outputs cover that area on the input's grid, "
        "pixels outside the polygons are nodata.\n"
        "OVERLAP: pixels shared by neighbouring windows; empty = from model metadata (tiles_overlap), else a "
        "quarter of the window. THRESHOLD: empty = from model metadata (seg_thresh), else 0.5. TTA: test-time "
        "augmentation (flips: 4 passes; flips and rotations: 8 passes), merged by mean.\n"
        "CONTEXT_MARGIN (advanced): pixels next to a window's inner edges that blending ignores (weight 0, then "
        "tapered), for models whose receptive field reaches far: with the model's receptive-field radius, the "
        "result equals one whole-image run. Empty = from model metadata (gullyseg.context_margin), else none; "
        "0 = none. OVERLAP is raised to twice the margin when smaller.\n"
        "BATCH_SIZE: windows per model run. THREADS: CPU threads in all (0 = every core); on the CPU two "
        "batches run at once, each on half of them, so the model's working memory is that of two batches: "
        "lower BATCH_SIZE if a large model runs out of memory.\n"
        "COMPRESSION (advanced): DEFLATE by default, which any GIS software reads; ZSTD makes files of about "
        "the same size with 2-4x less CPU to write and read, for GDAL-based software (QGIS) only.\n"
        "If the model states a resolution and the layer's pixel size differs by more than 10 %, the model "
        "runs on a resampled (warped) copy and the probability is brought back to the input grid.\n\n"
        "Outputs: gully probability (uint8, probability x 254, 255 = nodata), mask (1 gully, 0 background, "
        "255 nodata), optional polygons (GeoPackage: area_m2, perimeter_m, mean_prob; MIN_AREA in m2, empty = "
        "the area of 4 pixels (1-3 pixel specks dropped), 0 = keep every polygon; SIMPLIFY tolerance in m), "
        "the number of pixels processed, the gully area in m2 and the onnxruntime "
        "execution provider that ran (CUDA when available, else CPU). The input must be in a projected CRS "
        "in metres."
    )

    INPUT = "INPUT"
    MODEL = "MODEL"
    BANDS = "BANDS"
    EXTENT = "EXTENT"
    MASK_LAYER = "MASK_LAYER"
    OVERLAP = "OVERLAP"
    CONTEXT_MARGIN = "CONTEXT_MARGIN"
    BATCH_SIZE = "BATCH_SIZE"
    THREADS = "THREADS"
    THRESHOLD = "THRESHOLD"
    TTA = "TTA"
    MIN_AREA = "MIN_AREA"
    SIMPLIFY = "SIMPLIFY"
    COMPRESSION = "COMPRESSION"
    OVERWRITE = "OVERWRITE"
    OUTPUT_PROBABILITY = "OUTPUT_PROBABILITY"
    OUTPUT_MASK = "OUTPUT_MASK"
    OUTPUT_POLYGONS = "OUTPUT_POLYGONS"
    PIXELS_PROCESSED = "PIXELS_PROCESSED"
    GULLY_AREA_M2 = "GULLY_AREA_M2"
    PROVIDER = "PROVIDER"
    POLYGON_COUNT = "POLYGON_COUNT"

    TTA_OPTIONS = inference.TTA_LABELS  # the engine's one table of choices (the dock uses it too)
    COMPRESSION_OPTIONS = inference.COMPRESSION_LABELS  # (engine name, label); the index is the value

    def initAlgorithm(self, config=None):  # noqa: N802
        shared = inference_parameters(self.tr)
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Input raster")))
        self.addParameter(model_parameter(self.tr))
        self.addParameter(shared[self.BANDS])
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, self.tr("Extent (empty: whole layer)"),
                                                       optional=True))
        for key in (self.MASK_LAYER, self.OVERLAP, self.BATCH_SIZE):
            self.addParameter(shared[key])
        self.addParameter(QgsProcessingParameterNumber(
            self.THREADS, self.tr("CPU threads in all (0 = all cores)"), compat.NUMBER_INTEGER, defaultValue=0,
            minValue=0))
        for key in (self.THRESHOLD, self.TTA, self.MIN_AREA, self.SIMPLIFY, self.CONTEXT_MARGIN, self.COMPRESSION):
            self.addParameter(shared[key])
        overwrite = QgsProcessingParameterBoolean(self.OVERWRITE, self.tr("Overwrite existing output files"),
                                                  defaultValue=False)
        overwrite.setFlags(overwrite.flags() | compat.FLAG_ADVANCED)
        self.addParameter(overwrite)
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT_PROBABILITY, self.tr("Gully probability (x 254)")))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT_MASK, self.tr("Gully mask")))
        polygons = QgsProcessingParameterVectorDestination(
            self.OUTPUT_POLYGONS, self.tr("Gully polygons"), compat.TYPE_VECTOR_POLYGON, optional=True,
            createByDefault=False)
        polygons.setSupportsNonFileBasedOutput(False)
        self.addParameter(polygons)
        self.addOutput(QgsProcessingOutputNumber(self.PIXELS_PROCESSED, self.tr("Pixels processed")))
        self.addOutput(QgsProcessingOutputNumber(self.GULLY_AREA_M2, self.tr("Gully area (m²)")))
        self.addOutput(QgsProcessingOutputString(self.PROVIDER, self.tr("Execution provider")))
        self.addOutput(QgsProcessingOutputNumber(self.POLYGON_COUNT, self.tr("Number of gully polygons")))

    def _optional(self, parameters, name, context, kind):
        """An optional number: None when empty or -1 (older scripts: 'from the model')."""
        if parameters.get(name) in (None, ""):
            return None
        value = self.parameterAsInt(parameters, name, context) if kind is int else \
            self.parameterAsDouble(parameters, name, context)
        return None if value == -1 else value

    def execute(self, parameters, context, feedback):
        fb = self.engine_feedback(feedback)
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        raster = self.raster_path(layer, self.INPUT)
        model_path = self.parameterAsFile(parameters, self.MODEL, context)
        threads = self.parameterAsInt(parameters, self.THREADS, context)
        model = load_model(model_path, threads=threads or None)
        crs = layer.crs()

        extent = None
        if parameters.get(self.EXTENT) not in (None, ""):
            rect = self.parameterAsExtent(parameters, self.EXTENT, context, crs)
            if not rect.isNull() and not rect.isEmpty():
                extent = (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())

        mask_wkts = None
        source = self.parameterAsSource(parameters, self.MASK_LAYER, context)
        if source is not None:
            mask_wkts = [wkt for wkt, _ in features_in_crs(source, crs, context, self.MASK_LAYER)]
            if not mask_wkts:
                raise GullySegError("MASK_LAYER: the layer has no polygon (nothing to segment).")

        prob = self.parameterAsOutputLayer(parameters, self.OUTPUT_PROBABILITY, context)
        mask = self.parameterAsOutputLayer(parameters, self.OUTPUT_MASK, context)
        polygons = None
        if parameters.get(self.OUTPUT_POLYGONS) not in (None, ""):
            polygons = self.parameterAsOutputLayer(parameters, self.OUTPUT_POLYGONS, context) or None
        if polygons and "|" in polygons:
            polygons = polygons.split("|")[0]

        result = inference.segment_raster(
            raster, model,
            output_probability=prob or None,
            output_mask=mask or None,
            output_polygons=polygons,
            bands=self.parameterAsString(parameters, self.BANDS, context) or None,
            extent=extent,
            mask_wkts=mask_wkts,
            overlap=self._optional(parameters, self.OVERLAP, context, int),
            batch_size=self.parameterAsInt(parameters, self.BATCH_SIZE, context),
            threshold=self._optional(parameters, self.THRESHOLD, context, float),
            tta=self.parameterAsEnum(parameters, self.TTA, context),
            min_area=self._optional(parameters, self.MIN_AREA, context, float),
            context_margin=self._optional(parameters, self.CONTEXT_MARGIN, context, int),
            simplify=self.parameterAsDouble(parameters, self.SIMPLIFY, context),
            overwrite=self.overwrite_files(parameters, context),
            feedback=fb,
            compression=self.COMPRESSION_OPTIONS[self.parameterAsEnum(parameters, self.COMPRESSION, context)][0],
        )
        return {
            self.OUTPUT_PROBABILITY: result["outputs"]["probability"],
            self.OUTPUT_MASK: result["outputs"]["mask"],
            self.OUTPUT_POLYGONS: result["outputs"]["polygons"],
            self.PIXELS_PROCESSED: result["pixels_processed"],
            self.GULLY_AREA_M2: result["gully_area_m2"],
            self.PROVIDER: result["provider"],
            self.POLYGON_COUNT: result["polygons"] if result["polygons"] is not None else 0,
        }


def model_parameter(tr):
    """The MODEL parameter (an .onnx file), as segment and segmentmany define it."""
    return QgsProcessingParameterFile(
        "MODEL", tr("ONNX model"), behavior=compat.FILE_FILE, fileFilter="ONNX models (*.onnx)")


def inference_parameters(tr):
    """{key: a new parameter}: the inference options segment and segmentmany share, defined once.

    Optional numbers have no default: empty = from the model's metadata (-1 from older scripts still
    means that). CONTEXT_MARGIN and COMPRESSION are advanced."""
    params = [
        QgsProcessingParameterString(
            "BANDS", tr("Bands for the model's channels, e.g. 3,2,1 (empty: from the model)"), defaultValue="",
            optional=True),
        QgsProcessingParameterFeatureSource(
            "MASK_LAYER", tr("Only inside these polygons"), [compat.TYPE_VECTOR_POLYGON], optional=True),
        QgsProcessingParameterNumber(
            "OVERLAP", tr("Overlap between windows (pixels; empty: from model metadata, else a quarter window)"),
            compat.NUMBER_INTEGER, defaultValue=None, optional=True, minValue=-1),
        QgsProcessingParameterNumber(
            "BATCH_SIZE", tr("Batch size (windows per model run)"), compat.NUMBER_INTEGER, defaultValue=8,
            minValue=1, maxValue=1024),
        QgsProcessingParameterNumber(
            "THRESHOLD", tr("Threshold (empty: from model metadata, else 0.5)"), compat.NUMBER_DOUBLE,
            defaultValue=None, optional=True, minValue=-1.0, maxValue=1.0),
        QgsProcessingParameterEnum(
            "TTA", tr("Test-time augmentation"), options=SegmentAlgorithm.TTA_OPTIONS, defaultValue=0),
        QgsProcessingParameterNumber(
            "MIN_AREA", tr("Polygons: minimum area (m²; empty: 4 pixels, 0: keep all)"), compat.NUMBER_DOUBLE,
            defaultValue=None, optional=True, minValue=0.0),
        QgsProcessingParameterNumber(
            "SIMPLIFY", tr("Polygons: simplification tolerance (m, 0 = none)"), compat.NUMBER_DOUBLE,
            defaultValue=0.0, minValue=0.0),
        QgsProcessingParameterNumber(
            "CONTEXT_MARGIN", tr("Context margin ignored at inner window edges (pixels; empty: from model "
                                 "metadata, 0: none)"), compat.NUMBER_INTEGER, defaultValue=None, optional=True,
            minValue=-1),
        QgsProcessingParameterEnum(
            "COMPRESSION", tr("Compression of the output GeoTIFFs"),
            options=[label for _, label in SegmentAlgorithm.COMPRESSION_OPTIONS], defaultValue=0),
    ]
    for param in params[-2:]:
        param.setFlags(param.flags() | compat.FLAG_ADVANCED)
    return {param.name(): param for param in params}
