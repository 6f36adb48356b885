"""The screening tab driven with key events: decisions on disk, undo, resume, filters, jump, canvas.

The dataset is made by the real grid-division engine (gridtiles) from a synthetic scene; the
index is re-read from disk with OGR (dataset.read_index) after each step, independently of
the QGIS layer the tab writes through.
"""

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import QgsProject, QgsRectangle
from qgis.PyQt.QtCore import QEvent, Qt
from qgis.PyQt.QtGui import QKeyEvent
from qgis.PyQt.QtTest import QTest
from qgis.PyQt.QtWidgets import QApplication
from screening_data import copy_index, make_source_dataset, statuses

from gullyseg.processing.engine import dataset, tiling
from gullyseg.ui import settings
from gullyseg.ui.screening import ScreeningTab
from gullyseg.ui.screening_session import ScreeningSession, Tile
from gullyseg.ui.tile_image import load_rgb

TILE = 128  # 512 x 512 scene -> 4 x 4 = 16 tiles


@pytest.fixture(scope="module")
def source_dataset(tmp_path_factory, scene_factory):
    """A dataset folder made by gridtiles (tif + jpg), kept pristine; tests copy it."""
    return make_source_dataset(tmp_path_factory, scene_factory, "screen", 512, 512, seed=3, tile=TILE)


@pytest.fixture
def index_path(source_dataset, tmp_path):
    return copy_index(source_dataset, tmp_path)


@pytest.fixture
def make_tab(qgis_iface, qgis_new_project):
    saved = settings.snapshot()  # the person's own dock settings survive the tests
    settings.reset()
    tabs = []

    def _make(index_path=None):
        tab = ScreeningTab(qgis_iface)
        tab.resize(420, 760)
        tab.show()
        tabs.append(tab)
        if index_path is not None:
            assert tab.open_index(str(index_path)), tab.messageLabel.text()
        return tab

    yield _make
    for tab in tabs:
        tab.shutdown()
        tab.deleteLater()
    QgsProject.instance().clear()
    settings.restore(saved)


def press(tab, key, times=1):
    for _ in range(times):
        QTest.keyClick(tab.tileView, key)


def test_keep_reject_undo_change_the_index_on_disk(make_tab, index_path):
    tab = make_tab(index_path)
    ids = sorted(statuses(index_path))
    assert tab.session.current.tile_id == ids[0]
    assert tab.tileView.pixmap() is not None and not tab.tileView.pixmap().isNull()

    press(tab, Qt.Key.Key_K)
    press(tab, Qt.Key.Key_R)
    press(tab, Qt.Key.Key_K)
    on_disk = statuses(index_path)
    assert [on_disk[i] for i in ids[:4]] == ["keep", "reject", "keep", "unscreened"]
    assert tab.session.current.tile_id == ids[3]
    assert "Kept <b>2</b>" in tab.countersLabel.text() and "Rejected <b>1</b>" in tab.countersLabel.text()
    assert "Remaining <b>13</b>" in tab.countersLabel.text() and "Total <b>16</b>" in tab.countersLabel.text()

    # undo several steps back: U then Backspace; each restores the previous status on disk
    press(tab, Qt.Key.Key_U)
    assert statuses(index_path)[ids[2]] == "unscreened"
    assert tab.session.current.tile_id == ids[2]
    press(tab, Qt.Key.Key_Backspace)
    on_disk = statuses(index_path)
    assert on_disk[ids[1]] == "unscreened" and on_disk[ids[0]] == "keep"
    assert tab.session.current.tile_id == ids[1]
    # re-deciding after an undo overwrites the restored status
    press(tab, Qt.Key.Key_K)
    assert statuses(index_path)[ids[1]] == "keep"
    # the QGIS layer sees what is on disk (it is styled by status from the same field)
    layer_status = {f["tile_id"]: f["status"] for f in tab.layer.getFeatures()}
    assert layer_status == statuses(index_path)
    assert tab.layer.renderer().type() == "categorizedSymbol"
    assert tab.layer.renderer().classAttribute() == "status"


