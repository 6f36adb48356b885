"""Benchmark: moving to the next tile in the screening tab, including the map canvas.

    .venv/bin/python benchmarks/bench_screening.py [--quick] [--steps N] [--think MS]

A synthetic scene (EPSG:32606, 0.75 m) is cut into 256x256 tiles by the gridtiles engine; the
scene and the tile index are shown on a real QgsMapCanvas (offscreen). Each step is measured
from the key press to the end of the canvas render (mapCanvasRefreshed):

- dock: ``ScreeningTab`` pressing N (tile picture from the prefetch cache, QImage -> pixmap,
  rubber band, canvas zoomed to 3x3 tiles and re-rendered). Between steps the benchmark waits
  ``--think`` ms (unmeasured; a person needs far longer than that to look at a tile), which is
  when the prefetch threads decode the next tiles.
- peer (naive, same run): for each tile, open it as a QgsRasterLayer and render it with
  QgsMapRendererSequentialJob into the view, then zoom the canvas and wait for its render too.

Target: dock median and p95 well under 250 ms. Prints median / p95 for both and the ratios,
with and without the canvas render (which both paths share and which dominates).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _register():
    """Import the checkout as package ``gullyseg`` (tools/gullyseg_cli.py does it for every tool)."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from gullyseg_cli import register_package

    register_package()


class _Bar:
    def pushMessage(self, *args, **kwargs):  # noqa: N802
        pass


class _Iface:
    """The two things the screening tab asks of QGIS's iface."""

    def __init__(self, canvas):
        self._canvas = canvas
        self._bar = _Bar()

    def mapCanvas(self):  # noqa: N802
        return self._canvas

    def messageBar(self):  # noqa: N802
        return self._bar


def percentile(values, q):
    values = sorted(values)
    k = max(0, min(len(values) - 1, int(round(q / 100.0 * (len(values) - 1)))))
    return values[k]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller scene and fewer steps")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--think", type=float, default=150.0, help="unmeasured pause between steps (ms)")
    args = parser.parse_args()
    size = 1536 if args.quick else 4096
    steps = args.steps or (20 if args.quick else 60)

    from qgis.core import QgsApplication

    app = QgsApplication([], True)
    app.initQgis()
    _register()
    from qgis.core import (
        QgsMapRendererSequentialJob,
        QgsMapSettings,
        QgsProject,
        QgsRasterLayer,
        QgsRectangle,
    )
    from qgis.gui import QgsMapCanvas
    from qgis.PyQt.QtCore import QEventLoop, QSize, QTimer
    from qgis.PyQt.QtGui import QPixmap

    from gullyseg import compat
    from gullyseg.processing.engine import dataset, synthetic, tiling
    from gullyseg.ui import settings
    from gullyseg.ui.screening import ScreeningTab

    saved_settings = settings.snapshot()  # the benchmark changes the filter; put it back at the end

    work = tempfile.mkdtemp(prefix="bench_screening_")
    scene = os.path.join(work, "scene.tif")
    t0 = time.perf_counter()
    synthetic.make_scene(scene, width=size, height=size, seed=7)
    result = tiling.grid_tiles(scene, os.path.join(work, "dataset"))
    index = os.path.join(work, "dataset", dataset.INDEX_NAME)
    print(f"scene {size}x{size}, {result.tile_count} tiles of 256x256 ({time.perf_counter() - t0:.1f} s to make)")

    canvas = QgsMapCanvas()
    canvas.resize(900, 700)
    canvas.show()
    scene_layer = QgsRasterLayer(scene, "scene")
    if QgsProject.instance().addMapLayer(scene_layer) is None:
        raise SystemExit(f"cannot add {scene} to the project")
    canvas.setDestinationCrs(scene_layer.crs())
    iface = _Iface(canvas)

    def wait_render(timeout_ms=5000):
        loop = QEventLoop()
        canvas.mapCanvasRefreshed.connect(loop.quit)
        QTimer.singleShot(timeout_ms, loop.quit)
        compat.exec_dialog(loop)
        canvas.mapCanvasRefreshed.disconnect(loop.quit)

    def pause(ms):
        end = time.perf_counter() + ms / 1000.0
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.005)

    # --- the dock ---------------------------------------------------------------------------
    tab = ScreeningTab(iface)
    tab.resize(420, 760)
    tab.show()
    assert tab.open_index(index), tab.messageLabel.text()
    canvas.setLayers([tab.layer, scene_layer])
    tab.set_filter("all")
    wait_render()
    pause(args.think)
    dock_times, dock_sync = [], []
    for _ in range(steps):
        start = time.perf_counter()
        tab.trigger("next")
        dock_sync.append((time.perf_counter() - start) * 1000.0)
        wait_render()
        dock_times.append((time.perf_counter() - start) * 1000.0)
        pause(args.think)
    cold_times = []  # no pause: the prefetch has no time to run ahead
    for _ in range(min(10, steps)):
        start = time.perf_counter()
        tab.trigger("next")
        wait_render()
        cold_times.append((time.perf_counter() - start) * 1000.0)
    tiles = list(tab.session.tiles)
    root = tab.root
    tab.shutdown()

    # --- the naive peer ------------------------------------------------------------------------
    view = tab.tileView  # render into the same kind of widget
    naive_times, naive_sync = [], []
    for tile in tiles[1:steps + 1]:
        start = time.perf_counter()
        layer = QgsRasterLayer(os.path.join(root, tile.image_tif), "tile")
        settings = QgsMapSettings()
        settings.setLayers([layer])
        settings.setDestinationCrs(layer.crs())
        settings.setExtent(layer.extent())
        settings.setOutputSize(QSize(512, 512))
        job = QgsMapRendererSequentialJob(settings)
        job.start()
        job.waitForFinished()
        view.setPixmap(QPixmap.fromImage(job.renderedImage()))
        xmin, ymin, xmax, ymax = tile.bounds
        w, h = xmax - xmin, ymax - ymin
        canvas.setExtent(QgsRectangle(xmin - w, ymin - h, xmax + w, ymax + h))
        canvas.refresh()
        naive_sync.append((time.perf_counter() - start) * 1000.0)
        wait_render()
        naive_times.append((time.perf_counter() - start) * 1000.0)
        pause(args.think)

    def line(name, values):
        return (f"{name:<34} median {statistics.median(values):7.1f} ms   p95 {percentile(values, 95):7.1f} ms"
                f"   max {max(values):7.1f} ms   (n={len(values)})")

    print(line("dock, next tile (prefetched)", dock_times))
    print(line("dock, next tile (no pause)", cold_times))
    print(line("naive QgsRasterLayer per tile", naive_times))
    print(line("dock, without the canvas render", dock_sync))
    print(line("naive, without the canvas render", naive_sync))
    ratio = statistics.median(dock_times) / statistics.median(naive_times)
    print(f"ratio dock / naive (median, with canvas): {ratio:.2f}")
    ratio = statistics.median(dock_sync) / statistics.median(naive_sync)
    print(f"ratio dock / naive (median, tile view only): {ratio:.2f}")
    target = percentile(dock_times, 95) < 250.0
    print(f"target p95 < 250 ms: {'met' if target else 'NOT met'}")
    QgsProject.instance().clear()
    settings.restore(saved_settings)
    canvas.deleteLater()
    app.processEvents()
    return 0 if target else 1


if __name__ == "__main__":
    sys.exit(main())
