"""Screening stays on the keyboard: the whole dock in QGIS's main window, mouse clicks on the dock's
buttons and on the map canvas, then real key events (QTest) that go where Qt sends them.

The index on disk (re-read with OGR) is the reference for what a key did."""


import pytest
from dock_window import docked
from qgis.core import QgsProject
from qgis.gui import QgsGui
from qgis.PyQt.QtCore import QPoint, Qt
from qgis.PyQt.QtTest import QTest
from qgis.PyQt.QtWidgets import QApplication
from screening_data import copy_index, make_source_dataset, statuses

from gullyseg.processing.engine import dataset
from gullyseg.ui import settings

TILE = 128


@pytest.fixture(scope="module")
def source_dataset(tmp_path_factory, scene_factory):
    return make_source_dataset(tmp_path_factory, scene_factory, "keys", 512, 384, seed=4, tile=TILE)


@pytest.fixture
def index_path(source_dataset, tmp_path):
    return copy_index(source_dataset, tmp_path)


@pytest.fixture
def dock(qgis_iface, qgis_new_project):
    with docked(qgis_iface, 1000, 700, activate=True) as widget:
        yield widget


def key(widget, k):
    """A key press as Qt delivers it: to the widget that has the focus now."""
    QTest.keyClick(QApplication.focusWidget() or widget, k)


def test_keys_work_after_clicks_on_buttons_and_on_the_map(dock, index_path, qgis_iface):
    tab = dock.screening
    dock.show_tab(tab)
    assert tab.open_index(str(index_path))
    ids = sorted(statuses(index_path))
    assert "Keys active" in tab.keysLabel.text()

    # 1. a mouse click on the Keep button, then K (the focus is on the button or the scroll area)
    QTest.mouseClick(tab.keepButton, Qt.MouseButton.LeftButton)
    assert statuses(index_path)[ids[0]] == "keep"
    key(tab, Qt.Key.Key_K)
    assert statuses(index_path)[ids[1]] == "keep"
    # 2. a click on Next, then R
    QTest.mouseClick(tab.nextButton, Qt.MouseButton.LeftButton)
    assert tab.session.current.tile_id == ids[3]
    key(tab, Qt.Key.Key_R)
    assert statuses(index_path)[ids[3]] == "reject"
    # 3. a click on the dock's scroll area (empty space) takes the focus there: K still keeps
    area = dock.tab_page(tab)
    area.setFocus()
    key(tab, Qt.Key.Key_K)
    assert statuses(index_path)[ids[4]] == "keep"
    # 4. a click on the map canvas: the canvas has the focus, K and U still screen
    canvas = qgis_iface.mapCanvas()
    QTest.mouseClick(canvas.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(50, 50))
    canvas.setFocus()
    assert QApplication.focusWidget() is canvas
    assert "Keys active" in tab.keysLabel.text()
    current = tab.session.current.tile_id
    key(canvas, Qt.Key.Key_K)
    assert statuses(index_path)[current] == "keep"
    key(canvas, Qt.Key.Key_U)
    assert statuses(index_path)[current] == "unscreened"
    # 5. a text field keeps its letters: typing "k" in the jump field decides nothing
    before = statuses(index_path)
    tab.jumpEdit.setFocus()
    assert "Keys paused" in tab.keysLabel.text()
    QTest.keyClicks(tab.jumpEdit, "kr")
    assert tab.jumpEdit.text() == "kr"
    assert statuses(index_path) == before
    QTest.keyClick(tab.jumpEdit, Qt.Key.Key_Escape)  # back to the picture: keys active again
    assert "Keys active" in tab.keysLabel.text()


def test_keys_are_off_while_the_inference_tab_is_shown(dock, index_path):
    tab = dock.screening
    assert tab.open_index(str(index_path))
    dock.show_tab(dock.inference)
    assert all(not action.isEnabled() for action in tab.actions)
    before = statuses(index_path)
    dock.inference.runButton.setFocus()
    key(dock, Qt.Key.Key_K)
    assert statuses(index_path) == before
    dock.show_tab(tab)
    QApplication.processEvents()
    assert all(action.isEnabled() for action in tab.actions)


def test_shortcuts_are_rebindable_in_qgis_shortcuts_manager(dock, index_path):
    tab = dock.screening
    dock.show_tab(tab)
    assert tab.open_index(str(index_path))
    manager = QgsGui.shortcutsManager()
    keep = [a for a in manager.listActions() if a.objectName() == "GullySegScreeningKeep"]
    assert len(keep) == 1, "registered once (the Settings > Keyboard Shortcuts dialog lists it)"
    keep = keep[0]
    assert keep is not None and keep.shortcut().toString() == "K"
    ids = sorted(statuses(index_path))
    try:
        assert manager.setKeySequence(keep, "Y")
        tab.tileView.setFocus()
        key(tab, Qt.Key.Key_Y)
        assert statuses(index_path)[ids[0]] == "keep"
        key(tab, Qt.Key.Key_K)  # K is no longer "keep"
        assert statuses(index_path)[ids[1]] == "unscreened"
    finally:
        manager.setKeySequence(keep, "K")


def test_empty_filter_explains_and_offers_all(dock, index_path):
    dataset.update_index(str(index_path), {t: {"status": "keep"} for t in statuses(index_path)})
    tab = dock.screening
    dock.show_tab(tab)
    assert tab.open_index(str(index_path))
    total = len(statuses(index_path))
    assert tab.tileView.text() == f"All {total} tiles screened ({total} kept, 0 rejected): show all tiles?"
    QTest.mouseClick(tab.emptyButton, Qt.MouseButton.LeftButton)
    assert tab.session.filter == "all" and tab.filterCombo.currentData() == "all"
    assert tab.session.current is not None and tab.emptyButton.isHidden()