def test_held_down_decision_keys_do_not_repeat(make_tab, index_path):
    """Auto-repeat (a key held down) decides one tile only; moving keys may repeat."""
    tab = make_tab(index_path)
    ids = sorted(statuses(index_path))
    press(tab, Qt.Key.Key_K)
    for _ in range(5):
        event = QKeyEvent(QEvent.Type.KeyPress, Qt.Key.Key_K, Qt.KeyboardModifier.NoModifier, "k", True)
        QApplication.sendEvent(tab.tileView, event)
    assert [s for s in statuses(index_path).values() if s != "unscreened"] == ["keep"]
    for _ in range(3):
        event = QKeyEvent(QEvent.Type.KeyPress, Qt.Key.Key_Right, Qt.KeyboardModifier.NoModifier, "", True)
        QApplication.sendEvent(tab.tileView, event)
    assert tab.session.current.tile_id == ids[4]


def test_skip_and_moving_do_not_write(make_tab, index_path):
    tab = make_tab(index_path)
    ids = sorted(statuses(index_path))
    press(tab, Qt.Key.Key_S)
    assert tab.session.current.tile_id == ids[1]
    press(tab, Qt.Key.Key_N)
    press(tab, Qt.Key.Key_Right)
    assert tab.session.current.tile_id == ids[3]
    press(tab, Qt.Key.Key_P)
    press(tab, Qt.Key.Key_Left)
    assert tab.session.current.tile_id == ids[1]
    assert set(statuses(index_path).values()) == {"unscreened"}
    # buttons do the same as keys
    tab.keepButton.click()
    assert statuses(index_path)[ids[1]] == "keep"
    tab.undoButton.click()
    assert statuses(index_path)[ids[1]] == "unscreened"


def test_keys_win_over_qgis_shortcuts(make_tab, index_path):
    """The tab claims its single-letter keys (ShortcutOverride) so QGIS's shortcuts don't steal them."""
    tab = make_tab(index_path)
    event = QKeyEvent(QEvent.Type.ShortcutOverride, Qt.Key.Key_K, Qt.KeyboardModifier.NoModifier, "k")
    event.ignore()
    QApplication.sendEvent(tab.tileView, event)
    assert event.isAccepted()
    # but in the jump field letters are text, not decisions
    QTest.keyClicks(tab.jumpEdit, "krs")
    assert tab.jumpEdit.text() == "krs"
    assert tab.session.undo_stack == [] and set(statuses(index_path).values()) == {"unscreened"}
    # Esc leaves the field and gives the keys back to the tile view
    QTest.keyClick(tab.jumpEdit, Qt.Key.Key_Escape)
    assert tab.jumpEdit.text() == ""


def test_reopening_resumes_at_first_unscreened(make_tab, index_path):
    ids = sorted(statuses(index_path))
    # decisions written by another tool (OGR), with a gap: ids[2] stays unscreened
    dataset.update_index(str(index_path), {ids[0]: {"status": "keep"}, ids[1]: {"status": "reject"},
                                           ids[3]: {"status": "keep"}})
    tab = make_tab(index_path)
    assert tab.session.current.tile_id == ids[2]
    press(tab, Qt.Key.Key_R)  # decides ids[2]; next unscreened is ids[4]
    assert tab.session.current.tile_id == ids[4]
    tab.shutdown()
    QgsProject.instance().clear()  # QGIS closes the project: nothing to save, all is on disk
    assert statuses(index_path)[ids[2]] == "reject"

    again = make_tab(index_path)
    assert again.session.current.tile_id == ids[4]
    assert "Kept <b>2</b>" in again.countersLabel.text()
    assert "Rejected <b>2</b>" in again.countersLabel.text()


def test_filters(make_tab, index_path):
    ids = sorted(statuses(index_path))
    dataset.update_index(str(index_path), {ids[1]: {"status": "keep"}, ids[5]: {"status": "keep"},
                                           ids[7]: {"status": "reject"}})
    tab = make_tab(index_path)
    on_disk = statuses(index_path)
    expected = {
        "unscreened": [i for i in ids if on_disk[i] == "unscreened"],
        "keep": [ids[1], ids[5]],
        "reject": [ids[7]],
        "all": ids,
    }
    for name, wanted in expected.items():
        tab.set_filter(name)
        assert [t.tile_id for t in tab.session.queue] == wanted, name
    # in the kept filter the person can change their mind: R on a kept tile rejects it on disk
    tab.set_filter("keep")
    assert tab.session.current.tile_id == ids[1]
    press(tab, Qt.Key.Key_R)
    assert statuses(index_path)[ids[1]] == "reject"
    # the filter choice is remembered for the next session
    assert settings.value("screening/filter") == "keep"


