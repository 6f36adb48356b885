"""gullyseg:setmodelmetadata - write Deepness/GullySeg metadata into an ONNX model (engine: onnx_model.py)."""

import json

from qgis.core import (
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ... import compat
from ..engine.onnx_model import ACTIVATIONS, set_model_metadata
from .base import GROUP_INFERENCE, GullySegAlgorithm


class SetModelMetadataAlgorithm(GullySegAlgorithm):
    ALG_ID = "setmodelmetadata"
    DISPLAY_NAME = "Set ONNX model metadata"
    GROUP = GROUP_INFERENCE
    HELP = (
        "Writes the metadata that 'Segment gullies with an ONNX model' (and the Deepness plugin) reads into "
        "an existing .onnx file, so users of the model need not know its settings.\n\n"
        "Deepness keys: model_type (Segmentor), class_names (e.g. background,gully), resolution (cm per "
        "pixel; 75 for 0.75 m imagery), tile_size (window in pixels), tiles_overlap (percent of the window), "
        "standardization_mean / standardization_std (per channel, applied after dividing by 255 or INPUT_MAX), "
        "seg_thresh (threshold).\n"
        "GullySeg's key 'gullyseg': INPUT_MAX (pixel value that means 1.0, e.g. 1023 for 10-bit 16-bit "
        "data), ACTIVATION (sigmoid or softmax when the model outputs logits; none when it outputs "
        "probabilities), GULLY_CLASS (output channel of the gully class), GULLY_OUTPUT (the output head, by name "
        "or 0-based index, of a model with several outputs), BANDS (raster bands for the channels, e.g. 3,2,1), "
        "CONTEXT_MARGIN (the model's receptive-field radius in pixels: segment then ignores that many pixels "
        "at inner window edges, so the result equals a whole-image run).\n"
        "CLASS_NAMES for several heads: one list per head separated by |, e.g. edge | background,gully.\n"
        "Contradictions are refused with the key and the value: a GULLY_CLASS that is not a class of "
        "CLASS_NAMES or points at a class named background, a margin that leaves no core of the window, "
        "malformed class names, values out of range.\n\n"
        "Empty values and -1 keep what the model already has; CLEAR removes every Deepness and GullySeg key "
        "first. With no OUTPUT_MODEL the model file itself is updated (atomically: written to a temporary "
        "file, loaded back and checked, then renamed); with OUTPUT_MODEL a copy is written. "
        "The same command exists for the shell: tools/set_model_metadata.py."
    )

    MODEL = "MODEL"
    CLASS_NAMES = "CLASS_NAMES"
    RESOLUTION = "RESOLUTION"
    TILE_SIZE = "TILE_SIZE"
    TILES_OVERLAP = "TILES_OVERLAP"
    MEAN = "MEAN"
    STD = "STD"
    THRESHOLD = "THRESHOLD"
    INPUT_MAX = "INPUT_MAX"
    ACTIVATION = "ACTIVATION"
    GULLY_CLASS = "GULLY_CLASS"
    BANDS = "BANDS"
    GULLY_OUTPUT = "GULLY_OUTPUT"
    CONTEXT_MARGIN = "CONTEXT_MARGIN"
    CLEAR = "CLEAR"
    OVERWRITE = "OVERWRITE"
    OUTPUT_MODEL = "OUTPUT_MODEL"
    METADATA = "METADATA"

    ACTIVATION_OPTIONS = ["Keep"] + list(ACTIVATIONS)

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile(
            self.MODEL, self.tr("ONNX model"), behavior=compat.FILE_FILE, fileFilter="ONNX models (*.onnx)"))
        self.addParameter(QgsProcessingParameterString(
            self.CLASS_NAMES, self.tr("Class names in output-channel order, e.g. background,gully"),
            defaultValue="", optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.RESOLUTION, self.tr("Resolution the model was trained at (cm/px; 0 = keep)"),
            compat.NUMBER_DOUBLE, defaultValue=0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.TILE_SIZE, self.tr("Window size in pixels (0 = keep)"), compat.NUMBER_INTEGER, defaultValue=0,
            minValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            self.TILES_OVERLAP, self.tr("Window overlap in percent (-1 = keep)"), compat.NUMBER_INTEGER,
            defaultValue=-1, minValue=-1, maxValue=99))
        self.addParameter(QgsProcessingParameterString(
            self.MEAN, self.tr("Standardization mean per channel, e.g. 0.485,0.456,0.406"), defaultValue="",
            optional=True))
        self.addParameter(QgsProcessingParameterString(
            self.STD, self.tr("Standardization std per channel, e.g. 0.229,0.224,0.225"), defaultValue="",
            optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.THRESHOLD, self.tr("Segmentation threshold (-1 = keep)"), compat.NUMBER_DOUBLE, defaultValue=-1.0,
            minValue=-1.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.INPUT_MAX, self.tr("Input maximum: pixel value meaning 1.0 (0 = keep; 255 for 8-bit)"),
            compat.NUMBER_DOUBLE, defaultValue=0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterEnum(
            self.ACTIVATION, self.tr("Output activation GullySeg applies"), options=self.ACTIVATION_OPTIONS,
            defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            self.GULLY_CLASS, self.tr("Gully class: output channel index (-1 = keep)"), compat.NUMBER_INTEGER,
            defaultValue=-1, minValue=-1))
        self.addParameter(QgsProcessingParameterString(
            self.BANDS, self.tr("Raster bands for the model's channels, e.g. 3,2,1"), defaultValue="",
            optional=True))
        self.addParameter(QgsProcessingParameterString(
            self.GULLY_OUTPUT, self.tr("Gully output head of a model with several outputs (name or index)"),
            defaultValue="", optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.CONTEXT_MARGIN, self.tr("Context margin: the model's receptive-field radius (pixels, -1 = keep)"),
            compat.NUMBER_INTEGER, defaultValue=-1, minValue=-1))
        self.addParameter(QgsProcessingParameterBoolean(
            self.CLEAR, self.tr("Remove existing Deepness/GullySeg keys first"), defaultValue=False))
        self.addParameter(QgsProcessingParameterBoolean(
            self.OVERWRITE, self.tr("Overwrite OUTPUT_MODEL if it exists"), defaultValue=False))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT_MODEL, self.tr("Write to a copy (empty: update the model file itself)"),
            fileFilter="ONNX models (*.onnx)", optional=True, createByDefault=False))
        self.addOutput(QgsProcessingOutputString(self.METADATA, self.tr("Resulting metadata (JSON)")))

    def execute(self, parameters, context, feedback):
        model = self.parameterAsFile(parameters, self.MODEL, context)
        output = None
        if parameters.get(self.OUTPUT_MODEL) not in (None, ""):
            output = self.parameterAsFileOutput(parameters, self.OUTPUT_MODEL, context) or None
        resolution = self.parameterAsDouble(parameters, self.RESOLUTION, context)
        tile = self.parameterAsInt(parameters, self.TILE_SIZE, context)
        overlap = self.parameterAsInt(parameters, self.TILES_OVERLAP, context)
        threshold = self.parameterAsDouble(parameters, self.THRESHOLD, context)
        input_max = self.parameterAsDouble(parameters, self.INPUT_MAX, context)
        act = self.parameterAsEnum(parameters, self.ACTIVATION, context)
        gully = self.parameterAsInt(parameters, self.GULLY_CLASS, context)
        margin = self.parameterAsInt(parameters, self.CONTEXT_MARGIN, context)
        head = (self.parameterAsString(parameters, self.GULLY_OUTPUT, context) or "").strip()
        meta = set_model_metadata(
            model,
            output=output,
            class_names=self.parameterAsString(parameters, self.CLASS_NAMES, context) or None,
            resolution=resolution if resolution > 0 else None,
            tile_size=tile if tile > 0 else None,
            tiles_overlap=overlap if overlap >= 0 else None,
            mean=self.parameterAsString(parameters, self.MEAN, context) or None,
            std=self.parameterAsString(parameters, self.STD, context) or None,
            threshold=threshold if threshold >= 0 else None,
            input_max=input_max if input_max > 0 else None,
            activation=self.ACTIVATION_OPTIONS[act] if act > 0 else None,
            gully_class=gully if gully >= 0 else None,
            bands=self.parameterAsString(parameters, self.BANDS, context) or None,
            context_margin=margin if margin >= 0 else None,
            gully_output=(int(head) if head.isdigit() else head) if head else None,
            clear=self.parameterAsBool(parameters, self.CLEAR, context),
            overwrite=self.overwrite_files(parameters, context),
            feedback=self.engine_feedback(feedback),
        )
        return {self.OUTPUT_MODEL: output or model, self.METADATA: json.dumps(meta, sort_keys=True)}
