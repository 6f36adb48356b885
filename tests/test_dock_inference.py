"""The inference tab: runs gullyseg:segment in a background task, adds styled layers, cancels cleanly.

The reference for the tab's results is the same algorithm run directly with processing.run
(as the Toolbox would), on the same parameters: the tab must give the same pixels.
Models are built by tests/onnx_models.py (no download).
"""

import os
import time
from pathlib import Path

import numpy as np
import onnx_models
import pytest
from osgeo import gdal
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsVectorLayer

from gullyseg import compat
from gullyseg.ui import settings
from gullyseg.ui.inference import ALG_ID, AREA_CANVAS, AREA_POLYGONS, InferenceTab


@pytest.fixture
def segment(provider):
    if QgsApplication.processingRegistry().algorithmById(ALG_ID) is None:
        pytest.skip(f"{ALG_ID} is not registered in the GullySeg provider of this build")
    return ALG_ID


@pytest.fixture
def make_tab(qgis_iface, qgis_new_project):
    saved = settings.snapshot()  # the person's own dock settings survive the tests
    settings.reset()
    qgis_iface.messageBar().clear_messages()
    tabs = []

    def _make():
        tab = InferenceTab(qgis_iface)
        tab.resize(420, 760)
        tab.show()
        tabs.append(tab)
        return tab

    yield _make
    for tab in tabs:
        tab.shutdown()
        tab.deleteLater()
    QgsApplication.taskManager().cancelAll()
    QgsProject.instance().clear()
    settings.restore(saved)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return onnx_models.make_fcn_model(str(folder / "small_fcn.onnx"), in_channels=3, hidden=4, layers=2)


def add_raster(path, name="scene"):
    layer = QgsRasterLayer(str(path), name)
    assert layer.isValid()
    assert QgsProject.instance().addMapLayer(layer) is layer
    return layer


def wait_until_done(tab, timeout=120.0):
    """Process events until the tab's task has ended; returns the taskFinished result."""
    results = []
    tab.taskFinished.connect(results.append)
    end = time.monotonic() + timeout
    while not results and time.monotonic() < end:
        QgsApplication.processEvents()
        time.sleep(0.01)
    assert results, "the inference task did not finish in time"
    QgsApplication.processEvents()
    return results[0]


def messages(iface):
    bar = iface.messageBar()
    return {level: list(bar.get_messages(level)) for level in (compat.MSG_INFO, compat.MSG_WARNING,
                                                               compat.MSG_CRITICAL, compat.MSG_SUCCESS)}


def read(path):
    ds = gdal.Open(str(path))
    return ds.GetRasterBand(1).ReadAsArray()


def test_runs_a_model_and_adds_styled_layers(make_tab, segment, model, scene_factory, run_alg, tmp_path,
                                             qgis_iface):
    scene = scene_factory("infer", width=512, height=384, seed=5)
    layer = add_raster(scene)
    tab = make_tab()
    tab.rasterCombo.setLayer(layer)
    tab.modelWidget.setFilePath(model)
    assert tab.wait_for_model_info()
    assert "Runs on" in tab.modelInfoLabel.text() and "CPUExecutionProvider" in tab.modelInfoLabel.text()
    assert "gully" in tab.modelInfoLabel.text() and "256 x 256 px" in tab.modelInfoLabel.text()
    tab.batchSpin.setValue(4)
    tab.thresholdSpin.setValue(0.4)
    seen = []
    tab.progressBar.valueChanged.connect(seen.append)
    task = tab.run()
    assert task is not None, tab.messageLabel.text()
    assert not tab.runButton.isEnabled() and tab.cancelButton.isEnabled()
    assert wait_until_done(tab) is True, tab.messageLabel.text() + tab.logView.toPlainText()
    assert tab.progressBar.value() == 100
    assert any(0 < v < 100 for v in seen), f"the progress bar did not move during the run: {seen}"
    assert tab.runButton.isEnabled() and not tab.cancelButton.isEnabled()

    # one group with the three layers, styled from resources/styles
    root = QgsProject.instance().layerTreeRoot()
    group = root.findGroup(f"GullySeg: scene · {Path(model).stem}")
    assert group is not None
    layers = {node.layer().name(): node.layer() for node in group.findLayers()}
    stem = f"scene · {Path(model).stem}"
    assert set(layers) == {f"{stem} · probability", f"{stem} · mask", f"{stem} · polygons"}
    prob, mask, polys = layers[f"{stem} · probability"], layers[f"{stem} · mask"], layers[f"{stem} · polygons"]
    assert prob.renderer().type() == "singlebandpseudocolor"
    assert prob.renderer().classificationMax() == 254
    assert mask.renderer().type() == "paletted" and 0 < mask.renderer().opacity() < 1
    assert isinstance(polys, QgsVectorLayer)
    symbol = polys.renderer().symbol()
    assert symbol.symbolLayer(0).brushStyle() == 0  # Qt.NoBrush: outlines only

    # the same as the algorithm run directly (as the Toolbox does), pixel for pixel; the dock leaves
    # MIN_AREA at segment's default (the area of 4 pixels), as its spin box says
    assert tab.minAreaSpin.text() == "Default (4 px)"
    direct = run_alg(segment, {
        "INPUT": str(scene), "MODEL": model, "BATCH_SIZE": 4, "TTA": 0, "THRESHOLD": 0.4,
        "OUTPUT_PROBABILITY": str(tmp_path / "p.tif"), "OUTPUT_MASK": str(tmp_path / "m.tif"),
        "OUTPUT_POLYGONS": str(tmp_path / "g.gpkg"), "SIMPLIFY": 0.0,
    })
    np.testing.assert_array_equal(read(prob.source()), read(direct["OUTPUT_PROBABILITY"]))
    np.testing.assert_array_equal(read(mask.source()), read(direct["OUTPUT_MASK"]))
    assert polys.featureCount() == QgsVectorLayer(direct["OUTPUT_POLYGONS"], "d", "ogr").featureCount()
    assert any("GullySeg" in m or "layer(s) added" in m for m in messages(qgis_iface)[compat.MSG_SUCCESS])


