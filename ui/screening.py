"""The screening tab: go through the tiles of a tile index with the keyboard, keep or reject each.

Keys (whenever the Screening tab is visible and no text field has the focus, also after a click
on a button or on the map; a "keys active" line under the picture says when they are):
K keep · R reject · S skip · U or Backspace undo (repeat to go further back) ·
→/N next · ←/P previous · G type a tile id (Enter goes there, Esc comes back).
The keys are QActions registered with QGIS's shortcuts manager: rebind them under
Settings > Keyboard Shortcuts (search "GullySeg").

Every decision is written at once to the index file through the layer's data provider
(an OGR/GeoPackage transaction per decision, no edit session), so closing QGIS or a crash
loses nothing; reopening the index resumes at the first unscreened tile.
The logic lives in ``screening_session.ScreeningSession``; this module is the view.
"""

import os
from dataclasses import asdict

from osgeo import gdal
from qgis.core import (
    QgsApplication,
    QgsCoordinateTransform,
    QgsField,
    QgsGeometry,
    QgsMessageLog,
    QgsProject,
    QgsProviderRegistry,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.gui import QgsFileWidget, QgsRubberBand
from qgis.PyQt import uic
from qgis.PyQt.QtCore import QEvent, QObject, Qt, QTimer, pyqtSignal
from qgis.PyQt.QtGui import QColor, QKeySequence, QPixmap
from qgis.PyQt.QtWidgets import (
    QApplication,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from .. import compat
from ..metadata import NAME, resource_path
from ..processing.engine import dataset, screening
from ..processing.engine.errors import GullySegError
from . import settings
from .screening_session import (
    BUSY_TIMEOUT_S,
    FILTER_ALL,
    FILTER_KEPT,
    FILTER_REJECTED,
    FILTER_UNSCREENED,
    ORDER_ID,
    ORDER_SCORE,
    STATUS_KEEP,
    STATUS_REJECT,
    ScreeningSession,
    Tile,
    normalise_status,
    write_with_retry,
)
from .tasks import EngineTask
from .tile_image import PICTURE_SUFFIXES, TilePrefetcher, estimate_stretch, image_path, to_qimage

FORM_CLASS, _ = uic.loadUiType(os.path.join(os.path.dirname(__file__), "screening.ui"))

STYLE_TILES = resource_path("styles", "tiles_status.qml")
PREFETCH_AHEAD = 4
FILTER_ITEMS = [
    ("Unscreened only", FILTER_UNSCREENED),
    ("Kept", FILTER_KEPT),
    ("Rejected", FILTER_REJECTED),
    ("All tiles", FILTER_ALL),
]
ORDER_ITEMS = [("Grid order", ORDER_ID), ("Score (likely gully first)", ORDER_SCORE)]
STATUS_COLOURS = {"unscreened": "#808080", STATUS_KEEP: "#1a8c2e", STATUS_REJECT: "#c83232"}



DECISIONS = ("keep", "reject", "skip", "undo")

# (object name, action, default key, text): QActions registered with QgsGui.shortcutsManager()
SHORTCUTS = (
    ("GullySegScreeningKeep", "keep", "K", "GullySeg screening: keep the tile"),
    ("GullySegScreeningReject", "reject", "R", "GullySeg screening: reject the tile"),
    ("GullySegScreeningSkip", "skip", "S", "GullySeg screening: skip the tile"),
    ("GullySegScreeningUndo", "undo", "U", "GullySeg screening: undo the last decision"),
    ("GullySegScreeningUndo2", "undo", "Backspace", "GullySeg screening: undo (second key)"),
    ("GullySegScreeningNext", "next", "N", "GullySeg screening: next tile"),
    ("GullySegScreeningNext2", "next", "Right", "GullySeg screening: next tile (second key)"),
    ("GullySegScreeningPrevious", "previous", "P", "GullySeg screening: previous tile"),
    ("GullySegScreeningPrevious2", "previous", "Left", "GullySeg screening: previous tile (second key)"),
    ("GullySegScreeningGoto", "goto", "G", "GullySeg screening: go to a tile id"),
)
TEXT_INPUT_CLASSES = ("QLineEdit", "QTextEdit", "QPlainTextEdit", "QAbstractSpinBox", "QsciScintillaBase")


def is_text_input(widget):
    """True for widgets that take typed text (their keys are theirs, not screening's)."""
    if widget is None:
        return False
    if any(widget.inherits(name) for name in TEXT_INPUT_CLASSES):
        return True
    return widget.inherits("QComboBox") and widget.isEditable()


def layer_file_path(layer):
    """The file behind a vector layer ('' for memory layers and the like)."""
    parts = QgsProviderRegistry.instance().decodeUri(layer.providerType(), layer.source())
    return parts.get("path") or ""


def tiles_from_layer(layer):
    """Session tiles from a tile-index layer (feature ids as the layer's provider knows them)."""
    names = layer.fields().names()
    missing = [f for f in ("tile_id", "status") if f not in names]
    if missing:
        raise GullySegError(
            f"TILES: layer '{layer.name()}' lacks the fields {missing}; pick a tile index written by "
            "'Split raster into tiles' (gullyseg:gridtiles)."
        )

    def get(feature, name, default=None):
        if name not in names:
            return default
        value = feature[name]
        if value is None or (hasattr(value, "isNull") and value.isNull()):
            return default
        return value

    tiles = []
    for feature in layer.getFeatures():
        geom = feature.geometry()
        box = geom.boundingBox() if geom is not None and not geom.isEmpty() else None
        score = get(feature, "score")
        tiles.append(
            Tile(
                fid=feature.id(),
                tile_id=str(get(feature, "tile_id", "")),
                status=normalise_status(get(feature, "status")),
                bounds=(box.xMinimum(), box.yMinimum(), box.xMaximum(), box.yMaximum()) if box else None,
                row=get(feature, "row"),
                col=get(feature, "col"),
                image_tif=str(get(feature, "image_tif", "") or ""),
                image_jpg=str(get(feature, "image_jpg", "") or ""),
                score=float(score) if score is not None else None,
            )
        )
    return tiles


class _KeyFilter(QObject):
    """Screening keys for the tile view and the tab; text fields keep their keys."""

    def __init__(self, tab):
        super().__init__(tab)
        self._tab = tab

    def eventFilter(self, obj, event):  # noqa: N802
        kind = event.type()
        if kind not in (QEvent.Type.KeyPress, QEvent.Type.ShortcutOverride):
            return False
        if isinstance(obj, QLineEdit):
            return False
        if event.modifiers() & (Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier):
            return False
        action = self._tab.action_for_key(event.key(), event.modifiers())
        if action is None:
            return False
        if kind == QEvent.Type.ShortcutOverride:
            event.accept()  # ours: QGIS's own single-key shortcuts must not take it
            return True
        if event.isAutoRepeat() and action in DECISIONS:
            return True  # a held-down K must not keep a run of tiles nobody looked at
        self._tab.trigger(action)
        return True


class ScreeningTab(QWidget, FORM_CLASS):
    """The screening tab. ``session`` is None until an index is opened."""

    tileShown = pyqtSignal(str)  # tile id (or '' when the queue is done)

    def __init__(self, iface, parent=None):
        super().__init__(parent)
        self.setupUi(self)
        self.iface = iface
        self.layer = None
        self.root = None  # dataset folder
        self.session = None
        self.prefetcher = None
        self.rubber_band = None
        self.score_task = None
        self._pixmap = None
        self._status_index = -1
        self.context_tiles = max(1, settings.value("screening/context_tiles"))

        for text, key in FILTER_ITEMS:
            self.filterCombo.addItem(text, key)
        for text, key in ORDER_ITEMS:
            self.orderCombo.addItem(text, key)
        self._select_data(self.filterCombo, settings.value("screening/filter"))
        self._select_data(self.orderCombo, settings.value("screening/order"))
        self.filterCombo.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        self.orderCombo.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        self.indexCombo.setFocusPolicy(Qt.FocusPolicy.ClickFocus)

        self.indexCombo.setFilters(compat.LAYER_FILTER_POLYGON)
        self.indexCombo.setAllowEmptyLayer(True)
        self.indexCombo.setLayer(None)
        self.scoreModelWidget.setFilter("ONNX models (*.onnx)")
        self.scoreModelWidget.setStorageMode(QgsFileWidget.StorageMode.GetFile)
        score_model = settings.value("screening/score_model")
        demo_model = resource_path("models", "gullyseg_demo_unet.onnx")
        if (not score_model or not os.path.isfile(score_model)) and os.path.exists(demo_model):
            score_model = demo_model  # the demo model, until the person picks their own
        self.scoreModelWidget.setFilePath(score_model)
        self.scoreProgress.setVisible(False)
        self.tileView.setText("Open a tile index (index.gpkg of a dataset folder) to start screening.")

        self.keysLabel = QLabel(self)
        self.keysLabel.setObjectName("keysLabel")
        self.keysLabel.setWordWrap(True)
        layout = self.layout()
        layout.insertWidget(layout.indexOf(self.tileView) + 1, self.keysLabel)
        self.emptyButton = QPushButton("Show all tiles", self)
        self.emptyButton.setObjectName("emptyButton")
        self.emptyButton.hide()
        self.emptyButton.clicked.connect(lambda: self.set_filter(FILTER_ALL))
        layout.insertWidget(layout.indexOf(self.keysLabel) + 1, self.emptyButton)
        picture_row = QHBoxLayout()
        picture_row.addWidget(QLabel("Picture", self))
        self.bandCombo = QComboBox(self)
        self.bandCombo.setObjectName("bandCombo")
        self.bandCombo.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        self.bandCombo.setToolTip("Band combination of the tile picture (from the tiles' GeoTIFFs); "
                                  "'Dataset pictures' shows the JPEGs gridtiles wrote")
        self.bandCombo.addItem("Dataset pictures", None)
        self.bandCombo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.bandCombo.setMinimumContentsLength(8)
        picture_row.addWidget(self.bandCombo, 1)
        self.reportButton = QPushButton("Report…", self)
        self.reportButton.setObjectName("reportButton")
        self.reportButton.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        self.reportButton.setToolTip("Save the screening report: counts, rate and a CSV of this session's "
                                     "decisions with time stamps")
        self.reportButton.clicked.connect(self._save_report_dialog)
        picture_row.addWidget(self.reportButton)
        layout.insertLayout(layout.indexOf(self.tileView), picture_row)
        self.bandCombo.currentIndexChanged.connect(self._on_bands_changed)
        self.picture_bands = None
        self.actions = []
        self._create_actions()
        QApplication.instance().focusChanged.connect(self._update_keys_indicator)

        self._keys = _KeyFilter(self)
        for widget in (self, self.tileView, self.keepButton, self.rejectButton, self.skipButton,
                       self.undoButton, self.prevButton, self.nextButton, self.jumpButton, self.scoreButton):
            widget.installEventFilter(self._keys)
        self.tileView.installEventFilter(self)

        self.keepButton.clicked.connect(lambda: self.trigger("keep"))
        self.rejectButton.clicked.connect(lambda: self.trigger("reject"))
        self.skipButton.clicked.connect(lambda: self.trigger("skip"))
        self.undoButton.clicked.connect(lambda: self.trigger("undo"))
        self.prevButton.clicked.connect(lambda: self.trigger("previous"))
        self.nextButton.clicked.connect(lambda: self.trigger("next"))
        self.jumpButton.clicked.connect(self._jump_from_edit)
        self.jumpEdit.returnPressed.connect(self._jump_from_edit)
        self.jumpEdit.installEventFilter(self)
        self.openButton.clicked.connect(self._browse_index)
        self.indexCombo.layerChanged.connect(self._on_layer_chosen)
        self.filterCombo.currentIndexChanged.connect(self._on_filter_changed)
        self.orderCombo.currentIndexChanged.connect(self._on_filter_changed)
        self.scoreButton.clicked.connect(self.start_scoring)
        self.scoreModelWidget.fileChanged.connect(lambda p: settings.set_value("screening/score_model", p))
        QgsProject.instance().layersAdded.connect(self._preselect_index)
        self._update_enabled()
        self._preselect_index()

    # --- keyboard -----------------------------------------------------------------
    def _create_actions(self):
        """One QAction per screening key, on this tab and on QGIS's main window (so the keys work
        after a click on the map), registered with QGIS's shortcuts manager (rebindable)."""
        from qgis.gui import QgsGui

        main = self.iface.mainWindow() if self.iface is not None else None
        manager = QgsGui.shortcutsManager()
        for name, action_name, key, text in SHORTCUTS:
            action = compat.QAction(text, self)
            action.setObjectName(name)
            action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            action.setAutoRepeat(action_name not in DECISIONS)  # a held-down K keeps one tile
            action.setEnabled(False)
            action.setProperty("screening_action", action_name)
            action.triggered.connect(lambda _checked=False, a=action_name: self._on_shortcut(a))
            if manager is not None:
                manager.registerAction(action, key)  # the user's binding, or the default
            else:
                action.setShortcut(QKeySequence(key))
            self.addAction(action)
            if main is not None:
                main.addAction(action)
            self.actions.append(action)

    def action_for_key(self, key, modifiers=Qt.KeyboardModifier.NoModifier):
        """The screening action bound to a key press (the actions' current shortcuts; Up/Down too)."""
        try:
            combined = QKeySequence(int(key) | int(modifiers))
        except TypeError:
            combined = QKeySequence(key.value | modifiers.value)
        for action in self.actions:
            if not action.shortcut().isEmpty() and action.shortcut().matches(combined) == \
                    QKeySequence.SequenceMatch.ExactMatch:
                return action.property("screening_action")
        return {Qt.Key.Key_Down: "next", Qt.Key.Key_Up: "previous"}.get(key)

    def _on_shortcut(self, action):
        if not self.keys_active():
            return
        self.trigger(action)

    def keys_active(self):
        """Screening keys work now: the tab is visible, an index is open, no text field has the focus."""
        return self.isVisible() and self.session is not None and not is_text_input(QApplication.focusWidget())

    def _update_keys_indicator(self, *_args):
        try:
            visible = self.isVisible()
        except RuntimeError:  # deleted
            return
        for action in self.actions:
            action.setEnabled(visible and self.session is not None)
        if self.session is None:
            text, colour = "Keys: open a tile index first.", "#808080"
        elif self.keys_active():
            text, colour = "⌨ Keys active: K R S U ← →", "#1a8c2e"
        else:
            text, colour = "⌨ Keys paused: a text field has the focus (Esc)", "#b06000"
        self.keysLabel.setText(text)
        self.keysLabel.setStyleSheet(f"color: {colour};")

    # --- helpers ----------------------------------------------------------------
    @staticmethod
    def _select_data(combo, value):
        index = combo.findData(value)
        if index >= 0:
            combo.setCurrentIndex(index)

    def _message(self, text, level=None, bar=False):
        """A message in the tab (and in QGIS's message bar for errors)."""
        colour = {compat.MSG_CRITICAL: "#c83232", compat.MSG_WARNING: "#b06000"}.get(level, "")
        self.messageLabel.setStyleSheet(f"color: {colour};" if colour else "")
        self.messageLabel.setText(text)
        if bar and self.iface is not None:
            self.iface.messageBar().pushMessage(NAME, text, level if level is not None else compat.MSG_INFO, 8)
        if level in (compat.MSG_CRITICAL, compat.MSG_WARNING):
            QgsMessageLog.logMessage(text, NAME, level)

    def _update_enabled(self):
        self._update_keys_indicator()
        has = self.session is not None
        for widget in (self.keepButton, self.rejectButton, self.skipButton, self.prevButton, self.nextButton,
                       self.jumpButton, self.jumpEdit, self.filterCombo, self.orderCombo, self.scoreButton):
            widget.setEnabled(has)
        self.undoButton.setEnabled(has and bool(self.session.undo_stack))

    # --- opening an index -----------------------------------------------------------
    def _browse_index(self):
        start = settings.value("screening/last_index") or ""
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a GullySeg tile index", os.path.dirname(start) if start else "",
            "Tile index (index.gpkg *.gpkg);;All files (*)",
        )
        if path:
            self.open_index(path)

    def open_index(self, path):
        """Open ``index.gpkg`` (or reuse it when already loaded), add it styled, start screening."""
        path = os.path.abspath(str(path))
        for layer in QgsProject.instance().mapLayers().values():
            if isinstance(layer, QgsVectorLayer) and layer.isValid() and layer_file_path(layer) == path:
                self.indexCombo.setLayer(layer)
                if self.layer is not layer:
                    self.set_layer(layer)
                return self.session is not None
        layer = QgsVectorLayer(f"{path}|layername={dataset.INDEX_LAYER}", self._layer_name(path), "ogr")
        if not layer.isValid():
            layer = QgsVectorLayer(path, self._layer_name(path), "ogr")
        if not layer.isValid():
            self._message(f"Cannot open '{path}' as a tile index.", compat.MSG_CRITICAL, bar=True)
            return False
        if QgsProject.instance().addMapLayer(layer) is None:
            self._message(f"Cannot add '{path}' to the project.", compat.MSG_CRITICAL, bar=True)
            return False
        self.indexCombo.setLayer(layer)  # -> _on_layer_chosen -> set_layer
        if self.layer is not layer:
            self.set_layer(layer)
        return self.session is not None

    def _preselect_index(self, *_args):
        """With no index open, pick the project's tile index (the demo project's, a dataset's
        index.gpkg with a status field): the one opened last time first."""
        try:
            if self.layer is not None:
                return None
        except RuntimeError:
            return None
        last = os.path.abspath(settings.value("screening/last_index")) if settings.value("screening/last_index") else ""
        found = []
        for layer in QgsProject.instance().mapLayers().values():
            if not isinstance(layer, QgsVectorLayer) or not layer.isValid():
                continue
            path = layer_file_path(layer)
            if path and os.path.basename(path) == dataset.INDEX_NAME and layer.fields().indexOf("status") >= 0:
                found.append((path != last, layer.name(), layer))
        if not found:
            return None
        layer = sorted(found, key=lambda item: item[:2])[0][2]
        self.indexCombo.setLayer(layer)
        if self.layer is not layer:
            self.set_layer(layer)
        return layer

    @staticmethod
    def _layer_name(path):
        folder = os.path.basename(os.path.dirname(path))
        return f"{folder} tiles" if folder else "tiles"

    def _on_layer_chosen(self, layer):
        if layer is not self.layer:
            self.set_layer(layer)

    def set_layer(self, layer):
        """Screen ``layer`` (a tile index). None closes the session."""
        self._close_session()
        if layer is None:
            return False
        if not isinstance(layer, QgsVectorLayer) or not layer.isValid():
            self._message("Pick a valid tile index layer.", compat.MSG_WARNING)
            return False
        try:
            tiles = tiles_from_layer(layer)
        except GullySegError as exc:
            self._message(str(exc), compat.MSG_WARNING, bar=True)
            return False
        path = layer_file_path(layer)
        self.layer = layer
        self.root = os.path.dirname(path) if path else QgsProject.instance().homePath()
        self._status_index = layer.fields().indexOf("status")
        if layer.isEditable():
            self._message("The index layer is in edit mode: decisions go straight to the file; "
                          "do not save edits to the status field over them.", compat.MSG_WARNING)
        if os.path.exists(STYLE_TILES):
            layer.loadNamedStyle(STYLE_TILES)
            layer.triggerRepaint()
        self._journal_failed = False
        self.session = ScreeningSession(
            tiles, self._write_status, filter_name=self.filterCombo.currentData(), order=self.orderCombo.currentData(),
            journal=self._append_journal if path else None,
        )
        self._fill_band_choices(tiles)
        stretch, bands = self._picture_settings(tiles)
        self.prefetcher = TilePrefetcher(stretch=stretch, bands=bands)
        if path:
            settings.set_value("screening/last_index", path)
        self.layer.willBeDeleted.connect(self._on_layer_deleted)
        self._update_canvas_crs()
        self._message(f"{len(tiles)} tiles in '{layer.name()}'.")
        self.show_current()
        self.tileView.setFocus()
        return True

    def _fill_band_choices(self, tiles):
        """Band combinations for the GeoTIFF tiles' band count (1,2,3; 3,2,1; 4,3,2 with four bands …)."""
        self.bandCombo.blockSignals(True)
        self.bandCombo.clear()
        self.bandCombo.addItem("Dataset pictures", None)
        self.picture_bands = None
        count = 0
        for tile in tiles[:1]:
            path = image_path(self.root, tile, prefer_jpeg=False)
            if path and not path.lower().endswith(PICTURE_SUFFIXES):
                ds = gdal.Open(path)
                count = ds.RasterCount if ds is not None else 0
        choices = []
        if count >= 3:
            choices += [[1, 2, 3], [3, 2, 1]]
        if count >= 4:
            choices += [[4, 3, 2], [4, 2, 1]]
        choices += [[b] for b in range(1, count + 1)]
        for bands in choices:
            label = "Bands " + ",".join(str(b) for b in bands) if len(bands) > 1 else f"Band {bands[0]} (grey)"
            self.bandCombo.addItem(label, bands)
        self.bandCombo.blockSignals(False)

    def set_picture_bands(self, bands):
        """Show the tiles' GeoTIFF bands ``bands`` (list; None = the dataset's pictures)."""
        index = self.bandCombo.findData(bands)
        if index < 0:
            raise ValueError(f"no band combination {bands} for these tiles")
        self.bandCombo.setCurrentIndex(index)

    def _on_bands_changed(self, _index=None):
        bands = self.bandCombo.currentData()
        self.picture_bands = list(bands) if bands else None
        if self.session is None:
            return
        if self.prefetcher is not None:
            self.prefetcher.shutdown()
        if self.picture_bands:
            sample = [image_path(self.root, t, prefer_jpeg=False) for t in self.session.tiles[:: max(1, len(
                self.session.tiles) // 12)][:12]]
            sample = [p for p in sample if p and not p.lower().endswith(PICTURE_SUFFIXES)]
            try:
                stretch = estimate_stretch(sample, self.picture_bands) if sample else None
            except RuntimeError:
                stretch = None
            self.prefetcher = TilePrefetcher(stretch=stretch, bands=self.picture_bands)
        else:
            stretch, bands = self._picture_settings(self.session.tiles)
            self.prefetcher = TilePrefetcher(stretch=stretch, bands=bands)
        self.show_current()
        self.tileView.setFocus()

    # --- report -----------------------------------------------------------------------
    def _save_report_dialog(self):
        if self.session is None:
            return None
        start = os.path.join(self.root or "", "screening_report.csv")
        path, _ = QFileDialog.getSaveFileName(self, "Save the screening report", start, "CSV (*.csv)")
        return self.save_report(path) if path else None

    def _append_journal(self, row):
        """Each decision/undo, once on disk in the index, also goes to the dataset's screening journal
        (time stamps for gullyseg:screeningreport). A journal that cannot be written is said once and
        does not stop screening: the index, not the journal, holds the decisions."""
        try:
            screening.append_log(self.root, [row])
        except GullySegError as exc:
            if not self._journal_failed:
                self._journal_failed = True
                self._message(f"{exc} Decisions are still saved in the index, without time stamps.",
                              compat.MSG_WARNING, bar=True)

    def save_report(self, csv_path):
        """The screening report of this index (gullyseg:screeningreport's engine): the decisions CSV with
        time stamps and the summary JSON beside it; returns the summary dict (also shown)."""
        index_path = layer_file_path(self.layer) if self.layer is not None else None
        if not index_path:
            self._message("The screening report needs a tile index saved in a file.", compat.MSG_WARNING, bar=True)
            return None
        try:
            summary = asdict(screening.screening_report(index_path, csv_path))
        except GullySegError as exc:
            self._message(f"Cannot write the report '{csv_path}': {exc}", compat.MSG_WARNING, bar=True)
            return None
        this_session = sum(1 if r[5] == "decide" else -1 for r in self.session.log) if self.session else 0
        self._message(f"Report saved: {os.path.basename(csv_path)} ({this_session} decisions this session, "
                      f"{summary['kept']} kept, {summary['rejected']} rejected, {summary['remaining']} remaining, "
                      f"{summary['rate_per_minute']} tiles/min).")
        return summary

    def _picture_settings(self, tiles):
        """(stretch, bands) for GeoTIFF-only tiles: the dataset card's JPEG bands and scene-wide
        stretch when gridtiles recorded them (so the view matches the JPEGs it would have made),
        else the default bands and percentiles from a sample of tiles. Never per tile."""
        bands, stretch = None, None
        try:
            tiling = dataset.read_card(self.root).get("tiling") or {}
        except GullySegError:
            tiling = {}
        if tiling.get("jpeg_bands"):
            bands = [int(b) for b in tiling["jpeg_bands"]]
        recorded = tiling.get("stretch") or {}
        if recorded.get("low") and recorded.get("high") and (bands is None or recorded.get("bands") == bands):
            bands = [int(b) for b in recorded.get("bands") or bands or []] or None
            return list(zip(recorded["low"], recorded["high"])), bands
        step = max(1, len(tiles) // 12)
        sample = [image_path(self.root, t, prefer_jpeg=True) for t in tiles[::step][:12]]
        sample = [p for p in sample if p and not p.lower().endswith(PICTURE_SUFFIXES)]
        try:
            stretch = estimate_stretch(sample, bands) if sample else None
        except RuntimeError:
            stretch = None
        return stretch, bands

    def _on_layer_deleted(self):
        self.layer = None
        self._close_session()
        self.tileView.setText("The tile index was removed from the project.")

    def _close_session(self):
        if self.layer is not None:
            try:
                self.layer.willBeDeleted.disconnect(self._on_layer_deleted)
            except (TypeError, RuntimeError):
                pass
        self.session = None
        self.layer = None
        if self.prefetcher is not None:
            self.prefetcher.shutdown()
            self.prefetcher = None
        if self.rubber_band is not None:
            self.rubber_band.reset(compat.GEOMETRY_POLYGON)
        self._pixmap = None
        self.tileView.clear()
        self.tileIdLabel.clear()
        self.positionLabel.clear()
        self.countersLabel.clear()
        self._update_enabled()

    # --- writing --------------------------------------------------------------------
    def _write_status(self, tile, status):
        layer = self.layer
        if layer is None or self._status_index < 0:
            raise GullySegError("No tile index is open.")
        provider = layer.dataProvider()

        def write_once():
            provider.clearErrors()  # the provider keeps every earlier error: report this try's only
            ok = provider.changeAttributeValues({tile.fid: {self._status_index: status}})
            return ok, provider.errors()

        ok, errors = write_with_retry(write_once)
        if not ok:
            unique = list(dict.fromkeys(e.strip() for e in errors if e.strip()))
            errors = "; ".join(unique) or "the data provider refused the change"
            raise GullySegError(
                f"Cannot write status '{status}' of tile {tile.tile_id} to '{layer_file_path(layer) or layer.name()}'"
                f" ({errors}). Is the file read-only, or held by another program (waited {BUSY_TIMEOUT_S:g} s)?"
            )
        layer.triggerRepaint()

    def write_scores(self, scores):
        """Store {tile_id: score} in the index's 'score' field (added when missing)."""
        layer = self.layer
        provider = layer.dataProvider()
        if layer.fields().indexOf("score") < 0:
            provider.addAttributes([QgsField("score", compat.field_type("double"))])
            layer.updateFields()
        index = layer.fields().indexOf("score")
        by_id = {t.tile_id: t.fid for t in self.session.tiles}
        changes = {by_id[k]: {index: float(v)} for k, v in scores.items() if k in by_id and v is not None}
        if changes and not provider.changeAttributeValues(changes):
            raise GullySegError(f"Cannot write the scores to '{layer_file_path(layer)}'.")

    # --- actions ----------------------------------------------------------------------
    def trigger(self, action):
        """Run a screening action by name (keys and buttons come here)."""
        if action == "goto":
            if self.session is not None:
                self.jumpEdit.setFocus()
                self.jumpEdit.selectAll()
            return
        if self.session is None:
            return
        session = self.session
        try:
            if action == "keep":
                tile = session.keep()
                done = f"Kept {tile.tile_id}." if tile else ""
            elif action == "reject":
                tile = session.reject()
                done = f"Rejected {tile.tile_id}." if tile else ""
            elif action == "skip":
                session.skip()
                done = ""
            elif action == "undo":
                tile = session.undo()
                done = f"Undone: {tile.tile_id} is {tile.status} again." if tile else "Nothing to undo."
            elif action == "next":
                session.next()
                done = ""
            elif action == "previous":
                session.previous()
                done = ""
            else:
                raise ValueError(action)
        except GullySegError as exc:
            self._message(str(exc), compat.MSG_CRITICAL, bar=True)
            return
        self.show_current()
        if done:
            self._message(done)

    def _jump_from_edit(self):
        if self.session is None:
            return
        text = self.jumpEdit.text()
        tile = self.session.jump(text)
        if tile is None:
            self._message(f"No single tile matches '{text}'.", compat.MSG_WARNING)
            self.jumpEdit.setFocus()
            self.jumpEdit.selectAll()
            return
        if self.filterCombo.currentData() != self.session.filter:
            self.filterCombo.blockSignals(True)
            self._select_data(self.filterCombo, self.session.filter)
            self.filterCombo.blockSignals(False)
        self.jumpEdit.clear()
        self.show_current()
        self.tileView.setFocus()

    def _on_filter_changed(self, _index=None):
        settings.set_value("screening/filter", self.filterCombo.currentData())
        settings.set_value("screening/order", self.orderCombo.currentData())
        if self.session is not None:
            self.session.set_filter(self.filterCombo.currentData(), self.orderCombo.currentData())
            self.show_current()
            if self.session.order == ORDER_SCORE and not any(t.score is not None for t in self.session.tiles):
                self._message("No tile has a score yet: choose a model under Model help and press Score tiles.")
        self.tileView.setFocus()

    def set_filter(self, filter_name):
        self._select_data(self.filterCombo, filter_name)

    # --- showing ----------------------------------------------------------------------
    def show_current(self):
        session = self.session
        if session is None:
            return
        tile = session.current
        self.positionLabel.setText(session.position_text())
        self._show_counters()
        self._update_enabled()
        if tile is None:
            self._pixmap = None
            self.tileView.setPixmap(QPixmap())
            self.tileView.setText(self.empty_reason())
            self.emptyButton.setVisible(session.filter != FILTER_ALL)
            self.tileIdLabel.setText("")
            if self.rubber_band is not None:
                self.rubber_band.reset(compat.GEOMETRY_POLYGON)
            self.tileShown.emit("")
            return
        self.emptyButton.hide()
        colour = STATUS_COLOURS.get(tile.status, "#808080")
        score = f" · score {tile.score:.2f}" if tile.score is not None else ""
        self.tileIdLabel.setText(
            f"<b>{tile.tile_id}</b> <span style='color:{colour}'>● {tile.status}</span>{score}"
        )
        self._show_picture(tile)
        self._follow_canvas(tile)
        self._prefetch()
        self.tileShown.emit(tile.tile_id)

    def empty_reason(self):
        """Why nothing is shown: "all 64 tiles screened: show all?" and the like."""
        session = self.session
        c = session.counts()
        total = c["total"]
        if total == 0:
            return "The index has no tiles."
        if session.filter == FILTER_UNSCREENED:
            return (f"All {total} tiles screened ({c['kept']} kept, {c['rejected']} rejected): "
                    "show all tiles?")
        if session.filter == FILTER_KEPT and c["kept"] == 0:
            return f"No tile kept yet ({c['remaining']} of {total} unscreened): show all tiles?"
        if session.filter == FILTER_REJECTED and c["rejected"] == 0:
            return f"No tile rejected yet ({c['remaining']} of {total} unscreened): show all tiles?"
        return f"End of the {len(session.queue)} tiles under this filter: show all {total} tiles?"

    def _show_counters(self):
        c = self.session.counts()
        self.countersLabel.setText(
            f"<span style='color:{STATUS_COLOURS[STATUS_KEEP]}'>Kept <b>{c['kept']}</b></span> · "
            f"<span style='color:{STATUS_COLOURS[STATUS_REJECT]}'>Rejected <b>{c['rejected']}</b></span> · "
            f"Remaining <b>{c['remaining']}</b> · Total <b>{c['total']}</b><br>"
            f"Rate <b>{c['rate']:.1f}</b> tiles/min"
        )

    def _picture_path(self, tile):
        if not self.root:
            return None
        return image_path(self.root, tile, prefer_jpeg=not self.picture_bands)

    def _show_picture(self, tile):
        path = self._picture_path(tile)
        if path is None:
            self._pixmap = None
            self.tileView.setPixmap(QPixmap())
            self.tileView.setText(f"No image for {tile.tile_id} in '{self.root}/images'.")
            return
        try:
            rgb = self.prefetcher.get(tile.tile_id, path)
        except Exception as exc:  # noqa: BLE001 (a broken tile must not stop screening)
            self._pixmap = None
            self.tileView.setPixmap(QPixmap())
            self.tileView.setText(f"Cannot read '{path}': {exc}")
            return
        self._pixmap = QPixmap.fromImage(to_qimage(rgb))
        self._scale_picture()

    def _scale_picture(self):
        if self._pixmap is None:
            return
        size = self.tileView.contentsRect().size()
        side = max(64, min(size.width(), size.height()) - 4)
        self.tileView.setPixmap(
            self._pixmap.scaled(side, side, Qt.AspectRatioMode.KeepAspectRatio,
                                Qt.TransformationMode.FastTransformation)
        )

    def _prefetch(self):
        session = self.session
        items = [(t.tile_id, self._picture_path(t)) for t in session.upcoming(PREFETCH_AHEAD)]
        if session.pos > 0 and session.pos - 1 < len(session.queue):
            prev = session.queue[session.pos - 1]
            items.append((prev.tile_id, self._picture_path(prev)))
        self.prefetcher.prefetch(items)

    # --- the map canvas -----------------------------------------------------------------
    def _canvas(self):
        return self.iface.mapCanvas() if self.iface is not None else None

    def _update_canvas_crs(self):
        canvas = self._canvas()
        if canvas is not None and not canvas.mapSettings().destinationCrs().isValid():
            canvas.setDestinationCrs(self.layer.crs())

    def _follow_canvas(self, tile):
        canvas = self._canvas()
        if canvas is None or tile.bounds is None or self.layer is None:
            return
        xmin, ymin, xmax, ymax = tile.bounds
        rect = QgsRectangle(xmin, ymin, xmax, ymax)
        grow = (self.context_tiles - 1) / 2.0
        view = QgsRectangle(xmin - grow * rect.width(), ymin - grow * rect.height(),
                            xmax + grow * rect.width(), ymax + grow * rect.height())
        dest = canvas.mapSettings().destinationCrs()
        if dest.isValid() and self.layer.crs().isValid() and dest != self.layer.crs():
            xform = QgsCoordinateTransform(self.layer.crs(), dest, QgsProject.instance())
            view = xform.transformBoundingBox(view)
        if self.rubber_band is None:
            self.rubber_band = QgsRubberBand(canvas, compat.GEOMETRY_POLYGON)
            self.rubber_band.setColor(QColor(255, 200, 0, 255))
            self.rubber_band.setFillColor(QColor(0, 0, 0, 0))
            self.rubber_band.setWidth(3)
        self.rubber_band.setToGeometry(QgsGeometry.fromRect(rect), self.layer)
        canvas.setExtent(view)
        canvas.refresh()

    # --- scoring (optional help) -------------------------------------------------------------
    def start_scoring(self, model_path=None):
        """Score every tile by predicted gully share in a background task; returns the task."""
        if self.session is None:
            return None
        model_path = model_path or self.scoreModelWidget.filePath()
        if not model_path or not os.path.isfile(model_path):
            self._message("Choose an ONNX model file to score the tiles.", compat.MSG_WARNING)
            return None
        if self.score_task is not None:
            self.score_task.cancel()
            return None
        items = []
        for tile in self.session.tiles:
            path = image_path(self.root, tile, prefer_jpeg=False)
            if path:
                items.append((tile.tile_id, path))
        if not items:
            self._message("No tile images found to score.", compat.MSG_WARNING)
            return None
        from .scoring import score_tiles

        task = EngineTask(f"{NAME}: scoring {len(items)} tiles", score_tiles, model_path, items,
                          on_done=self._scoring_done)
        task.progressChanged.connect(self._on_score_progress)  # bound: queued to the GUI thread
        self.score_task = task
        self.scoreProgress.setValue(0)
        self.scoreProgress.setVisible(True)
        self.scoreButton.setText("Cancel scoring")
        QgsApplication.taskManager().addTask(task)
        return task

    def _on_score_progress(self, percent):
        self.scoreProgress.setValue(int(percent))

    def _scoring_done(self, task):
        self.score_task = None
        self.scoreProgress.setVisible(False)
        self.scoreButton.setText("Score tiles")
        if task.cancelled:
            self._message("Scoring cancelled; the queue is unchanged.")
            return
        if task.error:
            self._message(f"Scoring failed: {task.error}", compat.MSG_CRITICAL, bar=True)
            return
        if self.session is None:
            return
        scores = task.result or {}
        try:
            self.write_scores(scores)
        except GullySegError as exc:
            self._message(str(exc), compat.MSG_WARNING)
        self.session.set_scores(scores)
        self._select_data(self.orderCombo, ORDER_SCORE)  # -> reorder + show
        self.show_current()
        self._message(f"Scored {len(scores)} tiles by predicted gully share; likely gully tiles come first.")

    # --- Qt events ---------------------------------------------------------------------------
    def eventFilter(self, obj, event):  # noqa: N802
        if obj is self.tileView and event.type() == QEvent.Type.Resize:
            QTimer.singleShot(0, self._scale_picture)
        elif obj is self.jumpEdit and event.type() == QEvent.Type.KeyPress and event.key() == Qt.Key.Key_Escape:
            self.jumpEdit.clear()
            self.tileView.setFocus()
            return True
        return False

    def showEvent(self, event):  # noqa: N802
        QTimer.singleShot(0, self._update_keys_indicator)
        if self.rubber_band is not None and self.session is not None and self.session.current is not None:
            self.rubber_band.show()
        super().showEvent(event)

    def hideEvent(self, event):  # noqa: N802
        if self.rubber_band is not None:
            self.rubber_band.hide()  # the outline belongs to screening, not to the other tab
        super().hideEvent(event)
        for action in self.actions:
            action.setEnabled(False)  # QGIS's own keys are QGIS's again

    def shutdown(self):
        for signal, slot in ((QApplication.instance().focusChanged, self._update_keys_indicator),
                             (QgsProject.instance().layersAdded, self._preselect_index)):
            try:
                signal.disconnect(slot)
            except (TypeError, RuntimeError):
                pass
        from qgis.gui import QgsGui

        manager = QgsGui.shortcutsManager()
        main = self.iface.mainWindow() if self.iface is not None else None
        for action in self.actions:
            if manager is not None:
                manager.unregisterAction(action)
            if main is not None:
                main.removeAction(action)
        self.actions = []
        if self.score_task is not None:
            try:
                self.score_task.cancel()
            except RuntimeError:
                pass
            self.score_task = None
        self._close_session()
        if self.rubber_band is not None:
            canvas = self._canvas()
            if canvas is not None:
                canvas.scene().removeItem(self.rubber_band)
            self.rubber_band = None
