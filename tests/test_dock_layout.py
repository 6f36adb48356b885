"""The dock at its narrowest: nothing on the Inference tab is clipped once a model is loaded, and a
status message that wraps does not make the layout jump."""

import pytest
from dock_window import docked
from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QPoint, Qt


@pytest.fixture
def dock(qgis_iface, qgis_new_project):
    with docked(qgis_iface, 1280, 800) as widget:
        yield widget


def _inside(widget, area):
    """True when ``widget`` lies wholly inside the scroll area's viewport."""
    viewport = area.viewport()
    top_left = widget.mapTo(viewport, QPoint(0, 0))
    return top_left.x() >= 0 and top_left.x() + widget.width() <= viewport.width()


def test_inference_tab_fits_the_docks_narrowest_width_with_a_model_loaded(dock):
    tab = dock.inference
    dock.show_tab(tab)
    assert tab.wait_for_model_info()
    assert "Runs on" in tab.modelInfoLabel.text()
    narrowest = dock.screening.minimumSizeHint().width()  # the dock is never narrower than the screening tab
    assert narrowest <= 340  # what the screening tab needed before the keys line, band choice and report
    assert tab.minimumSizeHint().width() <= narrowest
    main = dock.parentWidget()
    main.resizeDocks([dock], [narrowest + 24], Qt.Orientation.Horizontal)
    for _ in range(5):
        QgsApplication.processEvents()
    area = dock.tab_page(tab)
    assert not area.horizontalScrollBar().isVisible()
    tab.filesRadio.setChecked(True)
    QgsApplication.processEvents()
    for widget in (tab.modelWidget, tab.folderWidget, tab.polygonsCheck, tab.maskCheck, tab.probabilityCheck,
                   tab.runButton, tab.cancelButton, tab.modelInfoLabel):
        assert _inside(widget, area), widget.objectName()


def test_a_wrapping_status_line_does_not_move_the_layout(dock):
    tab = dock.inference
    dock.show_tab(tab)
    dock.parentWidget().resizeDocks([dock], [dock.screening.minimumSizeHint().width() + 24],
                                    Qt.Orientation.Horizontal)
    assert tab.wait_for_model_info()
    QgsApplication.processEvents()
    tab._message("Running …")
    QgsApplication.processEvents()
    below = tab.logView.mapTo(tab, QPoint(0, 0)).y()
    text = "Done: 3 layer(s) added (gully area 12.34 ha, ran on CPUExecutionProvider)."
    tab._message(text)
    QgsApplication.processEvents()
    assert tab.messageLabel.fontMetrics().horizontalAdvance(text) > tab.messageLabel.width()  # it does wrap
    assert tab.logView.mapTo(tab, QPoint(0, 0)).y() == below