def test_outputs_to_files_never_overwrite(make_tab, segment, model, scene_factory, tmp_path):
    scene = scene_factory("infer", width=512, height=384, seed=5)
    layer = add_raster(scene, "my scene")
    out = tmp_path / "out"
    out.mkdir()
    existing = out / f"my_scene_{Path(model).stem}_probability.tif"
    existing.write_bytes(b"the user's file")
    tab = make_tab()
    tab.rasterCombo.setLayer(layer)
    tab.modelWidget.setFilePath(model)
    tab.filesRadio.setChecked(True)
    tab.folderWidget.setFilePath(str(out))
    tab.polygonsCheck.setChecked(False)
    assert tab.run() is not None, tab.messageLabel.text()
    assert wait_until_done(tab) is True, tab.messageLabel.text() + tab.logView.toPlainText()
    assert existing.read_bytes() == b"the user's file"
    names = sorted(p.name for p in out.iterdir())
    stem = f"my_scene_{Path(model).stem}"
    assert f"{stem}_probability_2.tif" in names and f"{stem}_mask.tif" in names
    assert not any(n.endswith(".gpkg") for n in names)  # polygons not asked for
    sources = sorted(os.path.basename(lyr.source()) for lyr in tab.last_layers)
    assert sources == [f"{stem}_mask.tif", f"{stem}_probability_2.tif"]


def test_cancel_leaves_nothing_half_written(make_tab, segment, scene_factory, tmp_path, qgis_iface):
    slow = onnx_models.make_slow_model(str(tmp_path / "slow.onnx"))
    scene = scene_factory("infer_big", width=768, height=768, seed=6)
    layer = add_raster(scene)
    out = tmp_path / "out"
    out.mkdir()
    tab = make_tab()
    tab.rasterCombo.setLayer(layer)
    tab.modelWidget.setFilePath(slow)
    tab.filesRadio.setChecked(True)
    tab.folderWidget.setFilePath(str(out))
    layers_before = set(QgsProject.instance().mapLayers())
    assert tab.run() is not None, tab.messageLabel.text()
    end = time.monotonic() + 1.5
    while time.monotonic() < end:  # let it really start (reading and running windows)
        QgsApplication.processEvents()
        time.sleep(0.02)
    assert tab.task is not None, "the run ended before it could be cancelled"
    logged = []
    log_slot = lambda message, tag, level: logged.append((message, tag, level))  # noqa: E731
    QgsApplication.messageLog().messageReceived.connect(log_slot)
    started = time.monotonic()
    tab.cancelButton.click()
    try:
        assert wait_until_done(tab, timeout=60) is False
    finally:
        QgsApplication.messageLog().messageReceived.disconnect(log_slot)
    # a person's cancel is information: logged once, as INFO, and nowhere as CRITICAL
    assert [m for m in logged if m[2] == compat.MSG_CRITICAL] == [], logged
    assert [m for m in logged if "cancel" in m[0].lower()] == [
        ("Inference cancelled by the user; no output was written.", "GullySeg", compat.MSG_INFO)], logged
    latency = time.monotonic() - started
    # the peer, on this machine under its load now: one batch of the model, run to its end
    import onnxruntime

    sess = onnxruntime.InferenceSession(slow, providers=["CPUExecutionProvider"])
    t0 = time.monotonic()
    sess.run(None, {sess.get_inputs()[0].name: np.zeros((8, 3, 256, 256), np.float32)})
    one_batch = time.monotonic() - t0
    assert latency < 1.0 + one_batch, f"cancel took {latency:.2f} s, one batch {one_batch:.2f} s: it ran on"
    assert "Cancelled" in tab.messageLabel.text()
    assert list(out.iterdir()) == [], "cancel left files behind"
    assert set(QgsProject.instance().mapLayers()) == layers_before
    assert tab.runButton.isEnabled()


