"""The GullySeg plugin: Processing provider, menu entry, toolbar button and dock."""

from qgis.core import QgsApplication, QgsMessageLog
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon

from . import compat
from .metadata import NAME, resource_path


class GullySegPlugin:
    """Works with ``iface=None`` (qgis_process): then only the provider is registered."""

    MENU = "&" + NAME

    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.action = None
        self.dock = None

    # Processing ---------------------------------------------------------------------
    def initProcessing(self):  # noqa: N802 (QGIS API name)
        if self.provider is not None:
            return True
        from .processing.provider import GullySegProvider

        provider = GullySegProvider()
        if not QgsApplication.processingRegistry().addProvider(provider):
            message = (
                f"{NAME}: the Processing provider could not be registered "
                "(is another provider with id 'gullyseg' installed?)."
            )
            QgsMessageLog.logMessage(message, NAME, compat.MSG_CRITICAL)
            if self.iface is not None:
                self.iface.messageBar().pushMessage(NAME, message, compat.MSG_CRITICAL, 0)
            return False
        self.provider = provider
        return True

    # GUI ------------------------------------------------------------------------------
    def initGui(self):  # noqa: N802
        self.initProcessing()
        if self.iface is None:
            return
        from .ui.dock import GullySegDock

        self.dock = GullySegDock(self.iface, self.iface.mainWindow())
        self.dock.setObjectName("GullySegDock")
        self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.dock.hide()

        self.action = compat.QAction(QIcon(resource_path("icons", "gullyseg.svg")), NAME, self.iface.mainWindow())
        self.action.setObjectName("GullySegToggleDock")
        self.action.setCheckable(True)
        self.action.setToolTip(f"{NAME}: show or hide the screening and inference dock")
        self.action.toggled.connect(self.dock.setVisible)
        self.dock.visibilityChanged.connect(self.action.setChecked)
        self.iface.addPluginToRasterMenu(self.MENU, self.action)
        self.iface.addRasterToolBarIcon(self.action)

    def unload(self):
        if self.action is not None:
            self.iface.removePluginRasterMenu(self.MENU, self.action)
            self.iface.removeRasterToolBarIcon(self.action)
            self.action.deleteLater()
            self.action = None
        if self.dock is not None:
            self.dock.shutdown()
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
