"""The GullySeg Processing provider (id 'gullyseg')."""

import glob
import importlib
import inspect
import os
import pkgutil

from qgis.core import QgsMessageLog, QgsProcessingModelAlgorithm, QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .. import compat
from ..metadata import NAME, VERSION, resource_path
from . import algorithms
from .algorithms.base import GullySegAlgorithm


def algorithm_classes():
    """Every concrete GullySegAlgorithm class in processing/algorithms/, sorted by id."""
    found = {}
    for info in pkgutil.iter_modules(algorithms.__path__):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{algorithms.__name__}.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, GullySegAlgorithm) and cls is not GullySegAlgorithm and cls.ALG_ID:
                found[cls.ALG_ID] = cls
    return [found[k] for k in sorted(found)]


def model_files():
    """Graphical models shipped in resources/models/ (offered in the Toolbox)."""
    return sorted(glob.glob(resource_path("models", "*.model3")))


class GullySegProvider(QgsProcessingProvider):
    def id(self):
        return "gullyseg"

    def name(self):
        return NAME

    def longName(self):  # noqa: N802
        return f"{NAME} {VERSION}"

    def icon(self):
        return QIcon(resource_path("icons", "gullyseg.svg"))

    def svgIconPath(self):  # noqa: N802
        return resource_path("icons", "gullyseg.svg")

    def versionInfo(self):  # noqa: N802
        return VERSION

    def loadAlgorithms(self):  # noqa: N802
        for cls in algorithm_classes():
            self.addAlgorithm(cls())
        for path in model_files():
            model = QgsProcessingModelAlgorithm()
            if model.fromFile(path):
                model.setSourceFilePath(path)
                self.addAlgorithm(model)
            else:
                QgsMessageLog.logMessage(
                    f"Could not load the graphical model {os.path.basename(path)}", NAME, compat.MSG_WARNING
                )