def test_errors_are_shown_not_raised(make_tab, segment, scene_factory, tmp_path, qgis_iface):
    scene = scene_factory("infer", width=512, height=384, seed=5)
    layer = add_raster(scene)
    bad = onnx_models.make_not_onnx(str(tmp_path / "broken.onnx"))
    tab = make_tab()
    tab.rasterCombo.setLayer(layer)
    tab.modelWidget.setFilePath(bad)
    assert tab.wait_for_model_info()
    assert "broken.onnx" in tab.modelInfoLabel.text()  # the model panel says what is wrong already
    task = tab.run()
    if task is not None:  # refused before the task (checkParameterValues) or by the engine
        assert wait_until_done(tab) is False
    text = tab.messageLabel.text()
    assert "broken.onnx" in text and "Traceback" not in text
    bar = messages(qgis_iface)
    assert any("broken.onnx" in m for m in bar[compat.MSG_CRITICAL] + bar[compat.MSG_WARNING])
    assert QgsProject.instance().layerTreeRoot().findGroups() == []


def test_missing_inputs_are_explained(make_tab, segment, model):
    tab = make_tab()
    tab.modelWidget.setFilePath(model)
    assert tab.run() is None
    assert "raster layer" in tab.messageLabel.text()


def test_area_choices_become_parameters(make_tab, model, scene_factory, qgis_iface, qgis_canvas):
    scene = scene_factory("infer", width=512, height=384, seed=5)
    layer = add_raster(scene)
    polygons = QgsVectorLayer(str(Path(scene).with_name("infer_gullies.gpkg")), "aoi", "ogr")
    assert polygons.isValid()
    assert QgsProject.instance().addMapLayer(polygons) is polygons
    qgis_canvas.setDestinationCrs(layer.crs())
    qgis_canvas.setExtent(layer.extent())
    tab = make_tab()
    tab.rasterCombo.setLayer(layer)
    tab.modelWidget.setFilePath(model)
    params = tab.parameters()
    assert params["INPUT"] == layer.id() and params["MODEL"] == model
    assert "EXTENT" not in params and "MASK_LAYER" not in params
    assert "THRESHOLD" not in params and "OVERLAP" not in params  # the model's own defaults
    tab.areaCombo.setCurrentIndex(tab.areaCombo.findData(AREA_CANVAS))
    params = tab.parameters()
    extent = qgis_canvas.extent()
    xmin, xmax, ymin, rest = params["EXTENT"].split(",")
    assert float(xmin) == pytest.approx(extent.xMinimum()) and float(xmax) == pytest.approx(extent.xMaximum())
    assert rest.endswith(f"[{layer.crs().authid()}]")
    tab.areaCombo.setCurrentIndex(tab.areaCombo.findData(AREA_POLYGONS))
    assert tab.maskCombo.isEnabled()
    tab.maskCombo.setLayer(polygons)
    params = tab.parameters()
    assert params["MASK_LAYER"] == polygons.id() and "EXTENT" not in params


