"""The dock in QGIS's main window, as the dock tests need it (imported by name; tests/ is on sys.path)."""

import contextlib

from qgis.core import QgsProject
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtTest import QTest

from gullyseg.ui import settings
from gullyseg.ui.dock import GullySegDock


@contextlib.contextmanager
def docked(qgis_iface, width, height, activate=False):
    """A GullySegDock on the right of a ``width`` x ``height`` main window around the map canvas, with
    the plugin's settings reset (restored afterwards); ``activate`` waits until the window is active
    (for key events). Yields the dock; shut down and removed on exit, the project cleared."""
    saved = settings.snapshot()
    settings.reset()
    main = qgis_iface.mainWindow()
    main.setCentralWidget(qgis_iface.mapCanvas())
    widget = GullySegDock(qgis_iface, main)
    main.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, widget)
    main.resize(width, height)
    main.show()
    if activate:
        widget.show()
        main.activateWindow()
        QTest.qWaitForWindowActive(main, 2000)
    try:
        yield widget
    finally:
        widget.shutdown()
        main.removeDockWidget(widget)
        widget.deleteLater()
        main.hide()
        QgsProject.instance().clear()
        settings.restore(saved)
