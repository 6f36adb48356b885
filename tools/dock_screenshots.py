"""Screenshots of the GullySeg dock, rendered headless (QT_QPA_PLATFORM=offscreen).

    .venv/bin/python tools/dock_screenshots.py [--out docs/images]

Makes a synthetic scene, cuts it into tiles with the gridtiles engine, screens a few tiles,
and grabs: dock_screening.png (map canvas following the current tile + the screening tab) and
dock_inference.png (the inference tab with a model chosen; after a run when gullyseg:segment
is available). The model is resources/models/gullyseg_demo_unet.onnx when present, else a
small test model from tests/onnx_models.py.
"""

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


class _Bar:
    def pushMessage(self, *args, **kwargs):  # noqa: N802
        pass


class _Iface:
    def __init__(self, canvas, window):
        self._canvas, self._window, self._bar = canvas, window, _Bar()

    def mapCanvas(self):  # noqa: N802
        return self._canvas

    def mainWindow(self):  # noqa: N802
        return self._window

    def messageBar(self):  # noqa: N802
        return self._bar


def save(widget, path):
    """Grab ``widget`` into ``path``; 256-colour PNG when Pillow is there (a third of the size)."""
    widget.grab().save(path)
    try:
        from PIL import Image
    except ImportError:
        return
    image = Image.open(path).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "images"))
    args = parser.parse_args()

    from qgis.core import QgsApplication

    app = QgsApplication([], True)
    app.initQgis()
    from gullyseg_cli import register_package  # tools/ is this script's folder, first on sys.path

    register_package()
    sys.path.append(os.path.join(QgsApplication.pkgDataPath(), "python", "plugins"))
    from processing.core.Processing import Processing
    from qgis.core import QgsProject, QgsRasterLayer, QgsSettings
    from qgis.gui import QgsMapCanvas
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtWidgets import QMainWindow

    from gullyseg.metadata import resource_path
    from gullyseg.processing.engine import dataset, synthetic, tiling
    from gullyseg.processing.provider import GullySegProvider
    from gullyseg.ui import settings
    from gullyseg.ui.dock import GullySegDock

    QgsSettings().setValue("locale/userLocale", "en_GB")
    Processing.initialize()
    provider = GullySegProvider()  # keep a reference: the registry does not keep the Python object
    QgsApplication.processingRegistry().addProvider(provider)
    work = tempfile.mkdtemp(prefix="gullyseg_shots_")
    scene = os.path.join(work, "demo_scene.tif")
    synthetic.make_scene(scene, width=1536, height=1536, seed=11)
    tiling.grid_tiles(scene, os.path.join(work, "demo_dataset"))
    index = os.path.join(work, "demo_dataset", dataset.INDEX_NAME)

    model = resource_path("models", "gullyseg_demo_unet.onnx")
    if not os.path.exists(model):
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        import onnx_models
        # a toy per-pixel model (dark pixels -> gully), only so that the picture shows something
        model = onnx_models.make_pointwise_model(
            os.path.join(work, "toy_dark_pixels.onnx"), weights=(-12.0, -12.0, -12.0), bias=11.0,
            metadata={"model_type": "Segmentor", "class_names": {"0": "gully"}, "resolution": 75,
                      "tile_size": 256, "seg_thresh": 0.5,
                      "standardization_mean": [0.0, 0.0, 0.0], "standardization_std": [1.0, 1.0, 1.0]})

    saved = settings.snapshot()  # put the person's own dock settings back at the end
    settings.reset()
    window = QMainWindow()
    window.resize(1400, 1000)
    canvas = QgsMapCanvas(window)
    window.setCentralWidget(canvas)
    iface = _Iface(canvas, window)
    scene_layer = QgsRasterLayer(scene, "demo scene")
    if QgsProject.instance().addMapLayer(scene_layer) is None:
        raise SystemExit(f"cannot add {scene} to the project")
    canvas.setDestinationCrs(scene_layer.crs())
    dock = GullySegDock(iface, window)
    window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
    dock.setMinimumWidth(470)
    window.show()
    app.processEvents()

    tab = dock.screening
    tab.open_index(index)
    tab.scoreModelWidget.setFilePath(model)
    clock = [0.0]
    tab.session._clock = lambda: clock[0]  # a person's pace (about 4 s a tile), not the script's
    canvas.setLayers([tab.layer, scene_layer])
    # a short screening session: a few decisions, so the map and the counters show progress
    for action in ["keep", "reject", "reject", "keep", "reject", "skip", "reject", "keep", "reject", "reject",
                   "keep", "reject", "reject", "reject", "keep"]:
        clock[0] += 4.0
        tab.trigger(action)
        for _ in range(5):
            app.processEvents()
            time.sleep(0.02)
    tab.session.jump("r0003_c0002")
    tab.show_current()

    def settle(seconds=1.5):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.02)

    settle()
    os.makedirs(args.out, exist_ok=True)
    shot = os.path.join(args.out, "dock_screening.png")
    save(window, shot)
    print(shot)

    dock.show_tab(dock.inference)
    inf = dock.inference
    inf.rasterCombo.setLayer(scene_layer)
    inf.modelWidget.setFilePath(model)
    inf.wait_for_model_info()
    inf.minAreaSpin.setValue(20.0)
    if QgsApplication.processingRegistry().algorithmById("gullyseg:segment") is None:
        print("gullyseg:segment is not available: the inference screenshot shows no result")
    else:
        done = []
        inf.taskFinished.connect(done.append)
        if inf.run() is not None:
            end = time.monotonic() + 300
            while not done and time.monotonic() < end:
                app.processEvents()
                time.sleep(0.05)
        print("inference:", inf.messageLabel.text())
        group_layers = [layer for layer in inf.last_layers]
        canvas.setLayers(group_layers + [scene_layer])
        extent = scene_layer.extent()
        extent.scale(0.6)
        canvas.setExtent(extent)
    settle()
    shot = os.path.join(args.out, "dock_inference.png")
    save(window, shot)
    print(shot)
    dock.shutdown()
    QgsProject.instance().clear()
    settings.restore(saved)
    return 0


if __name__ == "__main__":
    sys.exit(main())
