"""gullyseg:splitdataset - Split dataset into train/val/test (step 6), leak-free."""

from qgis.core import (
    QgsProcessingOutputFile,
    QgsProcessingOutputFolder,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ... import compat
from ..engine import split
from .base import GROUP_DATASET, GullySegAlgorithm


class SplitDatasetAlgorithm(GullySegAlgorithm):
    ALG_ID = "splitdataset"
    DISPLAY_NAME = "Split dataset into train/val/test"
    GROUP = GROUP_DATASET
    HELP = (
        "Step 6 of the GullySeg workflow: splits the tiles of a dataset folder (the kept tiles, or all "
        "when none is marked keep) into train, val and test without leakage. Whole groups are assigned: "
        "a source tile with all its augmented variants (STRATEGY 0), or a spatial block of BLOCK_SIZE x "
        "BLOCK_SIZE neighbouring tiles (STRATEGY 1, limits spatial autocorrelation between train and test). "
        "So the published order (augment everything, then split) cannot put copies of one tile into both "
        "train and test.<br><br>"
        "<b>RATIOS</b>: three non-negative numbers for train, val, test, e.g. 6:2:2, 0.7,0.15,0.15 or 1:0:0; "
        "split sizes are within one group of them. <b>SEED</b>: same seed, same split. <b>STRATIFY</b>: "
        "balance the share of gully pixels across the splits (groups binned by gully share). "
        "<b>MATERIALIZE</b>: also fill &lt;dataset&gt;/train|val|test/images|masks with hard links (copies "
        "where the file system refuses links); a re-run replaces exactly the files of the previous run. "
        "<b>OVERWRITE</b>: replace list or folder files that this step did not write.<br><br>"
        "Writes train.txt, val.txt, test.txt (one sample id, the file stem, per line), split.json (every "
        "sample's image and mask paths, source tile, group and split), the split field of the tile index and "
        "the dataset card. Refuses (and lists them) when tiles have no mask: rasterise the labels first."
    )

    DATASET = "DATASET"
    RATIOS = "RATIOS"
    SEED = "SEED"
    STRATEGY = "STRATEGY"
    BLOCK_SIZE = "BLOCK_SIZE"
    STRATIFY = "STRATIFY"
    MATERIALIZE = "MATERIALIZE"
    OVERWRITE = "OVERWRITE"
    OUTPUT_DIR = "OUTPUT_DIR"
    MANIFEST = "MANIFEST"
    TRAIN_COUNT = "TRAIN_COUNT"
    VAL_COUNT = "VAL_COUNT"
    TEST_COUNT = "TEST_COUNT"
    TRAIN_TILES = "TRAIN_TILES"
    VAL_TILES = "VAL_TILES"
    TEST_TILES = "TEST_TILES"
    SUMMARY = "SUMMARY"

    STRATEGY_OPTIONS = ["By source tile (variants follow their original)", "Spatial blocks of tiles"]

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile(
            self.DATASET, self.tr("Dataset folder"), behavior=compat.FILE_FOLDER))
        self.addParameter(QgsProcessingParameterString(
            self.RATIOS, self.tr("Ratios train:val:test"), defaultValue="6:2:2"))
        self.addParameter(QgsProcessingParameterNumber(
            self.SEED, self.tr("Random seed"), compat.NUMBER_INTEGER, defaultValue=42, minValue=0))
        self.addParameter(QgsProcessingParameterEnum(
            self.STRATEGY, self.tr("Groups kept together"), options=self.STRATEGY_OPTIONS,
            defaultValue=split.STRATEGY_TILE))
        self.addParameter(QgsProcessingParameterNumber(
            self.BLOCK_SIZE, self.tr("Block size (tiles x tiles, spatial blocks only)"), compat.NUMBER_INTEGER,
            defaultValue=4, minValue=1))
        self.addParameter(QgsProcessingParameterBoolean(
            self.STRATIFY, self.tr("Balance the gully pixel share across splits"), defaultValue=True))
        self.addParameter(QgsProcessingParameterBoolean(
            self.MATERIALIZE, self.tr("Write train/val/test folders (hard links)"), defaultValue=True))
        self.addParameter(QgsProcessingParameterBoolean(
            self.OVERWRITE, self.tr("Replace files this step did not write"), defaultValue=False))
        self.addOutput(QgsProcessingOutputFolder(self.OUTPUT_DIR, self.tr("Dataset folder")))
        self.addOutput(QgsProcessingOutputFile(self.MANIFEST, self.tr("Split manifest (split.json)")))
        self.addOutput(QgsProcessingOutputNumber(self.TRAIN_COUNT, self.tr("Train samples")))
        self.addOutput(QgsProcessingOutputNumber(self.VAL_COUNT, self.tr("Validation samples")))
        self.addOutput(QgsProcessingOutputNumber(self.TEST_COUNT, self.tr("Test samples")))
        self.addOutput(QgsProcessingOutputNumber(self.TRAIN_TILES, self.tr("Train source tiles")))
        self.addOutput(QgsProcessingOutputNumber(self.VAL_TILES, self.tr("Validation source tiles")))
        self.addOutput(QgsProcessingOutputNumber(self.TEST_TILES, self.tr("Test source tiles")))
        self.addOutput(QgsProcessingOutputString(self.SUMMARY, self.tr("Per-split summary")))

    def execute(self, parameters, context, feedback):
        root = self.output_folder(self.parameterAsFile(parameters, self.DATASET, context))
        result = split.split_dataset(
            root,
            ratios=self.parameterAsString(parameters, self.RATIOS, context),
            seed=self.parameterAsInt(parameters, self.SEED, context),
            strategy=self.parameterAsEnum(parameters, self.STRATEGY, context),
            block_size=self.parameterAsInt(parameters, self.BLOCK_SIZE, context),
            stratify=self.parameterAsBoolean(parameters, self.STRATIFY, context),
            materialize=self.parameterAsBoolean(parameters, self.MATERIALIZE, context),
            overwrite=self.parameterAsBoolean(parameters, self.OVERWRITE, context),
            feedback=self.engine_feedback(feedback),
        )
        return {
            self.OUTPUT_DIR: root,
            self.MANIFEST: result.manifest,
            self.TRAIN_COUNT: result.counts["train"],
            self.VAL_COUNT: result.counts["val"],
            self.TEST_COUNT: result.counts["test"],
            self.TRAIN_TILES: result.tiles["train"],
            self.VAL_TILES: result.tiles["val"],
            self.TEST_TILES: result.tiles["test"],
            self.SUMMARY: result.summary_text,
        }
