"""gullyseg:comparemodels - several ONNX models on the same test data, ranked by evaluate's numbers."""

from qgis.core import (
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
)

from ... import compat
from ..engine.errors import GullySegError
from ..engine.training import compare
from .base import GullySegAlgorithm
from .trainmodel import GROUP_MODEL

TYPE_FILE = compat.TYPE_FILE  # files of any kind in a multiple-input parameter


class CompareModelsAlgorithm(GullySegAlgorithm):
    ALG_ID = "comparemodels"
    DISPLAY_NAME = "Compare segmentation models"
    GROUP = GROUP_MODEL
    HELP = (
        "Runs several ONNX segmentation models (MODELS: trained by 'Train gully segmentation model', e.g. in "
        "batch mode with different architectures, or from elsewhere; on the command line a ';'-separated list "
        "of files) with the engine of 'Segment gullies with an ONNX model' on the same data, scores each with "
        "the conventions of 'Evaluate segmentation', and writes a table ranked by mIoU, best first.\n\n"
        "The data: the test split of a DATASET folder (its test tiles and masks), or one SCENE with its "
        "REFERENCE mask on the same grid.\n\n"
        "OUTPUT_TABLE (CSV): one row per model with the file, architecture and encoder (from the model's "
        "metadata when trainmodel wrote it), parameters, OA, mIoU, gully IoU, precision, recall, F1 and the "
        "inference speed on this machine (megapixels per second). OUTPUT_REPORT: the same as an HTML page. "
        "BEST_MODEL: the path of the best model, for a graphical model to pass on to segment. No PyTorch "
        "needed."
    )

    MODELS = "MODELS"
    DATASET = "DATASET"
    SCENE = "SCENE"
    REFERENCE = "REFERENCE"
    THREADS = "THREADS"
    OUTPUT_TABLE = "OUTPUT_TABLE"
    OUTPUT_REPORT = "OUTPUT_REPORT"
    BEST_MODEL = "BEST_MODEL"
    BEST_MIOU = "BEST_MIOU"
    BEST_NAME = "BEST_NAME"

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterMultipleLayers(
            self.MODELS, self.tr("ONNX models"), layerType=TYPE_FILE))
        self.addParameter(QgsProcessingParameterFile(
            self.DATASET, self.tr("Dataset folder (its test split is used)"), behavior=compat.FILE_FOLDER,
            optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.SCENE, self.tr("Or: a scene"), optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.REFERENCE, self.tr("... and its reference mask (same grid)"), optional=True))
        threads = QgsProcessingParameterNumber(
            self.THREADS, self.tr("CPU threads for inference (0 = all cores)"), type=compat.NUMBER_INTEGER,
            defaultValue=0, minValue=0)
        threads.setFlags(threads.flags() | compat.FLAG_ADVANCED)
        self.addParameter(threads)
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT_TABLE, self.tr("Comparison table (CSV)"), fileFilter="CSV files (*.csv)"))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT_REPORT, self.tr("Comparison report (HTML)"), fileFilter="HTML files (*.html)",
            optional=True, createByDefault=False))
        self.addOutput(QgsProcessingOutputFile(self.BEST_MODEL, self.tr("Best model (highest mIoU)")))
        self.addOutput(QgsProcessingOutputNumber(self.BEST_MIOU, self.tr("mIoU of the best model")))
        self.addOutput(QgsProcessingOutputString(self.BEST_NAME, self.tr("File name of the best model")))

    def execute(self, parameters, context, feedback):
        # a list of files; on the command line one ';'-separated string
        models = [p for item in self.parameterAsFileList(parameters, self.MODELS, context)
                  for p in str(item).split(";") if p.strip()]
        if not models:
            raise GullySegError("MODELS: give at least one .onnx model.")
        scene = self.parameterAsRasterLayer(parameters, self.SCENE, context)
        reference = self.parameterAsRasterLayer(parameters, self.REFERENCE, context)
        threads = self.parameterAsInt(parameters, self.THREADS, context) or None
        rows = compare.compare_models(
            models,
            dataset_root=self.parameterAsFile(parameters, self.DATASET, context) or None,
            scene=self.raster_path(scene, self.SCENE) if scene is not None else None,
            reference=self.raster_path(reference, self.REFERENCE) if reference is not None else None,
            output_table=self.parameterAsFileOutput(parameters, self.OUTPUT_TABLE, context),
            output_report=self.parameterAsFileOutput(parameters, self.OUTPUT_REPORT, context) or None,
            threads=threads, feedback=self.engine_feedback(feedback))
        best = rows[0]
        outputs = {self.OUTPUT_TABLE: self.parameterAsFileOutput(parameters, self.OUTPUT_TABLE, context),
                   self.BEST_MODEL: best["path"], self.BEST_MIOU: best["miou"], self.BEST_NAME: best["model"]}
        report = self.parameterAsFileOutput(parameters, self.OUTPUT_REPORT, context)
        if report:
            outputs[self.OUTPUT_REPORT] = report
        return outputs