def test_unscreened_queue_wraps_to_skipped_tiles_and_ends(make_tab, index_path):
    ids = sorted(statuses(index_path))
    dataset.update_index(str(index_path), {i: {"status": "keep"} for i in ids[:-2]})
    tab = make_tab(index_path)
    assert tab.session.current.tile_id == ids[-2]
    press(tab, Qt.Key.Key_S)  # skip the second-last
    assert tab.session.current.tile_id == ids[-1]
    press(tab, Qt.Key.Key_K)  # wraps back to the skipped one
    assert tab.session.current.tile_id == ids[-2]
    press(tab, Qt.Key.Key_R)
    assert tab.session.current is None
    # the empty queue says why, and offers the way out
    assert tab.tileView.text() == "All 16 tiles screened (15 kept, 1 rejected): show all tiles?"
    assert tab.emptyButton.isVisible()
    assert "Remaining <b>0</b>" in tab.countersLabel.text()
    press(tab, Qt.Key.Key_U)
    assert tab.session.current.tile_id == ids[-2] and statuses(index_path)[ids[-2]] == "unscreened"


def test_g_jumps_to_a_tile_id(make_tab, index_path):
    ids = sorted(statuses(index_path))
    tab = make_tab(index_path)
    press(tab, Qt.Key.Key_G)
    assert tab.jumpEdit.hasFocus() or QApplication.focusWidget() in (None, tab.jumpEdit)
    target = ids[9]
    QTest.keyClicks(tab.jumpEdit, target.split("_", 1)[1][-11:])  # the end of the id: 'r0002_c0001'
    QTest.keyClick(tab.jumpEdit, Qt.Key.Key_Return)
    assert tab.session.current.tile_id == target
    assert tab.jumpEdit.text() == ""
    # row,col works too, and a tile hidden by the filter switches to 'all'
    dataset.update_index(str(index_path), {ids[0]: {"status": "keep"}})
    tab.set_layer(None)
    tab = make_tab(index_path)
    assert tab.session.filter == "unscreened"
    tab.jumpEdit.setText("0,0")
    tab.jumpButton.click()
    assert tab.session.current.tile_id == ids[0]
    assert tab.filterCombo.currentData() == "all"
    # nothing matching: a message, no move
    tab.jumpEdit.setText("no_such_tile")
    tab.jumpButton.click()
    assert tab.session.current.tile_id == ids[0]
    assert "no_such_tile" in tab.messageLabel.text()


def test_canvas_follows_with_context_and_outline(make_tab, index_path, qgis_canvas):
    tab = make_tab(index_path)
    press(tab, Qt.Key.Key_N, 5)
    tile = tab.session.current
    xmin, ymin, xmax, ymax = tile.bounds
    extent = qgis_canvas.extent()
    assert extent.contains(QgsRectangle(xmin, ymin, xmax, ymax))
    # about 3 x 3 tiles of context (the canvas keeps its aspect ratio, so at least 3 tiles across)
    size = xmax - xmin
    assert min(extent.width(), extent.height()) == pytest.approx(3 * size, rel=0.05)
    centre = extent.center()
    assert centre.x() == pytest.approx((xmin + xmax) / 2, abs=size * 0.01)
    band = tab.rubber_band.asGeometry().boundingBox()
    assert band.toString(3) == QgsRectangle(xmin, ymin, xmax, ymax).toString(3)


def test_tile_view_shows_the_jpeg_pixels(make_tab, index_path):
    tab = make_tab(index_path)
    tile = tab.session.current
    path = index_path.parent / tile.image_jpg
    expected = np.transpose(gdal.Open(str(path)).ReadAsArray(), (1, 2, 0))
    shown = tab.prefetcher.get(tile.tile_id, str(path))
    np.testing.assert_array_equal(shown, expected)
    image = tab._pixmap.toImage()
    assert (image.width(), image.height()) == (TILE, TILE)
    colour = image.pixelColor(5, 7)
    assert (colour.red(), colour.green(), colour.blue()) == tuple(int(v) for v in expected[7, 5])
    # the next tiles were decoded ahead
    for upcoming in tab.session.upcoming(2):
        tab.prefetcher._futures[upcoming.tile_id].result(timeout=60)  # a wait, not a speed check


