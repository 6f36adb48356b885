"""gullyseg:augment - Augment image/mask pairs (step 5), recorded and leak-safe."""

from qgis.core import (
    QgsProcessingOutputFile,
    QgsProcessingOutputFolder,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRange,
)

from ... import compat
from ..engine import augment, split
from .base import GROUP_DATASET, GullySegAlgorithm


class AugmentAlgorithm(GullySegAlgorithm):
    ALG_ID = "augment"
    DISPLAY_NAME = "Augment image/mask pairs"
    GROUP = GROUP_DATASET
    HELP = (
        "Step 5 of the GullySeg workflow: writes COPIES augmented variants of every tile of the chosen "
        "splits (default train only; all tiles while the dataset is not split yet) to "
        "&lt;dataset&gt;/augmented/images|masks/&lt;tile_id&gt;__aNN.tif|.jpg. Each variant gets one of the "
        "selected geometric transforms (flips, rotations by 90/180/270 degrees counter-clockwise, transpose, "
        "anti-transpose), applied identically to image and mask, then every selected radiometric transform "
        "(brightness factor, contrast factor around the band mean, gamma) with a parameter drawn from its "
        "range, applied to the image only. Masks are never interpolated nor changed radiometrically; "
        "images keep their data type (uint16 stays uint16), are clipped to their radiometric range (the bit "
        "depth, e.g. 0..1023 for 10-bit data) and nodata pixels stay nodata. Variants carry no geotransform "
        "and no CRS: they are training samples, not map tiles.<br><br>"
        "Every variant is recorded in augment.json (source tile, ordered transforms with their parameters, "
        "seed, split), inherits its source's split and is added to that split's list file and folders. "
        "Same SEED, same files. A re-run replaces the variants of the previous run; COPIES=0 removes them. "
        "<b>OVERWRITE</b>: replace files in augmented/ that this step did not write."
    )

    DATASET = "DATASET"
    SPLITS = "SPLITS"
    TRANSFORMS = "TRANSFORMS"
    COPIES = "COPIES"
    BRIGHTNESS = "BRIGHTNESS"
    CONTRAST = "CONTRAST"
    GAMMA = "GAMMA"
    SEED = "SEED"
    OVERWRITE = "OVERWRITE"
    OUTPUT_DIR = "OUTPUT_DIR"
    MANIFEST = "MANIFEST"
    AUGMENTED_COUNT = "AUGMENTED_COUNT"

    TRANSFORM_LABELS = {
        "hflip": "Horizontal flip", "vflip": "Vertical flip", "rot90": "Rotate 90 degrees",
        "rot180": "Rotate 180 degrees", "rot270": "Rotate 270 degrees", "transpose": "Transpose",
        "antitranspose": "Anti-transpose", "brightness": "Brightness", "contrast": "Contrast", "gamma": "Gamma",
    }

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile(
            self.DATASET, self.tr("Dataset folder"), behavior=compat.FILE_FOLDER))
        self.addParameter(QgsProcessingParameterEnum(
            self.SPLITS, self.tr("Splits to augment (ignored while the dataset is not split)"),
            options=list(split.SPLITS), allowMultiple=True, defaultValue=[0]))
        self.addParameter(QgsProcessingParameterEnum(
            self.TRANSFORMS, self.tr("Transforms"), options=[self.TRANSFORM_LABELS[t] for t in augment.TRANSFORMS],
            allowMultiple=True,
            defaultValue=[augment.TRANSFORMS.index(t) for t in augment.DEFAULT_TRANSFORMS]))
        self.addParameter(QgsProcessingParameterNumber(
            self.COPIES, self.tr("Variants per original (0 removes earlier variants)"), compat.NUMBER_INTEGER,
            defaultValue=4, minValue=0, maxValue=999))
        for key, label in ((self.BRIGHTNESS, "Brightness factor range"), (self.CONTRAST, "Contrast factor range"),
                           (self.GAMMA, "Gamma range")):
            # optional: QGIS 3.22 refuses a missing range value despite its default
            self.addParameter(QgsProcessingParameterRange(
                key, self.tr(label), compat.NUMBER_DOUBLE,
                defaultValue=",".join(f"{v:g}" for v in augment.DEFAULT_RANGES[key.lower()]), optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.SEED, self.tr("Random seed"), compat.NUMBER_INTEGER, defaultValue=42, minValue=0))
        self.addParameter(QgsProcessingParameterBoolean(
            self.OVERWRITE, self.tr("Replace files this step did not write"), defaultValue=False))
        self.addOutput(QgsProcessingOutputFolder(self.OUTPUT_DIR, self.tr("Dataset folder")))
        self.addOutput(QgsProcessingOutputFile(self.MANIFEST, self.tr("Augmentation manifest (augment.json)")))
        self.addOutput(QgsProcessingOutputNumber(self.AUGMENTED_COUNT, self.tr("Variants written")))

    def execute(self, parameters, context, feedback):
        root = self.output_folder(self.parameterAsFile(parameters, self.DATASET, context))
        splits = [split.SPLITS[i] for i in self.parameterAsEnums(parameters, self.SPLITS, context)]
        transforms = [augment.TRANSFORMS[i] for i in self.parameterAsEnums(parameters, self.TRANSFORMS, context)]
        result = augment.augment_dataset(
            root,
            splits=splits,
            transforms=transforms,
            copies=self.parameterAsInt(parameters, self.COPIES, context),
            brightness=self._range(parameters, self.BRIGHTNESS, context),
            contrast=self._range(parameters, self.CONTRAST, context),
            gamma=self._range(parameters, self.GAMMA, context),
            seed=self.parameterAsInt(parameters, self.SEED, context),
            overwrite=self.parameterAsBoolean(parameters, self.OVERWRITE, context),
            feedback=self.engine_feedback(feedback),
        )
        return {self.OUTPUT_DIR: root, self.MANIFEST: result.manifest, self.AUGMENTED_COUNT: result.count}

    def _range(self, parameters, key, context):
        """(min, max) of a range parameter; the default when it is left empty."""
        values = self.parameterAsRange(parameters, key, context)
        return tuple(values) if len(values) == 2 else augment.DEFAULT_RANGES[key.lower()]
