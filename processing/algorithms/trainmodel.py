"""gullyseg:trainmodel - train a segmentation network on a split dataset and export it to ONNX."""

import os

from qgis.core import (
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsSettings,
)

from ... import compat
from ..engine.errors import GullySegError
from .base import GullySegAlgorithm

GROUP_MODEL = ("model", "Model")

# Mirrors of the engine's choices (the engine module imports without torch; kept equal by a test).
ARCHITECTURES = ["unet", "unetplusplus", "deeplabv3plus", "fpn", "pspnet", "linknet", "manet", "segformer"]
ENCODERS = ["resnet18", "resnet34", "resnet50", "efficientnet-b0", "efficientnet-b1", "efficientnet-b2",
            "efficientnet-b3", "mobilenet_v2", "mit_b0", "mit_b1", "mit_b2"]
LOSSES = ["ce+dice", "ce", "dice", "focal"]
DEVICES = ["auto", "cpu", "cuda"]
DEFAULT_ENCODER = "mobilenet_v2"

# The models trainmodel wrote, newest first (the dock's inference tab can offer them).
SETTINGS_TRAINED_MODELS = "gullyseg/trained_models"
MAX_REMEMBERED = 20


def trained_models():
    """Paths of the models trainmodel wrote on this profile that still exist, newest first."""
    value = QgsSettings().value(SETTINGS_TRAINED_MODELS, []) or []
    if isinstance(value, str):
        value = [value]
    return [p for p in value if p and os.path.isfile(p)]


def remember_trained_model(path):
    paths = [p for p in trained_models() if os.path.abspath(p) != os.path.abspath(path)]
    QgsSettings().setValue(SETTINGS_TRAINED_MODELS, [os.path.abspath(path)] + paths[:MAX_REMEMBERED - 1])


