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


# graphical models: stable id (model_name in the .model3) -> the name the Toolbox shows
MODEL_DISPLAY_NAMES = {"builddataset": "Build a training dataset"}


class GullySegModel(QgsProcessingModelAlgorithm):
    """A shipped graphical model under a readable name ("Build a training dataset"); its id stays
    the model_name of the file (gullyseg:builddataset), which scripts and qgis_process use."""

    def displayName(self):  # noqa: N802
        return MODEL_DISPLAY_NAMES.get(self.name(), super().displayName())

    def createInstance(self):  # noqa: N802
        instance = GullySegModel()
        instance.loadVariant(self.toVariant())
        instance.setSourceFilePath(self.sourceFilePath())
        instance.show_outputs_plainly()
        return instance

    def show_outputs_plainly(self):
        """Model outputs copy their child's flags: gridtiles' advanced tile-index path would open an
        Advanced box in the dialog that shows nothing (outputs are listed with the outputs)."""
        for definition in self.destinationParameterDefinitions():
            if definition.flags() & compat.FLAG_ADVANCED:
                definition.setFlags(definition.flags() & ~compat.FLAG_ADVANCED)


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
            model = GullySegModel()
            if model.fromFile(path):
                model.setSourceFilePath(path)
                model.show_outputs_plainly()
                self.addAlgorithm(model)
            else:
                QgsMessageLog.logMessage(
                    f"Could not load the graphical model {os.path.basename(path)}", NAME, compat.MSG_WARNING
                )
