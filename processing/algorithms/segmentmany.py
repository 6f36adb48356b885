"""gullyseg:segmentmany - segment many scenes on a Dask cluster (engine: engine/distributed/)."""

from qgis.core import (
    QgsProcessingOutputFolder,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ... import compat
from ..engine import distributed
from ..engine.errors import GullySegError
from .base import GROUP_INFERENCE, GullySegAlgorithm, features_in_crs
from .segment import SegmentAlgorithm, inference_parameters, model_parameter


class SegmentManyAlgorithm(GullySegAlgorithm):
    ALG_ID = "segmentmany"
    DISPLAY_NAME = "Segment many scenes (Dask)"
    GROUP = GROUP_INFERENCE
    HELP = (
        "Runs 'Segment gullies with an ONNX model' over many scenes on a Dask cluster: the worker processes of "
        "this machine, or an existing Dask scheduler (several machines). Every output pixel is the one a plain "
        "'segment' run of the scene gives.\n\n"
        "INPUTS: raster layers, and/or INPUT_FOLDER with PATTERN (e.g. *.tif; several separated by ';'). MODEL, "
        "BANDS, OVERLAP, BATCH_SIZE, THRESHOLD, TTA, MASK_LAYER (any CRS, reprojected to each scene), MIN_AREA, "
        "SIMPLIFY, CONTEXT_MARGIN and COMPRESSION as in 'segment'.\n"
        "SCHEDULER: empty = a local cluster of WORKERS processes with THREADS_PER_WORKER tasks each; "
        "tcp://host:port = an existing scheduler (start it with 'dask scheduler' and the workers with "
        "'dask worker tcp://host:port' from GullySeg's Python, see docs/scale.md). Each worker loads the model "
        "once.\n"
        "BLOCK_SIZE: a scene wider or taller than this (pixels, a multiple of 256) is split into blocks that run "
        "as separate tasks, with the same windows and weights as one whole-scene run (bit-identical), then "
        "assembled (scenes the model must resample, or inside MASK_LAYER, run whole).\n\n"
        "OUTPUT_DIR: one folder per scene (named after the file) with probability.tif, mask.tif (and "
        "polygons.gpkg with OUTPUT_POLYGONS) and gullyseg.json (the record of a complete scene); mosaic.vrt over "
        "all masks (one mosaic_<CRS>.vrt per CRS when the scenes are in several CRSs); polygons.gpkg with every "
        "polygon and its scene; summary.csv and summary.json (scene, status, error, pixels processed, gully area "
        "m2, seconds, worker, execution provider).\n"
        "Resume: run again with the same OUTPUT_DIR: complete scenes (checked: parameters, sizes, checksums) are "
        "skipped, the rest is redone. A scene that cannot be read or has too few bands is reported as failed in "
        "the summary and the others go on; tasks of a lost worker are re-run. Cancel stops the tasks and removes "
        "the partial outputs.\n"
        "Needs Dask ('pip install \"dask[distributed]\"' into the Python that runs QGIS)."
    )

    INPUTS = "INPUTS"
    INPUT_FOLDER = "INPUT_FOLDER"
    PATTERN = "PATTERN"
    MODEL = "MODEL"
    BANDS = "BANDS"
    MASK_LAYER = "MASK_LAYER"
    OVERLAP = "OVERLAP"
    BATCH_SIZE = "BATCH_SIZE"
    THRESHOLD = "THRESHOLD"
    TTA = "TTA"
    MIN_AREA = "MIN_AREA"
    CONTEXT_MARGIN = "CONTEXT_MARGIN"
    SIMPLIFY = "SIMPLIFY"
    COMPRESSION = "COMPRESSION"
    SCHEDULER = "SCHEDULER"
    WORKERS = "WORKERS"
    THREADS_PER_WORKER = "THREADS_PER_WORKER"
    BLOCK_SIZE = "BLOCK_SIZE"
    OUTPUT_POLYGONS = "OUTPUT_POLYGONS"
    OUTPUT_DIR = "OUTPUT_DIR"
    SUMMARY = "SUMMARY"
    SCENES_DONE = "SCENES_DONE"
    SCENES_SKIPPED = "SCENES_SKIPPED"
    SCENES_FAILED = "SCENES_FAILED"
    GULLY_AREA_M2 = "GULLY_AREA_M2"

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterMultipleLayers(
            self.INPUTS, self.tr("Input rasters"), compat.TYPE_RASTER, optional=True))
        self.addParameter(QgsProcessingParameterFile(
            self.INPUT_FOLDER, self.tr("and/or a folder of rasters"), behavior=compat.FILE_FOLDER, optional=True))
        self.addParameter(QgsProcessingParameterString(
            self.PATTERN, self.tr("File pattern in the folder (e.g. *.tif; several separated by ';')"),
            defaultValue="*.tif", optional=True))
        shared = inference_parameters(self.tr)
        self.addParameter(model_parameter(self.tr))
        for key in (self.BANDS, self.MASK_LAYER, self.OVERLAP, self.BATCH_SIZE, self.THRESHOLD, self.TTA):
            self.addParameter(shared[key])
        self.addParameter(QgsProcessingParameterBoolean(
            self.OUTPUT_POLYGONS, self.tr("Write gully polygons (per scene and merged)"), defaultValue=False))
        self.addParameter(shared[self.MIN_AREA])
        self.addParameter(shared[self.SIMPLIFY])
        self.addParameter(QgsProcessingParameterString(
            self.SCHEDULER, self.tr("Dask scheduler (empty: a local cluster; tcp://host:port: an existing one)"),
            defaultValue="", optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.WORKERS, self.tr("Local cluster: worker processes"), compat.NUMBER_INTEGER, defaultValue=2,
            minValue=1))
        self.addParameter(QgsProcessingParameterNumber(
            self.THREADS_PER_WORKER, self.tr("Local cluster: tasks at once per worker"), compat.NUMBER_INTEGER,
            defaultValue=1, minValue=1))
        self.addParameter(shared[self.CONTEXT_MARGIN])
        block_size = QgsProcessingParameterNumber(
            self.BLOCK_SIZE, self.tr("Block size (pixels, a multiple of 256): larger scenes run in blocks"),
            compat.NUMBER_INTEGER, defaultValue=distributed.DEFAULT_BLOCK_SIZE, minValue=256)
        block_size.setFlags(block_size.flags() | compat.FLAG_ADVANCED)
        self.addParameter(block_size)
        self.addParameter(shared[self.COMPRESSION])
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_DIR, self.tr("Output folder")))
        self.addOutput(QgsProcessingOutputString(self.SUMMARY, self.tr("Summary (CSV)")))
        self.addOutput(QgsProcessingOutputNumber(self.SCENES_DONE, self.tr("Scenes segmented")))
        self.addOutput(QgsProcessingOutputNumber(self.SCENES_SKIPPED, self.tr("Scenes complete from an earlier run")))
        self.addOutput(QgsProcessingOutputNumber(self.SCENES_FAILED, self.tr("Scenes failed")))
        self.addOutput(QgsProcessingOutputNumber(self.GULLY_AREA_M2, self.tr("Gully area of all scenes (m²)")))
        self.addOutput(QgsProcessingOutputFolder(self.OUTPUT_DIR, self.tr("Output folder")))

    _optional = SegmentAlgorithm._optional  # an optional number: None when empty or -1, as in 'segment'

    def execute(self, parameters, context, feedback):
        fb = self.engine_feedback(feedback)
        layers = self.parameterAsLayerList(parameters, self.INPUTS, context) or []
        paths = [self.raster_path(layer, self.INPUTS) for layer in layers]
        folder = self.parameterAsFile(parameters, self.INPUT_FOLDER, context) or None
        inputs = distributed.find_inputs(paths, folder, self.parameterAsString(parameters, self.PATTERN, context))
        mask = None
        source = self.parameterAsSource(parameters, self.MASK_LAYER, context)
        if source is not None:
            crs = source.sourceCrs()
            wkts = [wkt for wkt, _ in features_in_crs(source, crs, context, self.MASK_LAYER)]
            if not wkts:
                raise GullySegError("MASK_LAYER: the layer has no polygon (nothing to segment).")
            mask = (wkts, crs.toWkt())
        out_dir = self.output_folder(self.parameterAsString(parameters, self.OUTPUT_DIR, context))
        summary = distributed.segment_many(
            inputs, self.parameterAsFile(parameters, self.MODEL, context), out_dir,
            bands=self.parameterAsString(parameters, self.BANDS, context) or None,
            overlap=self._optional(parameters, self.OVERLAP, context, int),
            batch_size=self.parameterAsInt(parameters, self.BATCH_SIZE, context),
            threshold=self._optional(parameters, self.THRESHOLD, context, float),
            tta=self.parameterAsEnum(parameters, self.TTA, context),
            mask=mask,
            compression=SegmentAlgorithm.COMPRESSION_OPTIONS[
                self.parameterAsEnum(parameters, self.COMPRESSION, context)][0],
            polygons=self.parameterAsBool(parameters, self.OUTPUT_POLYGONS, context),
            min_area=self._optional(parameters, self.MIN_AREA, context, float),
            context_margin=self._optional(parameters, self.CONTEXT_MARGIN, context, int),
            simplify=self.parameterAsDouble(parameters, self.SIMPLIFY, context),
            scheduler=(self.parameterAsString(parameters, self.SCHEDULER, context) or "").strip() or None,
            workers=self.parameterAsInt(parameters, self.WORKERS, context),
            threads_per_worker=self.parameterAsInt(parameters, self.THREADS_PER_WORKER, context),
            block_size=self.parameterAsInt(parameters, self.BLOCK_SIZE, context),
            feedback=fb,
        )
        rows = summary["scenes"]
        return {
            self.OUTPUT_DIR: out_dir,
            self.SUMMARY: summary["outputs"]["summary_csv"],
            self.SCENES_DONE: sum(r["status"] == "done" for r in rows),
            self.SCENES_SKIPPED: sum(r["status"] == "skipped" for r in rows),
            self.SCENES_FAILED: sum(r["status"] == "failed" for r in rows),
            self.GULLY_AREA_M2: float(sum(r["gully_area_m2"] or 0.0 for r in rows)),
        }
