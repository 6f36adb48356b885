"""Base class and helpers shared by GullySeg's Processing algorithms."""

import os
import re

from qgis.core import QgsFeatureRequest, QgsProcessingAlgorithm, QgsProcessingException
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from ...metadata import resource_path
from ..engine import signals
from ..engine.errors import Cancelled, GullySegError
from ..engine.feedback import Feedback

GROUP_DATASET = ("dataset", "Dataset")
GROUP_INFERENCE = ("inference", "Inference")
GROUP_EVALUATION = ("evaluation", "Evaluation")
GROUP_DEMO = ("demo", "Demo")

# The help panel's "Open help" button: each algorithm's section of the docs in the repository.
DOCS_BASE_URL = "https://github.com/gullyseg/gullyseg/blob/main/"
HELP_DOCS = {
    "gridtiles": "docs/tiling.md#grid-division-gullyseggridtiles-split-raster-into-tiles",
    "exportlabelme": "docs/labels.md#step-3-export-annotate",
    "rasterizelabels": "docs/labels.md#step-4-rasterise",
    "splitdataset": "docs/augment_split.md#splitdataset",
    "augment": "docs/augment_split.md#augment",
    "segment": "docs/models.md#how-a-scene-is-processed",
    "setmodelmetadata": "docs/models.md#metadata-keys",
    "evaluate": "docs/demo.md#evaluation-gullysegevaluate",
    "syntheticscene": "docs/synthetic.md#how-to-make-one",
    "trainmodel": "docs/training.md",
    "comparemodels": "docs/training.md",
    "segmentmany": "docs/scale.md",
}
HELP_FALLBACK = "README.md#algorithms"
_HTML_TAGS = ("b", "i", "br", "p", "ul", "ol", "li", "code", "a", "em", "strong", "tt", "pre", "table", "tr", "td",
              "th", "h1", "h2", "h3", "h4", "span", "div", "sub", "sup")
_TAG_ALTERNATIVES = "|".join(_HTML_TAGS)
_PLACEHOLDER = re.compile(rf"<(?!/?(?:{_TAG_ALTERNATIVES})\b[^<>]*>)([^<>]+)>")


_PARAMETER_KEY = re.compile(r"<b>([A-Z][A-Z0-9_]*)</b>")


def escape_placeholders(text):
    """'<dataset folder>/index.gpkg' renders as typed in QGIS's (HTML) help panel; real tags stay."""
    return _PLACEHOLDER.sub(lambda m: f"&lt;{m.group(1)}&gt;", text or "")


def features_in_crs(source, crs, context, what, with_attribute=None):
    """Yield (wkt, attribute value) of a feature source's geometries reprojected to ``crs``.

    The one way algorithms hand polygon layers (any CRS) to the engine: as WKT in the CRS the
    engine works in (scene, tile index). Empty geometries are skipped."""
    if not source.sourceCrs().isValid():
        raise GullySegError(f"{what}: the layer has no CRS; set its CRS first (Layer Properties > Source).")
    request = QgsFeatureRequest()
    request.setDestinationCrs(crs, context.transformContext())
    for feature in source.getFeatures(request):
        geom = feature.geometry()
        if geom is None or geom.isNull() or geom.isEmpty():
            continue
        value = None
        if with_attribute:
            value = feature[with_attribute]
            if value is None or (hasattr(value, "isNull") and value.isNull()):
                value = None
            elif isinstance(value, float) and value.is_integer():
                value = int(value)
            elif not isinstance(value, (int, str)):
                value = str(value)
        yield geom.asWkt(), value


def running_in_qgis_gui():
    """True inside QGIS desktop (its file dialogs ask before replacing a file); False under
    qgis_process and in stand-alone scripts."""
    from qgis.core import QgsApplication

    if QgsApplication.instance() is None or QgsApplication.platform() == "qgis_process":
        return False
    if QgsApplication.platform() == "desktop":
        return True
    try:
        from qgis.utils import iface
    except ImportError:
        return False
    return iface is not None


class QgisFeedback(Feedback):
    """Adapts a QgsProcessingFeedback (may be None) to the engine's Feedback."""

    def __init__(self, feedback):
        self._fb = feedback

    def progress(self, percent):
        if self._fb is not None:
            self._fb.setProgress(percent)

    def is_cancelled(self):
        return self._fb is not None and self._fb.isCanceled()

    def info(self, message):
        if self._fb is not None:
            self._fb.pushInfo(message)

    def warn(self, message):
        if self._fb is not None:
            self._fb.pushWarning(message)


