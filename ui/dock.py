"""The GullySeg dock: a tab for screening tiles and a tab for ONNX inference."""

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QDockWidget, QFrame, QScrollArea, QTabWidget

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
        # each tab scrolls when the dock is shorter than the tab's minimum height
        self.tabs.addTab(self._scrolling(self.screening), "Screening")
        self.tabs.addTab(self._scrolling(self.inference), "Inference")
        self.tabs.setTabToolTip(0, "Step 2: keep or reject tiles with the keyboard (K, R, S, U, arrows, G)")
        self.tabs.setTabToolTip(1, "Map gullies over a raster layer with an ONNX model")
        self.tabs.currentChanged.connect(self._on_tab_changed)

    def _scrolling(self, widget):
        area = QScrollArea(self.tabs)
        area.setWidgetResizable(True)
        area.setFrameShape(QFrame.Shape.NoFrame)
        area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)  # only below the minimum
        area.setWidget(widget)
        return area

    def tab_page(self, widget):
        """The page of the tab widget that holds ``widget`` (its scroll area)."""
        for i in range(self.tabs.count()):
            page = self.tabs.widget(i)
            if page is widget or (isinstance(page, QScrollArea) and page.widget() is widget):
                return page
        return None

    def show_tab(self, widget):
        self.tabs.setCurrentWidget(self.tab_page(widget))

    def _on_tab_changed(self, index):
        page = self.tabs.widget(index)
        if page is not None and page is self.tab_page(self.screening):
            self.screening.tileView.setFocus()

    def shutdown(self):
        """Stop background work and release layers before the plugin unloads."""
        for tab in (getattr(self, "screening", None), getattr(self, "inference", None)):
            if tab is not None:
                tab.shutdown()