def test_the_projects_tile_index_is_preselected(qgis_iface, qgis_new_project, index_path, tmp_path):
    from qgis.core import QgsVectorLayer

    from gullyseg.ui.screening import ScreeningTab

    saved = settings.snapshot()
    settings.reset()
    other = QgsVectorLayer(str(tmp_path / "nothing.gpkg"), "not an index", "ogr")  # invalid: ignored
    layer = QgsVectorLayer(f"{index_path}|layername={dataset.INDEX_LAYER}", "dataset tiles", "ogr")
    assert layer.isValid()
    assert QgsProject.instance().addMapLayers([layer, other])
    tab = ScreeningTab(qgis_iface)
    try:
        assert tab.indexCombo.currentLayer() is layer
        assert tab.session is not None and tab.session.current is not None
    finally:
        tab.shutdown()
        tab.deleteLater()
    # an index added to the project later (opening the demo project) is picked up too
    QgsProject.instance().clear()
    tab = ScreeningTab(qgis_iface)
    try:
        assert tab.session is None
        layer = QgsVectorLayer(f"{index_path}|layername={dataset.INDEX_LAYER}", "dataset tiles", "ogr")
        assert QgsProject.instance().addMapLayer(layer) is layer
        assert tab.indexCombo.currentLayer() is layer and tab.session is not None
    finally:
        tab.shutdown()
        tab.deleteLater()
        QgsProject.instance().clear()
        settings.restore(saved)


def test_a_second_writer_is_waited_for_and_errors_do_not_pile_up(dock, index_path):
    """Another program holds the index's write lock (sqlite3 BEGIN IMMEDIATE): a short lock is waited
    out; a lock held past the busy timeout fails with this decision's error only, said once."""
    import sqlite3
    import threading

    from gullyseg.ui import screening_session

    tab = dock.screening
    dock.show_tab(tab)
    assert tab.open_index(str(index_path))
    ids = sorted(statuses(index_path))
    other = sqlite3.connect(str(index_path), timeout=0, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(0.6, other.commit).start()  # the other writer finishes after 0.6 s
    tab.tileView.setFocus()
    key(tab, Qt.Key.Key_K)
    assert statuses(index_path)[ids[0]] == "keep", tab.messageLabel.text()

    other.execute("BEGIN IMMEDIATE")  # now it holds the lock for longer than the busy timeout
    try:
        saved = screening_session.BUSY_TIMEOUT_S
        key(tab, Qt.Key.Key_K)
        first = tab.messageLabel.text()
        assert "Cannot write status 'keep'" in first and ids[1] in first
        key(tab, Qt.Key.Key_R)
        second = tab.messageLabel.text()
        assert "Cannot write status 'reject'" in second
        assert "'keep'" not in second  # no earlier error repeated
        assert second.count("locked") <= 1
        assert screening_session.BUSY_TIMEOUT_S == saved
    finally:
        other.rollback()
        other.close()
    key(tab, Qt.Key.Key_R)
    assert statuses(index_path)[ids[1]] == "reject"


def test_screening_report_and_band_choice(dock, index_path, tmp_path):
    import csv
    import json

    import numpy as np
    from osgeo import gdal

    tab = dock.screening
    dock.show_tab(tab)
    assert tab.open_index(str(index_path))
    ids = sorted(statuses(index_path))
    tab.tileView.setFocus()
    for k in (Qt.Key.Key_K, Qt.Key.Key_R, Qt.Key.Key_K, Qt.Key.Key_U):
        key(tab, k)
    summary = tab.save_report(str(tmp_path / "report" / "screening.csv"))
    rows = list(csv.DictReader(open(tmp_path / "report" / "screening.csv", encoding="utf-8")))
    assert [(r["tile_id"], r["new_status"], r["action"]) for r in rows] == [
        (ids[0], "keep", "decide"), (ids[1], "reject", "decide"), (ids[2], "keep", "decide"),
        (ids[2], "unscreened", "undo")]
    assert all(r["time_utc"].endswith("+00:00") for r in rows)
    on_disk = json.loads((tmp_path / "report" / "screening.json").read_text())
    assert on_disk == summary
    assert (summary["kept"], summary["rejected"], summary["decisions"], summary["undos"]) == (1, 1, 2, 1)
    assert all(r["current_status"] == statuses(index_path)[r["tile_id"]] for r in rows)
    journal = list(csv.DictReader(open(index_path.parent / "screening_log.csv", encoding="utf-8")))
    assert [(r["tile_id"], r["new_status"], r["action"]) for r in journal] == [
        (r["tile_id"], r["new_status"], r["action"]) for r in rows]  # each decision journaled as it was made
    assert summary["remaining"] == len(ids) - 2 == summary["total"] - 2

    # band choice: the picture comes from the GeoTIFF's bands, in the chosen order
    choices = [tab.bandCombo.itemData(i) for i in range(tab.bandCombo.count())]
    assert [3, 2, 1] in choices and [1, 2, 3] in choices
    tab.set_picture_bands([1, 2, 3])
    image_123 = tab._pixmap.toImage()
    tab.set_picture_bands([3, 2, 1])
    image_321 = tab._pixmap.toImage()
    pixel_123, pixel_321 = image_123.pixelColor(10, 10), image_321.pixelColor(10, 10)
    assert (pixel_123.red(), pixel_123.blue()) == (pixel_321.blue(), pixel_321.red())
    tif = [p for p in (index_path.parent / "images").iterdir() if p.suffix == ".tif"][0]
    assert gdal.Open(str(tif)).RasterCount == 3 and np.isfinite(pixel_123.red())