class GullySegAlgorithm(QgsProcessingAlgorithm):
    """Subclasses set ALG_ID, DISPLAY_NAME, GROUP, HELP and implement ``initAlgorithm`` and ``execute``.

    ``execute(parameters, context, feedback)`` returns the outputs dict; engine errors
    (GullySegError) become QgsProcessingException with the same message.
    """

    ALG_ID = None  # stable, lowercase: saved models and scripts refer to it
    DISPLAY_NAME = None
    GROUP = GROUP_DATASET
    HELP = None
    ICON = "gullyseg.svg"

    def name(self):
        return self.ALG_ID

    def displayName(self):  # noqa: N802
        return self.tr(self.DISPLAY_NAME)

    def group(self):
        return self.tr(self.GROUP[1])

    def groupId(self):  # noqa: N802
        return self.GROUP[0]

    def shortHelpString(self):  # noqa: N802
        return self.help_with_labels(escape_placeholders(self.tr(self.HELP)))

    def help_with_labels(self, text):
        """Help speaks of parameters by their on-screen labels: <b>TILE_SIZE</b> becomes
        <b>Tile size</b> (TILE_SIZE), the key kept for qgis_process and scripts."""
        def label(match):
            key = match.group(1)
            definition = self.parameterDefinition(key) if self.parameterDefinitions() else None
            if definition is None:
                output = self.outputDefinition(key)
                if output is None:
                    return match.group(0)
                return f"<b>{escape_placeholders(output.description())}</b> ({key})"
            return f"<b>{escape_placeholders(definition.description())}</b> ({key})"

        return _PARAMETER_KEY.sub(label, text or "")

    def helpUrl(self):  # noqa: N802
        """The algorithm's section of the docs (HELP_DOC on a class overrides the table above)."""
        return DOCS_BASE_URL + (getattr(self, "HELP_DOC", None) or HELP_DOCS.get(self.ALG_ID) or HELP_FALLBACK)

    def icon(self):
        return QIcon(resource_path("icons", self.ICON))

    def tr(self, text):
        return QCoreApplication.translate("GullySeg", text)

    def createInstance(self):  # noqa: N802
        return type(self)()

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        try:
            self._styling_run = (dict(parameters), None)
            with signals.terminate_as_interrupt():  # SIGTERM/SIGHUP clean up as Ctrl+C does
                results = self.execute(parameters, context, feedback)
            self._styling_run = (dict(parameters), results)
            return results
        except signals.Terminated as exc:
            signals.reraise(exc)  # outputs are cleaned up: now stop as the signal asked
            raise
        except Cancelled as exc:
            raise QgsProcessingException(str(exc)) from None
        except GullySegError as exc:
            message = str(exc)
            if "onnxruntime is not installed" in message:
                message += (" In QGIS: Plugins > GullySeg > Install dependencies… installs it into the plugin's own "
                            "folder (no terminal, no administrator rights); qgis_process then finds it too.")
            raise QgsProcessingException(message) from None

    def postProcessAlgorithm(self, context, feedback):  # noqa: N802
        """Style and name the layers QGIS will load (Toolbox, batch, models): processing/styling.py."""
        parameters, results = getattr(self, "_styling_run", (None, None))
        if results:
            from ..styling import attach, label_for

            try:
                attach(self.ALG_ID, results, context, label_for(self, parameters, context))
            except Exception as exc:  # noqa: BLE001 (a style must never fail a finished run)
                if feedback is not None:
                    feedback.pushWarning(f"The output layers could not be styled: {exc}")
        return {}

    def execute(self, parameters, context, feedback):
        """Parameters in, one engine call, outputs dict out. (Not ``run``: that name is
        QgsProcessingAlgorithm.run, which QGIS's processing.run calls.)"""
        raise NotImplementedError

    # helpers for subclasses ---------------------------------------------------------
    @staticmethod
    def engine_feedback(feedback):
        return QgisFeedback(feedback)

    @staticmethod
    def raster_path(layer, what):
        """GDAL-openable path of a raster layer, or a clear error for non-GDAL providers."""
        if layer is None:
            raise GullySegError(f"{what}: no raster layer given.")
        if layer.providerType() != "gdal":
            raise GullySegError(
                f"{what}: layer '{layer.name()}' comes from the '{layer.providerType()}' provider; "
                "GullySeg reads rasters with GDAL (files, VRTs, /vsi paths). Save it to a GeoTIFF first."
            )
        return layer.source()

    def overwrite_files(self, parameters, context, key="OVERWRITE"):
        """Whether existing output FILES may be replaced: OVERWRITE, or QGIS desktop, where the
        output's file dialog has already asked "replace?". qgis_process (and any other platform)
        still needs OVERWRITE. Never used for folders that hold a dataset: those keep their refusal."""
        if self.parameterDefinition(key) is not None and self.parameterAsBool(parameters, key, context):
            return True
        return running_in_qgis_gui()

    @staticmethod
    def output_folder(path):
        return os.path.abspath(path) if path else path