def test_settings_persist(make_tab, model, tmp_path):
    tab = make_tab()
    tab.modelWidget.setFilePath(model)
    tab.batchSpin.setValue(3)
    tab.overlapSpin.setValue(48)
    tab.thresholdSpin.setValue(0.35)
    tab.ttaCombo.setCurrentIndex(2)
    tab.polygonsCheck.setChecked(False)
    tab.filesRadio.setChecked(True)
    tab.folderWidget.setFilePath(str(tmp_path))
    tab.save_settings()
    again = make_tab()
    assert again.modelWidget.filePath() == model
    assert again.batchSpin.value() == 3 and again.overlapSpin.value() == 48
    assert again.thresholdSpin.value() == pytest.approx(0.35)
    assert again.ttaCombo.currentData() == 2
    assert not again.polygonsCheck.isChecked()
    assert again.filesRadio.isChecked() and again.folderWidget.filePath() == str(tmp_path)


def test_dock_has_both_tabs(qgis_iface):
    from gullyseg.ui.dock import GullySegDock

    dock = GullySegDock(qgis_iface)
    try:
        assert [dock.tabs.tabText(i) for i in range(dock.tabs.count())] == ["Screening", "Inference"]
        assert dock.tab_page(dock.screening) is dock.tabs.widget(0)
        assert dock.tab_page(dock.inference) is dock.tabs.widget(1)
        dock.show_tab(dock.inference)
        assert dock.tabs.currentIndex() == 1
    finally:
        dock.shutdown()
        dock.deleteLater()


@pytest.mark.parametrize("area", ["canvas", "polygons"])
def test_area_runs_match_the_algorithm(area, make_tab, segment, model, scene_factory, run_alg, tmp_path,
                                       qgis_canvas):
    """Canvas extent and polygon area give what processing.run gives with the same EXTENT / MASK_LAYER."""
    from qgis.core import QgsRectangle

    scene = scene_factory("infer", width=512, height=384, seed=5)
    layer = add_raster(scene)
    tab = make_tab()
    tab.rasterCombo.setLayer(layer)
    tab.modelWidget.setFilePath(model)
    tab.polygonsCheck.setChecked(False)
    extra = {}
    if area == "canvas":
        e = layer.extent()
        qgis_canvas.setDestinationCrs(layer.crs())
        x0, y0 = e.xMinimum(), e.yMinimum()
        qgis_canvas.setExtent(QgsRectangle(x0 + 40, y0 + 60, x0 + 200, y0 + 220))
        tab.areaCombo.setCurrentIndex(tab.areaCombo.findData(AREA_CANVAS))
    else:
        gullies = str(Path(scene).with_name("infer_gullies.gpkg"))
        polygons = QgsVectorLayer(gullies, "aoi", "ogr")
        assert QgsProject.instance().addMapLayer(polygons) is polygons
        tab.areaCombo.setCurrentIndex(tab.areaCombo.findData(AREA_POLYGONS))
        tab.maskCombo.setLayer(polygons)
        extra["MASK_LAYER"] = gullies
    params = tab.parameters()
    if area == "canvas":
        extra["EXTENT"] = params["EXTENT"]
    assert tab.run() is not None, tab.messageLabel.text()
    assert wait_until_done(tab) is True, tab.messageLabel.text() + tab.logView.toPlainText()
    mask = next(lyr for lyr in tab.last_layers if lyr.name().endswith(" · mask"))
    direct = run_alg(segment, dict({
        "INPUT": str(scene), "MODEL": model, "BATCH_SIZE": 8, "TTA": 0,
        "OUTPUT_PROBABILITY": str(tmp_path / "p.tif"), "OUTPUT_MASK": str(tmp_path / "m.tif"),
    }, **extra))
    ours, theirs = read(mask.source()), read(direct["OUTPUT_MASK"])
    np.testing.assert_array_equal(ours, theirs)
    if area == "canvas":  # the area really limited the result: cropped to the extent ...
        canvas_extent = qgis_canvas.extent()  # what the tab passed (the canvas keeps its aspect ratio)
        part = canvas_extent.intersect(layer.extent())
        assert ours.shape[1] == pytest.approx(part.width() / 0.75, abs=2)
        assert ours.shape[0] == pytest.approx(part.height() / 0.75, abs=2)
        assert ours.shape[0] * ours.shape[1] < 512 * 384
    else:  # ... or nodata outside the polygons
        assert (ours == 255).any() and (ours != 255).any()


def test_tracebacks_are_reduced_to_their_message():
    from gullyseg.ui.inference import user_message

    text = 'Traceback (most recent call last):\n  File "x.py", line 1, in f\nValueError: bad window\n'
    assert user_message(text) == "ValueError: bad window (details in the log)"
    assert user_message("MODEL: 'a.onnx' is not an ONNX file.") == "MODEL: 'a.onnx' is not an ONNX file."


