"""The GullySeg dock: a tab for screening tiles and a tab for ONNX inference."""

from qgis.PyQt.QtWidgets import QDockWidget, QTabWidget

from ..metadata import NAME


class GullySegDock(QDockWidget):
    def __init__(self, iface, parent=None):
        super().__init__(NAME, parent)
        self.iface = iface
        self.tabs = QTabWidget(self)
        self.tabs.setObjectName("GullySegTabs")
        self.setWidget(self.tabs)

    def shutdown(self):
        """Stop background work and release layers before the plugin unloads."""
