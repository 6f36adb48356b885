"""Base class and helpers shared by GullySeg's Processing algorithms."""

import os

from qgis.core import QgsProcessingAlgorithm, QgsProcessingException
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from ...metadata import resource_path
from ..engine.errors import Cancelled, GullySegError
from ..engine.feedback import Feedback

GROUP_DATASET = ("dataset", "Dataset")
GROUP_INFERENCE = ("inference", "Inference")
GROUP_EVALUATION = ("evaluation", "Evaluation")
GROUP_DEMO = ("demo", "Demo")


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
            return self.execute(parameters, context, feedback)
        except Cancelled as exc:
            raise QgsProcessingException(str(exc)) from None
        except GullySegError as exc:
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
    def layer_source_path(layer):
        """The GDAL/OGR path of a layer's source (drops '|layername=' style suffixes for rasters)."""
        if layer is None:
            return None
        return layer.source()

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