def test_four_band_tiles_show_red_green_blue_with_one_stretch(tmp_path, scene_factory):
    """GeoTIFF-only 4-band (blue, green, red, NIR) tiles: shown as bands 3,2,1, one stretch for all."""
    scene = scene_factory("bgrn", width=256, height=256, seed=4, bands="bgrn")
    root = tmp_path / "ds"
    tiling.grid_tiles(str(scene), str(root), tile_size=TILE, fmt=tiling.FORMAT_GTIFF)
    records, _ = dataset.read_index(str(root / dataset.INDEX_NAME))
    path = str(root / records[0]["image_tif"])
    raw = gdal.Open(path).ReadAsArray().astype(float)
    rgb = load_rgb(path, stretch=[(100.0, 900.0)] * 3)
    for channel, band in ((0, 2), (1, 1), (2, 0)):  # red <- band 3, green <- 2, blue <- 1
        want = np.clip((raw[band] - 100.0) * 255.0 / 800.0, 0, 255)
        valid = raw[band] > 0
        assert np.abs(rgb[..., channel][valid] - want[valid]).max() <= 1.0


def test_rate_and_counters_logic():
    now = [0.0]
    written = []
    tiles = [Tile(fid=i, tile_id=f"s_r0000_c{i:04d}") for i in range(10)]
    session = ScreeningSession(tiles, lambda t, s: written.append((t.tile_id, s)), clock=lambda: now[0])
    for _ in range(5):
        session.keep()
        now[0] += 3.0  # a decision every 3 s -> 20 tiles per minute
    # 4 intervals between 5 decisions, measured up to now (15 s): the rate decays while idle
    assert session.rate() == pytest.approx(60.0 * 4 / 15.0)
    now[0] += 1000.0  # a long pause: the rate window forgets old decisions
    assert session.rate() == 0.0
    assert session.counts()["kept"] == 5 and session.counts()["remaining"] == 5
    assert written[-1] == ("s_r0000_c0004", "keep")


def test_failed_write_changes_nothing():
    tiles = [Tile(fid=i, tile_id=f"s_r0000_c{i:04d}") for i in range(3)]

    def refuse(tile, status):
        raise OSError("disk full")

    session = ScreeningSession(tiles, refuse)
    with pytest.raises(OSError):
        session.keep()
    assert session.current.tile_id == "s_r0000_c0000" and tiles[0].status == "unscreened"
    assert session.undo_stack == []


def test_model_scores_order_the_queue(make_tab, index_path, tmp_path):
    """Optional help: tiles scored by predicted gully share in a background task, likely ones first."""

    import onnx_models
    from qgis.core import QgsApplication

    from gullyseg.ui.tasks import wait_for

    # per-pixel model: p = sigmoid(red / 255 - 0.5) >= 0.5  <=>  red >= 127.5
    model = onnx_models.make_pointwise_model(str(tmp_path / "red.onnx"), weights=(1.0, 0.0, 0.0), bias=-0.5)
    tab = make_tab(index_path)
    first = tab.session.current.tile_id
    task = tab.start_scoring(model)
    assert task is not None, tab.messageLabel.text()
    assert wait_for(task, timeout=60)
    end = __import__("time").monotonic() + 60  # a wait (ends as soon as the task is cleared), not a speed check
    while tab.score_task is not None and __import__("time").monotonic() < end:
        QgsApplication.processEvents()
    assert tab.score_task is None and "Scored 16 tiles" in tab.messageLabel.text(), tab.messageLabel.text()

    # independent reference: the share of valid pixels whose red band is >= 127.5, from GDAL
    records, _ = dataset.read_index(str(index_path))
    expected = {}
    for rec in records:
        ds = gdal.Open(str(index_path.parent / rec["image_tif"]))
        red = ds.GetRasterBand(1).ReadAsArray().astype(float)
        valid = ds.GetRasterBand(1).GetMaskBand().ReadAsArray() > 0
        expected[rec["tile_id"]] = float((red[valid] >= 127.5).mean()) if valid.any() else 0.0
        assert rec["score"] == pytest.approx(expected[rec["tile_id"]], abs=1e-6)  # written to disk
    order = [t.tile_id for t in tab.session.queue]
    assert order == sorted(expected, key=lambda k: (-expected[k], k))
    assert tab.orderCombo.currentData() == "score"
    assert tab.session.current.tile_id == order[0]
    assert statuses(index_path)[first] == "unscreened"  # scoring decides nothing
    assert "score" in tab.tileIdLabel.text()


