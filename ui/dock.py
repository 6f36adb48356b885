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
        from .inference import InferenceTab
        from .screening import ScreeningTab

        self.screening = ScreeningTab(iface, self.tabs)
        self.screening.setObjectName("GullySegScreeningTab")
        self.inference = InferenceTab(iface, self.tabs)
        self.inference.setObjectName("GullySegInferenceTab")
        self.tabs.addTab(self.screening, "Screening")
        self.tabs.addTab(self.inference, "Inference")
        self.tabs.setTabToolTip(0, "Step 2: keep or reject tiles with the keyboard (K, R, S, U, arrows, G)")
        self.tabs.setTabToolTip(1, "Map gullies over a raster layer with an ONNX model")
        self.tabs.currentChanged.connect(self._on_tab_changed)

    def _on_tab_changed(self, index):
        if self.tabs.widget(index) is self.screening:
            self.screening.tileView.setFocus()

    def shutdown(self):
        """Stop background work and release layers before the plugin unloads."""
        for tab in (getattr(self, "screening", None), getattr(self, "inference", None)):
            if tab is not None:
                tab.shutdown()
