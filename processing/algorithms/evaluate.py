"""gullyseg:evaluate - compare predicted masks with reference masks (OA, mIoU, gully IoU ...)."""

from qgis.core import (
    QgsProcessingOutputNumber,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from ... import compat
from ..engine import metrics
from ..engine.errors import GullySegError
from .base import GROUP_EVALUATION, GullySegAlgorithm


class EvaluateAlgorithm(GullySegAlgorithm):
    ALG_ID = "evaluate"
    DISPLAY_NAME = "Evaluate segmentation"
    GROUP = GROUP_EVALUATION
    HELP = (
        "Compares a predicted class mask with a reference (ground-truth) mask and reports overall "
        "accuracy (OA), mean IoU (mIoU), the IoU of the gully class, and the gully class's precision, "
        "recall and F1, as numbers a model can use.\n\n"
        "Give either two rasters on the same grid (PREDICTION and REFERENCE: same size, geotransform and "
        "CRS, e.g. the mask output of 'Segment gullies with an ONNX model' and a ground-truth mask of the "
        "scene), or two folders of masks matched by file stem (PREDICTION_FOLDER and REFERENCE_FOLDER, e.g. "
        "the masks of a test split and the model's masks of the same tiles).\n\n"
        "Pixels equal to IGNORE_VALUE (default 255) in the reference are excluded from every count. "
        "Prediction pixels equal to it (the model's nodata) where the reference is valid are excluded too, "
        "counted and warned about. CLASSES names the class values 0, 1, ... (default background,gully).\n\n"
        "Convention: mIoU is the mean of the per-class IoU over all classes (background and gully, as in the "
        "published numbers); the gully IoU is given separately because the two are easily confused. A class "
        "absent from both reference and prediction has an undefined IoU (NaN) and is left out of the mean.\n\n"
        "OUTPUT_REPORT (optional): an HTML report with the confusion matrix, per-class IoU and per-tile "
        "scores sorted worst first (tiles of TILE_SIZE pixels when two rasters are compared), plus a JSON and "
        "a CSV file of the same name beside it."
    )

    PREDICTION = "PREDICTION"
    REFERENCE = "REFERENCE"
    PREDICTION_FOLDER = "PREDICTION_FOLDER"
    REFERENCE_FOLDER = "REFERENCE_FOLDER"
    IGNORE_VALUE = "IGNORE_VALUE"
    CLASSES = "CLASSES"
    TILE_SIZE = "TILE_SIZE"
    OUTPUT_REPORT = "OUTPUT_REPORT"
    OA = "OA"
    MIOU = "MIOU"
    IOU_GULLY = "IOU_GULLY"
    PRECISION = "PRECISION"
    RECALL = "RECALL"
    F1 = "F1"
    PIXELS_EVALUATED = "PIXELS_EVALUATED"
    IGNORED_PIXELS = "IGNORED_PIXELS"
    PREDICTION_NODATA = "PREDICTION_NODATA"
    TILE_COUNT = "TILE_COUNT"

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.PREDICTION, self.tr("Predicted mask (raster; or use the folders below)"), optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.REFERENCE, self.tr("Reference mask (ground truth, same grid)"), optional=True))
        self.addParameter(QgsProcessingParameterFile(
            self.PREDICTION_FOLDER, self.tr("Folder of predicted masks (matched by file stem)"),
            behavior=compat.FILE_FOLDER, optional=True))
        self.addParameter(QgsProcessingParameterFile(
            self.REFERENCE_FOLDER, self.tr("Folder of reference masks (e.g. <dataset>/test/masks)"),
            behavior=compat.FILE_FOLDER, optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.IGNORE_VALUE, self.tr("Ignore value (excluded from every count)"), type=compat.NUMBER_INTEGER,
            defaultValue=metrics.DEFAULT_IGNORE, minValue=-2147483648))
        self.addParameter(QgsProcessingParameterString(
            self.CLASSES, self.tr("Class names for the values 0, 1, ... (comma separated)"),
            defaultValue=",".join(metrics.DEFAULT_CLASSES)))
        tile = QgsProcessingParameterNumber(
            self.TILE_SIZE, self.tr("Tile size of the per-tile scores (pixels, two rasters only)"),
            type=compat.NUMBER_INTEGER, defaultValue=256, minValue=1)
        tile.setFlags(tile.flags() | compat.FLAG_ADVANCED)
        self.addParameter(tile)
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT_REPORT, self.tr("Evaluation report (HTML; JSON and CSV beside it)"),
            fileFilter="HTML files (*.html)", optional=True, createByDefault=False))
        for key, label in (
            (self.OA, "Overall accuracy"), (self.MIOU, "Mean IoU (background and gully)"),
            (self.IOU_GULLY, "IoU of the gully class"), (self.PRECISION, "Gully precision"),
            (self.RECALL, "Gully recall"), (self.F1, "Gully F1"),
            (self.PIXELS_EVALUATED, "Pixels evaluated"), (self.IGNORED_PIXELS, "Ignored reference pixels"),
            (self.PREDICTION_NODATA, "Reference pixels without prediction"), (self.TILE_COUNT, "Tiles scored"),
        ):
            self.addOutput(QgsProcessingOutputNumber(key, self.tr(label)))

    def execute(self, parameters, context, feedback):
        fb = self.engine_feedback(feedback)
        pred_layer = self.parameterAsRasterLayer(parameters, self.PREDICTION, context)
        ref_layer = self.parameterAsRasterLayer(parameters, self.REFERENCE, context)
        pred_dir = self.parameterAsFile(parameters, self.PREDICTION_FOLDER, context)
        ref_dir = self.parameterAsFile(parameters, self.REFERENCE_FOLDER, context)
        ignore = self.parameterAsInt(parameters, self.IGNORE_VALUE, context)
        classes = self.parameterAsString(parameters, self.CLASSES, context)
        tile_size = self.parameterAsInt(parameters, self.TILE_SIZE, context)
        report = self.parameterAsFileOutput(parameters, self.OUTPUT_REPORT, context)
        rasters = pred_layer is not None or ref_layer is not None
        folders = bool(pred_dir) or bool(ref_dir)
        if rasters and folders:
            raise GullySegError(
                "Give either PREDICTION and REFERENCE (two rasters) or PREDICTION_FOLDER and REFERENCE_FOLDER "
                "(two folders of masks), not both."
            )
        if rasters:
            if pred_layer is None or ref_layer is None:
                missing = self.PREDICTION if pred_layer is None else self.REFERENCE
                raise GullySegError(f"{missing}: no raster given; PREDICTION and REFERENCE go together.")
            result = metrics.evaluate_rasters(
                self.raster_path(pred_layer, self.PREDICTION), self.raster_path(ref_layer, self.REFERENCE),
                classes=classes, ignore_value=ignore, tile_size=tile_size, feedback=fb)
        elif folders:
            if not pred_dir or not ref_dir:
                missing = self.PREDICTION_FOLDER if not pred_dir else self.REFERENCE_FOLDER
                raise GullySegError(f"{missing}: no folder given; PREDICTION_FOLDER and REFERENCE_FOLDER go together.")
            result = metrics.evaluate_folders(pred_dir, ref_dir, classes=classes, ignore_value=ignore, feedback=fb)
        else:
            raise GullySegError(
                "PREDICTION/REFERENCE: nothing to evaluate; give two rasters (PREDICTION and REFERENCE) or two "
                "folders of masks (PREDICTION_FOLDER and REFERENCE_FOLDER)."
            )
        s = result.scores
        outputs = {
            self.OA: s["oa"], self.MIOU: s["miou"], self.IOU_GULLY: s["iou_gully"],
            self.PRECISION: s["precision"], self.RECALL: s["recall"], self.F1: s["f1"],
            self.PIXELS_EVALUATED: s["pixels"], self.IGNORED_PIXELS: result.ignored,
            self.PREDICTION_NODATA: result.prediction_nodata, self.TILE_COUNT: len(result.tiles),
        }
        if report:
            html_path, json_path, csv_path = metrics.write_report(result, report, overwrite=True)
            fb.info(f"Report: {html_path} (with {json_path} and {csv_path})")
            outputs[self.OUTPUT_REPORT] = html_path
        return outputs