def test_session_stays_consistent_under_random_use():
    """Random keys, filters and undos: the written statuses, the counters and undo agree throughout."""
    import random

    rng = random.Random(8)
    disk = {}
    tiles = [Tile(fid=i, tile_id=f"s_r{i // 7:04d}_c{i % 7:04d}") for i in range(40)]

    def write(tile, status):
        disk[tile.tile_id] = status

    session = ScreeningSession(tiles, write)
    history = []  # what undo must restore, newest last
    for _ in range(600):
        op = rng.choice(["keep", "reject", "skip", "undo", "next", "previous", "filter"])
        if op == "filter":
            session.set_filter(rng.choice(["unscreened", "keep", "reject", "all"]))
        elif op in ("keep", "reject"):
            tile = session.current
            before = tile.status if tile else None
            done = getattr(session, op)()
            if tile is not None:
                assert done is tile and disk[tile.tile_id] == tile.status == op
                history.append((tile, before))
        elif op == "undo":
            tile = session.undo()
            if history:
                expected_tile, before = history.pop()
                assert tile is expected_tile and tile.status == before and disk[tile.tile_id] == before
                assert session.current is tile
            else:
                assert tile is None
        else:
            getattr(session, op)()
        counts = session.counts()
        assert counts["kept"] == sum(t.status == "keep" for t in tiles)
        assert counts["rejected"] == sum(t.status == "reject" for t in tiles)
        assert counts["remaining"] == sum(t.status == "unscreened" for t in tiles)
        assert all(disk.get(t.tile_id, "unscreened") == t.status for t in tiles)
        if session.filter == "unscreened" and op in ("keep", "reject", "skip") and session.current is not None:
            assert session.current.status == "unscreened"  # deciding moves on to undecided tiles only
        if session.filter == "unscreened" and op in ("keep", "reject", "skip") and session.current is None:
            assert not any(t.status == "unscreened" for t in session.queue)  # done means done


def test_not_an_index_is_refused_with_a_message(make_tab, tmp_path, qgis_iface):
    from qgis.core import QgsVectorLayer

    tab = make_tab()
    assert tab.open_index(str(tmp_path / "missing" / "index.gpkg")) is False
    assert "Cannot open" in tab.messageLabel.text()
    other = QgsVectorLayer("Polygon?crs=EPSG:32606&field=name:string", "not tiles", "memory")
    assert QgsProject.instance().addMapLayer(other) is other
    tab.indexCombo.setLayer(other)
    assert tab.session is None and "lacks the fields" in tab.messageLabel.text()
    assert not tab.keepButton.isEnabled()


def test_four_band_view_matches_gridtiles_jpegs(make_tab, tmp_path, scene_factory):
    """A 4-band dataset: the view of GeoTIFF-only tiles (bands 3,2,1, one stretch for the dataset)
    looks like the JPEG quick-looks gridtiles writes for the same tiles (up to JPEG compression)."""
    scene = scene_factory("bgrn", width=256, height=256, seed=4, bands="bgrn")
    both, tif_only = tmp_path / "both", tmp_path / "tif"
    tiling.grid_tiles(str(scene), str(both), tile_size=TILE)
    tiling.grid_tiles(str(scene), str(tif_only), tile_size=TILE, fmt=tiling.FORMAT_GTIFF)
    tab = make_tab(tif_only / dataset.INDEX_NAME)  # no JPEG: no stretch in the card, sampled from the tiles
    assert tab.prefetcher.bands in (None, [3, 2, 1]) and tab.prefetcher.stretch is not None
    tile = tab.session.current
    shown = tab.prefetcher.get(tile.tile_id, str(tif_only / tile.image_tif)).astype(int)
    jpeg = np.transpose(gdal.Open(str(both / "images" / f"{tile.tile_id}.jpg")).ReadAsArray(), (1, 2, 0))
    assert np.abs(shown - jpeg.astype(int)).mean() < 4.0
    # and the dataset with JPEGs shows the JPEG itself, channels in order
    tab2 = make_tab(both / dataset.INDEX_NAME)
    assert tab2.prefetcher.stretch is not None  # the card's scene-wide stretch (for its GeoTIFFs)
    picture = tab2.prefetcher.get(tile.tile_id, str(both / "images" / f"{tile.tile_id}.jpg"))
    np.testing.assert_array_equal(picture, jpeg)
