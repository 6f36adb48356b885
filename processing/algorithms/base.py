"""Base class and helpers shared by GullySeg's Processing algorithms."""

import os

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
        return self.tr(self.HELP)

    def icon(self):
        return QIcon(resource_path("icons", self.ICON))

    def tr(self, text):
        return QCoreApplication.translate("GullySeg", text)

    def createInstance(self):  # noqa: N802
        return type(self)()

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        try:
            with signals.terminate_as_interrupt():  # SIGTERM/SIGHUP clean up as Ctrl+C does
                return self.execute(parameters, context, feedback)
        except signals.Terminated as exc:
            signals.reraise(exc)  # outputs are cleaned up: now stop as the signal asked
            raise
        except (Cancelled, GullySegError) as exc:
            raise QgsProcessingException(str(exc)) from None

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

    @staticmethod
    def output_folder(path):
        return os.path.abspath(path) if path else path
