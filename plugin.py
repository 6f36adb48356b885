"""The GullySeg plugin: Processing provider, menu entries, toolbar button and dock.

Menu: Plugins > GullySeg > (GullySeg dock | Install dependencies…), one level deep. The toolbar
button sits on the Plugins toolbar, which a default profile shows. At start-up the plugin's own
package folder (where Install dependencies… puts onnxruntime) is appended to sys.path.
"""

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
        self.deps_action = None
        self.deps_dialog = None
        self.dock = None
        self._activate_packages()

    @staticmethod
    def _activate_packages():
        """Append the profile's gullyseg_packages/pyX.Y folder to sys.path (when it exists)."""
        try:
            from .ui.deps_dialog import activate_packages_folder

            activate_packages_folder()
        except Exception as exc:  # noqa: BLE001 (a broken folder must not stop the plugin)
            QgsMessageLog.logMessage(f"{NAME}: the plugin's package folder was not added: {exc}", NAME,
                                     compat.MSG_WARNING)

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
        self.iface.addPluginToMenu(self.MENU, self.action)
        self.iface.addToolBarIcon(self.action)

        self.deps_action = compat.QAction("Install dependencies…", self.iface.mainWindow())
        self.deps_action.setObjectName("GullySegInstallDependencies")
        self.deps_action.setToolTip(f"Install onnxruntime (and, on request, PyTorch) for {NAME} without a terminal")
        self.deps_action.triggered.connect(self.show_dependencies_dialog)
        self.iface.addPluginToMenu(self.MENU, self.deps_action)
        self.dock.inference.installDependenciesRequested.connect(self.show_dependencies_dialog)

    def show_dependencies_dialog(self, *_args):
        """The Install dependencies… dialog (one instance; raised when already open)."""
        from .ui.deps_dialog import DependenciesDialog

        if self.deps_dialog is None:
            parent = self.iface.mainWindow() if self.iface is not None else None
            self.deps_dialog = DependenciesDialog(parent)
            self.deps_dialog.finishedInstall.connect(self._on_dependencies_installed)
        self.deps_dialog.show()
        self.deps_dialog.raise_()
        self.deps_dialog.activateWindow()
        return self.deps_dialog

    def _on_dependencies_installed(self, ok, _text):
        """After a successful install the inference tab reads its model again (now it can)."""
        if ok and self.dock is not None:
            self.dock.inference.refresh_model()

    def unload(self):
        if self.action is not None:
            self.iface.removePluginMenu(self.MENU, self.action)
            self.iface.removeToolBarIcon(self.action)
            self.action.deleteLater()
            self.action = None
        if self.deps_action is not None:
            self.iface.removePluginMenu(self.MENU, self.deps_action)
            self.deps_action.deleteLater()
            self.deps_action = None
        if self.deps_dialog is not None:
            self.deps_dialog.reject()
            self.deps_dialog.deleteLater()
            self.deps_dialog = None
        if self.dock is not None:
            self.dock.shutdown()
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