class TrainModelAlgorithm(GullySegAlgorithm):
    ALG_ID = "trainmodel"
    DISPLAY_NAME = "Train gully segmentation model"
    GROUP = GROUP_MODEL
    HELP = (
        "Trains a gully segmentation network on a dataset folder made by 'Split raster into tiles', 'Rasterize "
        "labels to tile masks' and 'Split dataset into train/val/test' (optionally 'Augment image/mask pairs'), "
        "and exports it as an ONNX model that 'Segment gullies with an ONNX model' runs as it is.\n\n"
        "It trains on the train split (with its augmented variants), keeps the epoch with the best val mIoU and "
        "reports the test split with evaluate's conventions (mIoU over background and gully, 255 ignored). A "
        "folder without a split, an empty train list, masks with values other than 0, 1 and 255, or tiles whose "
        "band count differs from the dataset card are refused before training starts.\n\n"
        "ARCHITECTURE and ENCODER come from segmentation-models-pytorch (U-Net, U-Net++, DeepLabV3+, FPN, "
        "PSPNet, LinkNet, MA-Net, SegFormer; resnet18/34/50, efficientnet-b0..b3, mobilenet_v2, mit_b0..b2). "
        "A combination that cannot be exported to ONNX at the dataset's tile size is refused with the reason, "
        "before training. ENCODER_WEIGHTS: none (default, works offline), imagenet (smp's download or local "
        "cache) or the path of a local encoder weights file. FINE_TUNE_FROM: a checkpoint of an earlier run "
        "(same architecture and encoder); FREEZE_ENCODER trains the decoder only.\n\n"
        "LEARNING_RATE: a number or 'auto' (a short learning-rate range test). LOSS: cross-entropy + Dice "
        "(default), cross-entropy, Dice or focal; CLASS_WEIGHTS weighs the classes by their inverse pixel share "
        "in the train split. EARLY_STOPPING: stop after this many epochs without a better val mIoU (0 = off). "
        "AUGMENT: random flips and 90-degree turns on the fly. The same SEED on the CPU with the same THREADS "
        "gives the same model. DEVICE: auto, cpu or cuda (cuda without a GPU is an error); the log names the "
        "device that ran.\n\n"
        "The input scaling is learned from the data: the bands and the 8/16-bit maximum from the dataset card, "
        "the per-channel mean and std from the train split, all written into the model's metadata with the "
        "training record (dataset checksum, split sizes, architecture, epochs, val/test metrics, seed, device, "
        "duration). After export the ONNX model is run on val tiles and must equal the PyTorch model (max "
        "probability difference < 1e-4).\n\n"
        "OUTPUT_CHECKPOINT (optional .pt): written after every epoch; RESUME continues a run from such a file "
        "up to EPOCHS. OUTPUT_REPORT (optional HTML): loss and mIoU curves, the test confusion matrix and test "
        "tiles with reference and prediction, plus a per-epoch CSV beside it. Cancel stops between two batches; "
        "nothing half-written is left.\n\n"
        "Needs PyTorch and segmentation-models-pytorch (not installed with the plugin): "
        "python3 -m pip install torch==2.14.1 torchvision==0.29.1 segmentation-models-pytorch==0.6.0 "
        "(see docs/training.md for CUDA)."
    )

    DATASET = "DATASET"
    ARCHITECTURE = "ARCHITECTURE"
    ENCODER = "ENCODER"
    ENCODER_WEIGHTS = "ENCODER_WEIGHTS"
    FINE_TUNE_FROM = "FINE_TUNE_FROM"
    FREEZE_ENCODER = "FREEZE_ENCODER"
    EPOCHS = "EPOCHS"
    BATCH_SIZE = "BATCH_SIZE"
    LEARNING_RATE = "LEARNING_RATE"
    LOSS = "LOSS"
    CLASS_WEIGHTS = "CLASS_WEIGHTS"
    EARLY_STOPPING = "EARLY_STOPPING"
    AUGMENT = "AUGMENT"
    SEED = "SEED"
    DEVICE = "DEVICE"
    THREADS = "THREADS"
    OUTPUT_MODEL = "OUTPUT_MODEL"
    OUTPUT_CHECKPOINT = "OUTPUT_CHECKPOINT"
    RESUME = "RESUME"
    OUTPUT_REPORT = "OUTPUT_REPORT"
    TEST_OA = "TEST_OA"
    TEST_MIOU = "TEST_MIOU"
    TEST_IOU_GULLY = "TEST_IOU_GULLY"
    TEST_F1 = "TEST_F1"
    BEST_EPOCH = "BEST_EPOCH"

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile(
            self.DATASET, self.tr("Dataset folder (split by splitdataset)"), behavior=compat.FILE_FOLDER))
        self.addParameter(QgsProcessingParameterEnum(
            self.ARCHITECTURE, self.tr("Architecture"), options=ARCHITECTURES, defaultValue="unet",
            usesStaticStrings=True))
        self.addParameter(QgsProcessingParameterEnum(
            self.ENCODER, self.tr("Encoder"), options=ENCODERS, defaultValue=DEFAULT_ENCODER,
            usesStaticStrings=True))
        self.addParameter(QgsProcessingParameterString(
            self.ENCODER_WEIGHTS, self.tr("Encoder weights: none, imagenet or a local weights file"),
            defaultValue="none"))
        self.addParameter(QgsProcessingParameterNumber(
            self.EPOCHS, self.tr("Epochs"), type=compat.NUMBER_INTEGER, defaultValue=30, minValue=1))
        self.addParameter(QgsProcessingParameterNumber(
            self.BATCH_SIZE, self.tr("Batch size"), type=compat.NUMBER_INTEGER, defaultValue=8, minValue=1))
        self.addParameter(QgsProcessingParameterString(
            self.LEARNING_RATE, self.tr("Learning rate (a number, or auto = range test)"), defaultValue="auto"))
        self.addParameter(QgsProcessingParameterEnum(
            self.LOSS, self.tr("Loss"), options=LOSSES, defaultValue="ce+dice", usesStaticStrings=True))
        self.addParameter(QgsProcessingParameterBoolean(
            self.CLASS_WEIGHTS, self.tr("Weigh classes by their inverse pixel share"), defaultValue=False))
        self.addParameter(QgsProcessingParameterNumber(
            self.EARLY_STOPPING, self.tr("Early stopping patience (epochs without a better val mIoU; 0 = off)"),
            type=compat.NUMBER_INTEGER, defaultValue=0, minValue=0))
        self.addParameter(QgsProcessingParameterBoolean(
            self.AUGMENT, self.tr("Random flips and 90-degree turns on the fly"), defaultValue=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.SEED, self.tr("Random seed"), type=compat.NUMBER_INTEGER, defaultValue=42, minValue=0))
        self.addParameter(QgsProcessingParameterEnum(
            self.DEVICE, self.tr("Device"), options=DEVICES, defaultValue="auto", usesStaticStrings=True))
        advanced = [
            QgsProcessingParameterNumber(
                self.THREADS, self.tr("CPU threads (0 = all cores)"), type=compat.NUMBER_INTEGER, defaultValue=0,
                minValue=0),
            QgsProcessingParameterFile(
                self.FINE_TUNE_FROM, self.tr("Fine-tune from an earlier checkpoint (.pt)"), extension="pt",
                optional=True),
            QgsProcessingParameterBoolean(
                self.FREEZE_ENCODER, self.tr("Freeze the encoder (train the decoder only)"), defaultValue=False),
            QgsProcessingParameterFile(
                self.RESUME, self.tr("Resume from a checkpoint (.pt)"), extension="pt", optional=True),
        ]
        for param in advanced:
            param.setFlags(param.flags() | compat.FLAG_ADVANCED)
            self.addParameter(param)
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT_MODEL, self.tr("Trained model (ONNX)"), fileFilter="ONNX models (*.onnx)"))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT_CHECKPOINT, self.tr("Checkpoint (resumable, .pt)"), fileFilter="PyTorch checkpoints (*.pt)",
            optional=True, createByDefault=False))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT_REPORT, self.tr("Training report (HTML; per-epoch CSV beside it)"),
            fileFilter="HTML files (*.html)", optional=True, createByDefault=False))
        for key, label in ((self.TEST_OA, "Test overall accuracy"), (self.TEST_MIOU, "Test mIoU"),
                           (self.TEST_IOU_GULLY, "Test gully IoU"), (self.TEST_F1, "Test gully F1"),
                           (self.BEST_EPOCH, "Best epoch (on val mIoU)")):
            self.addOutput(QgsProcessingOutputNumber(key, self.tr(label)))

    def execute(self, parameters, context, feedback):
        from ..engine.training import deps

        missing = deps.missing()
        if missing:
            raise GullySegError(missing)
        from ..engine.training import trainer

        def text(key):
            return self.parameterAsString(parameters, key, context)

        res = trainer.train_model(
            self.parameterAsFile(parameters, self.DATASET, context),
            self.parameterAsFileOutput(parameters, self.OUTPUT_MODEL, context),
            architecture=text(self.ARCHITECTURE) or "unet",
            encoder=text(self.ENCODER) or DEFAULT_ENCODER,
            encoder_weights=text(self.ENCODER_WEIGHTS).strip() or "none",
            fine_tune_from=self.parameterAsFile(parameters, self.FINE_TUNE_FROM, context) or None,
            freeze_encoder=self.parameterAsBool(parameters, self.FREEZE_ENCODER, context),
            epochs=self.parameterAsInt(parameters, self.EPOCHS, context),
            batch_size=self.parameterAsInt(parameters, self.BATCH_SIZE, context),
            learning_rate=text(self.LEARNING_RATE),
            loss=text(self.LOSS) or "ce+dice",
            class_weights=self.parameterAsBool(parameters, self.CLASS_WEIGHTS, context),
            early_stopping=self.parameterAsInt(parameters, self.EARLY_STOPPING, context),
            augment=self.parameterAsBool(parameters, self.AUGMENT, context),
            seed=self.parameterAsInt(parameters, self.SEED, context),
            device=text(self.DEVICE) or "auto",
            threads=self.parameterAsInt(parameters, self.THREADS, context),
            output_checkpoint=self.parameterAsFileOutput(parameters, self.OUTPUT_CHECKPOINT, context) or None,
            resume=self.parameterAsFile(parameters, self.RESUME, context) or None,
            output_report=self.parameterAsFileOutput(parameters, self.OUTPUT_REPORT, context) or None,
            feedback=self.engine_feedback(feedback),
        )
        remember_trained_model(res["model"])
        test = res["test"] or {}
        nan = float("nan")
        outputs = {
            self.OUTPUT_MODEL: res["model"],
            self.TEST_OA: test.get("oa", nan), self.TEST_MIOU: test.get("miou", nan),
            self.TEST_IOU_GULLY: test.get("iou_gully", nan), self.TEST_F1: test.get("f1", nan),
            self.BEST_EPOCH: res["best_epoch"],
        }
        if res["checkpoint"]:
            outputs[self.OUTPUT_CHECKPOINT] = res["checkpoint"]
        if res["report"]:
            outputs[self.OUTPUT_REPORT] = res["report"]
        return outputs