def test_settings_snapshot_and_restore():
    saved = settings.snapshot()
    try:
        settings.set_value("inference/batch_size", 5)
        inner = settings.snapshot()
        settings.reset()
        assert settings.value("inference/batch_size") == settings.DEFAULTS["inference/batch_size"]
        settings.restore(inner)
        assert settings.value("inference/batch_size") == 5
    finally:
        settings.restore(saved)


def test_default_model_or_a_clear_note(make_tab):
    """The demo model is the default when installed; without it the tab says so (no error)."""
    from gullyseg.ui.inference import DEFAULT_MODEL

    tab = make_tab()
    if os.path.exists(DEFAULT_MODEL):
        assert tab.modelWidget.filePath() == DEFAULT_MODEL
        assert tab.wait_for_model_info() and "Runs on" in tab.modelInfoLabel.text()
    else:
        assert tab.modelWidget.filePath() == ""
        assert "not installed" in tab.modelInfoLabel.text()


def test_missing_onnxruntime_offers_install_dependencies(make_tab, monkeypatch, tmp_path, qgis_iface):
    """A message saying a package is missing offers Install dependencies… (a button in the tab)."""
    from gullyseg.ui import inference

    def no_runtime(path, feedback=None):
        from gullyseg.processing.engine.errors import GullySegError

        raise GullySegError("onnxruntime is not installed in QGIS's Python: install it ...")

    monkeypatch.setattr(inference, "describe_model", no_runtime)
    model_file = tmp_path / "m.onnx"
    model_file.write_bytes(b"x")
    tab = make_tab()
    assert tab.installDepsButton.isHidden()
    tab.modelWidget.setFilePath(str(model_file))
    assert tab.wait_for_model_info()
    assert "onnxruntime is not installed" in tab.modelInfoLabel.text()
    assert tab.installDepsButton.isVisible()
    requested = []
    tab.installDependenciesRequested.connect(lambda: requested.append(True))
    tab.installDepsButton.click()
    assert requested == [True]


def test_a_missing_output_folder_is_created_and_names_say_which_run(make_tab, segment, model, scene_factory,
                                                                     tmp_path):
    scene = scene_factory("infer", width=512, height=384, seed=5)
    layer = add_raster(scene)
    out = tmp_path / "new" / "results"
    tab = make_tab()
    tab.rasterCombo.setLayer(layer)
    tab.modelWidget.setFilePath(model)
    assert tab.wait_for_model_info()
    tab.filesRadio.setChecked(True)
    tab.folderWidget.setFilePath(str(out))
    for _ in range(2):
        assert tab.run() is not None, tab.messageLabel.text()
        assert wait_until_done(tab) is True, tab.messageLabel.text()
    assert out.is_dir() and any(p.suffix == ".tif" for p in out.iterdir())
    root = QgsProject.instance().layerTreeRoot()
    stem = f"scene · {Path(model).stem}"
    assert root.findGroup(f"GullySeg: {stem}") is not None
    assert root.findGroup(f"GullySeg: {stem} (2)") is not None  # a counter when repeated
    names = {lyr.name() for lyr in QgsProject.instance().mapLayers().values()}
    assert {f"{stem} · mask", f"{stem} · mask (2)"} <= names
    from gullyseg.processing.engine.inference import TTA_NAMES

    assert [tab.ttaCombo.itemData(i) for i in range(tab.ttaCombo.count())] == sorted(TTA_NAMES)


def test_models_in_the_project_folder_are_offered(make_tab, model, tmp_path):
    import shutil

    (tmp_path / "models").mkdir()
    shutil.copy(model, tmp_path / "models" / "trained_unet.onnx")
    shutil.copy(model, tmp_path / "beside_project.onnx")
    QgsProject.instance().setFileName(str(tmp_path / "valley.qgz"))  # the project's home folder
    tab = make_tab()
    labels = [tab.modelCombo.itemText(i) for i in range(tab.modelCombo.count())]
    assert labels[1] == "Demo model (synthetic scenes only)"
    assert "trained_unet (project/models)" in labels and "beside_project (project)" in labels
    index = labels.index("trained_unet (project/models)")
    tab.modelCombo.setCurrentIndex(index)
    tab.modelCombo.activated.emit(index)  # as a click on the entry does
    assert tab.modelWidget.filePath() == str(tmp_path / "models" / "trained_unet.onnx")
    assert tab.wait_for_model_info()
    assert "Runs on" in tab.modelInfoLabel.text()  # its metadata in the panel
