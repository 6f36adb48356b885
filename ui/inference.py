"""The inference tab: run ``gullyseg:segment`` on a raster layer from a panel.

The tab only gathers parameters and runs the Processing algorithm in a background task
(``tasks.AlgorithmTask``: prepare, runPrepared, postProcess, as ``QgsProcessingAlgRunnerTask``
and the Toolbox do, without logging a person's cancel as an error): QGIS stays responsive, the
progress bar follows the algorithm, Cancel stops it (the algorithm's outputs are atomic, so
nothing half-written is left) and errors are shown in the tab and the message bar. Results
are added to the project in a group, styled from resources/styles/*.qml.
"""

import os

from qgis.core import (
    QgsApplication,
    QgsMessageLog,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.gui import QgsFileWidget
from qgis.PyQt import uic
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import QComboBox, QFormLayout, QPushButton, QSizePolicy, QWidget

from .. import compat
from ..metadata import NAME, resource_path
from . import settings
from .tasks import AlgorithmTask, EngineTask

FORM_CLASS, _ = uic.loadUiType(os.path.join(os.path.dirname(__file__), "inference.ui"))

ALG_ID = "gullyseg:segment"
DEFAULT_MODEL = resource_path("models", "gullyseg_demo_unet.onnx")
STYLES = {
    "OUTPUT_PROBABILITY": resource_path("styles", "probability.qml"),
    "OUTPUT_MASK": resource_path("styles", "mask.qml"),
    "OUTPUT_POLYGONS": resource_path("styles", "gully_polygons.qml"),
}
OUTPUT_NAMES = {"OUTPUT_PROBABILITY": "probability", "OUTPUT_MASK": "mask", "OUTPUT_POLYGONS": "polygons"}
OUTPUT_EXT = {"OUTPUT_PROBABILITY": ".tif", "OUTPUT_MASK": ".tif", "OUTPUT_POLYGONS": ".gpkg"}

AREA_LAYER, AREA_CANVAS, AREA_POLYGONS = 0, 1, 2
AREA_ITEMS = [("Whole layer", AREA_LAYER), ("Current map extent", AREA_CANVAS), ("Inside polygons of a layer",
                                                                                  AREA_POLYGONS)]
def _tta_items():
    """The engine's TTA modes (processing/engine/inference TTA_NAMES), capitalised for the combo box."""
    from ..processing.engine.inference import TTA_NAMES

    return [(name[:1].upper() + name[1:], value) for value, name in sorted(TTA_NAMES.items())]


TTA_ITEMS = _tta_items()


class RunFeedback(QgsProcessingFeedback):
    """Keeps the algorithm's log and errors; ``message`` is emitted (queued) for the GUI."""

    message = pyqtSignal(str, str)  # level, text

    def __init__(self):
        super().__init__()
        self.errors = []

    def reportError(self, error, fatalError=False):  # noqa: N802, N803
        if self.isCanceled():
            return  # the person's cancel is not an error: the tab logs it once, as information
        self.errors.append(str(error))
        self.message.emit("error", str(error))
        super().reportError(error, fatalError)

    def pushWarning(self, warning):  # noqa: N802
        self.message.emit("warning", str(warning))
        super().pushWarning(warning)

    def pushInfo(self, info):  # noqa: N802
        self.message.emit("info", str(info))
        super().pushInfo(info)


def known_models(home_path):
    """[(label, path)]: the demo model, then .onnx files in ``home_path`` and ``home_path/models``."""
    found = []
    if os.path.exists(DEFAULT_MODEL):
        found.append(("Demo model (synthetic scenes only)", DEFAULT_MODEL))
    if home_path:
        for folder in (home_path, os.path.join(home_path, "models")):
            if not os.path.isdir(folder):
                continue
            for name in sorted(os.listdir(folder)):
                path = os.path.join(folder, name)
                if name.lower().endswith(".onnx") and os.path.isfile(path) and \
                        os.path.abspath(path) != os.path.abspath(DEFAULT_MODEL):
                    where = "project" if folder == home_path else "project/models"
                    found.append((f"{os.path.splitext(name)[0]} ({where})", path))
    return found


def describe_model(path, feedback=None):
    """``onnx_model.describe(path)`` (dict; loads the model and probes it once), or raises."""
    from ..processing.engine import onnx_model

    return onnx_model.describe(path)


def model_summary_html(info):
    """The model's metadata, as the tab shows it."""

    def fmt(value):
        if value is None or value == "" or value == []:
            return "<i>not stated</i>"
        if isinstance(value, (list, tuple)):
            return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        if isinstance(value, float):
            return f"{value:g}"
        return str(value)

    classes = info.get("classes") or info.get("class_names")
    gully = info.get("gully_class_name")
    if classes and gully:
        classes = ", ".join(f"<b>{c}</b>" if c == gully else str(c) for c in classes)
    window = info.get("window") or info.get("window_size") or info.get("tile_size")
    if isinstance(window, (list, tuple)) and len(window) == 2:
        window = f"{window[0]} x {window[1]} px"
    elif window:
        window = f"{window} x {window} px"
    if window and info.get("window_fixed") is False:
        window += " (model takes any size)"
    resolution = info.get("resolution_cm")
    if isinstance(resolution, (int, float)):
        resolution = f"{resolution / 100.0:g} m/px"
    else:
        resolution = info.get("resolution")
    norm = info.get("normalisation") or info.get("normalization")
    if isinstance(norm, dict):
        scale = norm.get("input_max")
        if isinstance(scale, str) and scale.startswith("255 for 8-bit"):
            scale = "255 (8-bit input)"
        parts = [f"÷ {fmt(scale)}" if scale not in (None, "") else ""]
        mean, std = norm.get("mean"), norm.get("std")
        if mean is not None and std is not None:
            parts.append(f"mean {fmt(mean)} · std {fmt(std)}")
        norm = "<br>".join(p for p in parts if p)
    rows = [
        ("Classes", fmt(classes)),
        ("Window", fmt(window)),
        ("Channels", fmt(info.get("channels")) + (f" (bands {fmt(info['bands'])})" if info.get("bands") else "")),
        ("Resolution", fmt(resolution)),
        ("Normalisation", fmt(norm)),
        ("Threshold", fmt(info.get("threshold"))),
        ("Runs on", f"<b>{fmt(info.get('provider'))}</b>"),
    ]
    return "<table>" + "".join(
        f"<tr><td style='padding-right:8px'><b>{k}</b></td><td>{v}</td></tr>" for k, v in rows
    ) + "</table>"


class InferenceTab(QWidget, FORM_CLASS):
    """Inference from a panel. ``run()`` returns the task; ``taskFinished(ok)`` when done."""

    taskFinished = pyqtSignal(bool)
    modelDescribed = pyqtSignal(str)
    installDependenciesRequested = pyqtSignal()  # the plugin opens Plugins > GullySeg > Install dependencies…

    def __init__(self, iface, parent=None):
        super().__init__(parent)
        self.setupUi(self)
        self.iface = iface
        self.task = None
        self.context = None
        self.feedback = None
        self.model_info = None
        self._describe_tasks = []
        self._closing = False
        self.last_layers = []  # layers added by the last successful run
        self.last_outputs = {}  # requested output paths of the last run

        self.rasterCombo.setFilters(compat.LAYER_FILTER_RASTER)
        self.maskCombo.setFilters(compat.LAYER_FILTER_POLYGON)
        for text, value in AREA_ITEMS:
            self.areaCombo.addItem(text, value)
        for text, value in TTA_ITEMS:
            self.ttaCombo.addItem(text, value)
        self.modelWidget.setFilter("ONNX models (*.onnx);;All files (*)")
        self.modelWidget.setStorageMode(QgsFileWidget.StorageMode.GetFile)
        self.folderWidget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.progressBar.setValue(0)
        # the model panel wraps to the dock's width instead of widening the tab (no clipping at the
        # default dock width); the status line keeps room for two lines (no jump when it wraps)
        self.modelInfoLabel.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.modelInfoLabel.setMinimumWidth(0)
        self.messageLabel.setFixedHeight(3 * self.messageLabel.fontMetrics().lineSpacing() + 4)
        self.messageLabel.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        for form in (self.inputLayout, self.optionsLayout):  # a narrow dock puts fields under their labels
            form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        for combo in (self.areaCombo, self.ttaCombo):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(10)
        self.modelCombo = QComboBox(self)
        self.modelCombo.setObjectName("modelCombo")
        self.modelCombo.setToolTip("The demo model and the .onnx models in the project's folder and its models/ "
                                   "subfolder (for example those trained with gullyseg:trainmodel)")
        self.modelCombo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.modelCombo.setMinimumContentsLength(12)
        self.inputLayout.insertRow(1, "Known models", self.modelCombo)
        self.refresh_models()
        self.modelCombo.activated.connect(self._on_model_picked)
        QgsProject.instance().homePathChanged.connect(self.refresh_models)
        self.installDepsButton = QPushButton("Install dependencies…", self)
        self.installDepsButton.setObjectName("installDepsButton")
        self.installDepsButton.setToolTip("Install onnxruntime into GullySeg's own folder (no terminal, no root)")
        self.installDepsButton.clicked.connect(self.installDependenciesRequested)
        self.installDepsButton.hide()
        self.layout().addWidget(self.installDepsButton)

        self._restore_settings()
        self.modelWidget.fileChanged.connect(self._on_model_changed)
        self.areaCombo.currentIndexChanged.connect(self._update_enabled)
        self.temporaryRadio.toggled.connect(self._update_enabled)
        self.polygonsCheck.toggled.connect(self._update_enabled)
        self.runButton.clicked.connect(self.run)
        self.cancelButton.clicked.connect(self.cancel)
        self._on_model_changed(self.modelWidget.filePath())
        self._update_enabled()

    # --- known models -------------------------------------------------------------
    def refresh_models(self, *_args):
        """List the demo model and the project's .onnx files (home folder and its models/ subfolder)."""
        try:
            combo = self.modelCombo
        except RuntimeError:
            return
        current = self.modelWidget.filePath()
        combo.blockSignals(True)
        combo.clear()
        combo.addItem("Choose a model…", "")
        for label, path in known_models(QgsProject.instance().homePath()):
            combo.addItem(label, path)
            combo.setItemData(combo.count() - 1, path, Qt.ItemDataRole.ToolTipRole)
        index = combo.findData(current) if current else -1
        combo.setCurrentIndex(max(index, 0))
        combo.blockSignals(False)

    def refresh_model(self):
        """Read the chosen model again (after Install dependencies… made onnxruntime available)."""
        self.installDepsButton.hide()
        self._on_model_changed(self.modelWidget.filePath())

    def _on_model_picked(self, index):
        path = self.modelCombo.itemData(index)
        if path:
            self.modelWidget.setFilePath(path)  # -> _on_model_changed: its metadata in the panel

    # --- settings ---------------------------------------------------------------
    def _restore_settings(self):
        model = settings.value("inference/model")
        if (not model or not os.path.isfile(model)) and os.path.exists(DEFAULT_MODEL):
            model = DEFAULT_MODEL  # first use, or the remembered model was moved/deleted
        self.modelWidget.setFilePath(model)
        self.folderWidget.setFilePath(settings.value("inference/last_folder"))
        index = self.areaCombo.findData(settings.value("inference/area"))
        self.areaCombo.setCurrentIndex(max(index, 0))
        self.overlapSpin.setValue(settings.value("inference/overlap"))
        self.batchSpin.setValue(settings.value("inference/batch_size"))
        threshold = settings.value("inference/threshold")
        self.thresholdSpin.setValue(threshold if threshold >= 0 else self.thresholdSpin.minimum())
        self.ttaCombo.setCurrentIndex(max(self.ttaCombo.findData(settings.value("inference/tta")), 0))
        self.probabilityCheck.setChecked(settings.value("inference/out_probability"))
        self.maskCheck.setChecked(settings.value("inference/out_mask"))
        self.polygonsCheck.setChecked(settings.value("inference/out_polygons"))
        self.minAreaSpin.setValue(settings.value("inference/min_area"))
        self.simplifySpin.setValue(settings.value("inference/simplify"))
        temporary = settings.value("inference/temporary")
        self.temporaryRadio.setChecked(temporary)
        self.filesRadio.setChecked(not temporary)

    def save_settings(self):
        settings.set_value("inference/model", self.modelWidget.filePath())
        settings.set_value("inference/last_folder", self.folderWidget.filePath())
        settings.set_value("inference/area", self.areaCombo.currentData())
        settings.set_value("inference/overlap", self.overlapSpin.value())
        settings.set_value("inference/batch_size", self.batchSpin.value())
        settings.set_value("inference/threshold", self._threshold())
        settings.set_value("inference/tta", self.ttaCombo.currentData())
        settings.set_value("inference/out_probability", self.probabilityCheck.isChecked())
        settings.set_value("inference/out_mask", self.maskCheck.isChecked())
        settings.set_value("inference/out_polygons", self.polygonsCheck.isChecked())
        settings.set_value("inference/min_area", self.minAreaSpin.value())
        settings.set_value("inference/simplify", self.simplifySpin.value())
        settings.set_value("inference/temporary", self.temporaryRadio.isChecked())

    # --- widgets -------------------------------------------------------------------
    def _threshold(self):
        value = self.thresholdSpin.value()
        return -1.0 if value < 0 else float(value)

    def _update_enabled(self, *_args):
        running = self.task is not None
        polygons_area = self.areaCombo.currentData() == AREA_POLYGONS
        self.maskCombo.setEnabled(polygons_area and not running)
        self.maskLabel.setEnabled(polygons_area)
        self.folderWidget.setEnabled(self.filesRadio.isChecked() and not running)
        self.minAreaSpin.setEnabled(self.polygonsCheck.isChecked())
        self.simplifySpin.setEnabled(self.polygonsCheck.isChecked())
        self.runButton.setEnabled(not running)
        self.cancelButton.setEnabled(running)

    def _on_model_changed(self, path):
        """Describe the model in a background task (loading and probing a big model takes time)."""
        self.model_info = None
        if hasattr(self, "modelCombo"):
            index = self.modelCombo.findData(path) if path else -1
            self.modelCombo.setCurrentIndex(max(index, 0))
        if not path:
            self.modelInfoLabel.setText(
                "Choose an ONNX model. The demo model (resources/models/gullyseg_demo_unet.onnx) is not "
                "installed." if not os.path.exists(DEFAULT_MODEL) else "Choose an ONNX model."
            )
            return
        if not os.path.isfile(path):
            self.modelInfoLabel.setText(f"<span style='color:#c83232'>No such file: {_html(path)}</span>")
            return
        self.modelInfoLabel.setText(f"Reading {_html(os.path.basename(path))} …")
        task = EngineTask(f"{NAME}: reading model {os.path.basename(path)}", describe_model, path,
                          on_done=lambda t, p=path: self._on_model_described(p, t))
        self._describe_tasks.append(task)
        QgsApplication.taskManager().addTask(task)

    def _on_model_described(self, path, task):
        if task in self._describe_tasks:
            self._describe_tasks.remove(task)
        if self._closing:
            return
        if path != self.modelWidget.filePath():
            return  # the person chose another model meanwhile
        if task.error or task.result is None:
            error = task.error or "the model could not be read"
            self.modelInfoLabel.setText(f"<span style='color:#c83232'>{_html(error)}</span>")
            self._offer_install(error)
            return
        self.installDepsButton.hide()
        self.model_info = task.result
        self.modelInfoLabel.setText(model_summary_html(self.model_info))
        # "Default" on the spin boxes says what the model's default is (never a bare -1)
        overlap, threshold = self.model_info.get("overlap"), self.model_info.get("threshold")
        self.overlapSpin.setSpecialValueText(f"Model ({overlap} px)" if overlap is not None else "Default")
        self.thresholdSpin.setSpecialValueText(f"Model ({threshold:g})" if isinstance(threshold, (int, float))
                                               else "Model default")
        settings.set_value("inference/model", path)
        self.modelDescribed.emit(path)

    def wait_for_model_info(self, timeout=30.0):
        """Process events until the model panel is filled in (tests, scripts)."""
        import time

        end = time.monotonic() + timeout
        while self._describe_tasks and time.monotonic() < end:
            QgsApplication.processEvents()
            time.sleep(0.01)
        QgsApplication.processEvents()
        return not self._describe_tasks

    def _offer_install(self, text):
        """A message that says a package is missing offers Install dependencies… (tab and message bar)."""
        from .deps_dialog import mentions_missing_package

        if not mentions_missing_package(text):
            return False
        self.installDepsButton.show()
        if self.iface is not None:
            bar = self.iface.messageBar()
            item = bar.createMessage(NAME, "onnxruntime is missing from QGIS's Python.")
            button = QPushButton("Install dependencies…", item)
            button.clicked.connect(self.installDependenciesRequested)
            item.layout().addWidget(button)
            bar.pushWidget(item, compat.MSG_WARNING, 0)
        return True

    def _message(self, text, level=compat.MSG_INFO, bar=False):
        colour = {compat.MSG_CRITICAL: "#c83232", compat.MSG_WARNING: "#b06000", compat.MSG_SUCCESS: "#1a8c2e"}
        self.messageLabel.setStyleSheet(f"color: {colour[level]};" if level in colour else "")
        self.messageLabel.setText(text)
        self.messageLabel.setToolTip(text)  # the whole text when it is longer than the three lines kept for it
        if bar and self.iface is not None:
            self.iface.messageBar().pushMessage(NAME, text, level, 0 if level == compat.MSG_CRITICAL else 8)

    def _log(self, level, text):
        prefix = {"error": "ERROR: ", "warning": "Warning: "}.get(level, "")
        self.logView.appendPlainText(prefix + text)

    # --- parameters -------------------------------------------------------------------
    def _unique_path(self, folder, stem, ext):
        path = os.path.join(folder, stem + ext)
        n = 2
        while os.path.exists(path):
            path = os.path.join(folder, f"{stem}_{n}{ext}")
            n += 1
        return path

    def parameters(self, algorithm=None):
        """The ``gullyseg:segment`` parameters from the widgets, or raise ValueError (user message)."""
        layer = self.rasterCombo.currentLayer()
        if layer is None:
            raise ValueError("Choose a raster layer to map.")
        model = self.modelWidget.filePath()
        if not model:
            raise ValueError("Choose an ONNX model file.")
        if not os.path.isfile(model):
            raise ValueError(f"MODEL: '{model}' does not exist.")
        wanted = {
            "OUTPUT_PROBABILITY": self.probabilityCheck.isChecked(),
            "OUTPUT_MASK": self.maskCheck.isChecked(),
            "OUTPUT_POLYGONS": self.polygonsCheck.isChecked(),
        }
        if not any(wanted.values()):
            raise ValueError("Tick at least one output (probability, mask or polygons).")
        params = {
            "INPUT": layer.id(),
            "MODEL": model,
            "BATCH_SIZE": self.batchSpin.value(),
            "TTA": self.ttaCombo.currentData(),
        }
        if self.overlapSpin.value() >= 0:
            params["OVERLAP"] = self.overlapSpin.value()
        if self._threshold() >= 0:
            params["THRESHOLD"] = self._threshold()
        area = self.areaCombo.currentData()
        if area == AREA_CANVAS:
            if self.iface is None:
                raise ValueError("There is no map canvas to take the extent from.")
            canvas = self.iface.mapCanvas()
            extent = canvas.extent()
            crs = canvas.mapSettings().destinationCrs()
            params["EXTENT"] = (
                f"{extent.xMinimum()!r},{extent.xMaximum()!r},{extent.yMinimum()!r},{extent.yMaximum()!r}"
                + (f" [{crs.authid()}]" if crs.isValid() and crs.authid() else "")
            )
        elif area == AREA_POLYGONS:
            mask = self.maskCombo.currentLayer()
            if mask is None:
                raise ValueError("Choose the polygon layer that limits the area.")
            params["MASK_LAYER"] = mask.id()
        if self.polygonsCheck.isChecked():
            if self.minAreaSpin.value() >= 0:  # else segment's default: the area of 4 pixels
                params["MIN_AREA"] = self.minAreaSpin.value()
            params["SIMPLIFY"] = self.simplifySpin.value()

        folder = None
        if self.filesRadio.isChecked():
            folder = self.folderWidget.filePath()
            if not folder:
                raise ValueError("Choose the folder for the output files (or use temporary outputs).")
            if not os.path.isdir(folder):
                try:
                    os.makedirs(folder, exist_ok=True)  # the person named a new folder: make it
                except OSError as exc:
                    raise ValueError(
                        f"The output folder '{folder}' cannot be created: {exc.strerror or exc}.") from None
        stem = f"{_safe(layer.name())}_{_safe(os.path.splitext(os.path.basename(model))[0])}"
        for key, want in wanted.items():
            optional = True
            if algorithm is not None:
                definition = algorithm.parameterDefinition(key)
                if definition is None:
                    continue
                optional = bool(definition.flags() & compat.FLAG_OPTIONAL)
            if not want and optional:
                continue  # optional outputs that are not wanted are not written at all
            if want and folder:
                params[key] = self._unique_path(folder, f"{stem}_{OUTPUT_NAMES[key]}", OUTPUT_EXT[key])
            else:
                params[key] = "TEMPORARY_OUTPUT"
        self.wanted = wanted
        return params

    # --- running ----------------------------------------------------------------------------
    def run(self):
        """Start the algorithm in a background task. Returns the task, or None (message shown)."""
        if self.task is not None:
            return None
        algorithm = QgsApplication.processingRegistry().createAlgorithmById(ALG_ID)
        if algorithm is None:
            self._message(
                f"The algorithm {ALG_ID} is not available: is the GullySeg Processing provider loaded?",
                compat.MSG_CRITICAL, bar=True,
            )
            return None
        try:
            params = self.parameters(algorithm)
        except ValueError as exc:
            self._message(str(exc), compat.MSG_WARNING, bar=True)
            return None
        context = QgsProcessingContext()
        context.setProject(QgsProject.instance())
        ok, problem = algorithm.checkParameterValues(params, context)
        if not ok:
            self._message(problem, compat.MSG_WARNING, bar=True)
            return None
        self.save_settings()
        feedback = RunFeedback()
        feedback.message.connect(self._log)
        # a bound method of this widget: Qt queues the call to the GUI thread (progress comes from the worker)
        feedback.progressChanged.connect(self._on_progress)
        self.logView.clear()
        self.progressBar.setValue(0)
        layer = self.rasterCombo.currentLayer()
        # like QgsProcessingAlgRunnerTask, but a cancel is not logged as a CRITICAL error
        task = AlgorithmTask(algorithm, params, context, feedback, f"{NAME}: segmenting {layer.name()}")
        self.context, self.feedback, self.task = context, feedback, task
        self.last_outputs = {k: v for k, v in params.items() if k.startswith("OUTPUT_")}
        self._run_label = (layer.name(), os.path.splitext(os.path.basename(params["MODEL"]))[0])
        task.executed.connect(self._on_executed)
        self._update_enabled()
        self._message(f"Running on '{layer.name()}' …")
        QgsApplication.taskManager().addTask(task)
        return task

    def _on_progress(self, percent):
        self.progressBar.setValue(int(percent))

    def cancel(self):
        if self.task is not None:
            self._message("Cancelling …")
            self.feedback.cancel()
            try:
                self.task.cancel()
            except RuntimeError:
                pass

    def _on_executed(self, successful, results):
        feedback, context = self.feedback, self.context
        cancelled = feedback is not None and feedback.isCanceled()
        self.task = None
        self._update_enabled()
        if cancelled:
            self.progressBar.setValue(0)
            self._message("Cancelled. No output was written.", compat.MSG_INFO, bar=True)
            QgsMessageLog.logMessage("Inference cancelled by the user; no output was written.", NAME, compat.MSG_INFO)
            self.taskFinished.emit(False)
            return
        if not successful:
            errors = feedback.errors if feedback is not None else []
            text = user_message(errors[-1]) if errors else "The algorithm failed; see the log below."
            self._message(f"Inference failed: {text}", compat.MSG_CRITICAL, bar=True)
            QgsMessageLog.logMessage(f"Inference failed: {text}", NAME, compat.MSG_CRITICAL)
            self._offer_install(text)
            self.taskFinished.emit(False)
            return
        try:
            added = self._add_results(results, context)
        except Exception as exc:  # noqa: BLE001 (never a traceback in the user's face)
            self._message(f"The run finished but its layers could not be added: {exc}", compat.MSG_CRITICAL, bar=True)
            self.taskFinished.emit(False)
            return
        self.progressBar.setValue(100)
        area = results.get("GULLY_AREA_M2")
        provider = results.get("PROVIDER") or results.get("EXECUTION_PROVIDER")
        details = []
        if area is not None:
            details.append(f"gully area {float(area) / 10000:.2f} ha")
        if provider:
            details.append(f"ran on {provider}")
        self._message(
            f"Done: {len(added)} layer(s) added" + (f" ({', '.join(details)})" if details else "") + ".",
            compat.MSG_SUCCESS, bar=True,
        )
        self.taskFinished.emit(True)

    def _take_layer(self, value, key, context, name):
        """The output as a layer we own: from the context's temporary store, or loaded from its path."""
        if value is None or value == "":
            return None
        store = context.temporaryLayerStore() if context is not None else None
        if store is not None and isinstance(value, str) and store.mapLayer(value) is not None:
            layer = store.takeMapLayer(store.mapLayer(value))
            layer.setName(name)
            return layer
        path = str(value)
        if key == "OUTPUT_POLYGONS":
            layer = QgsVectorLayer(path, name, "ogr")
        else:
            layer = QgsRasterLayer(path, name, "gdal")
        return layer if layer.isValid() else None

    def _add_results(self, results, context):
        raster_name, model_name = self._run_label
        project = QgsProject.instance()
        root = project.layerTreeRoot()
        from ..processing.styling import run_label, unique_layer_name

        label = run_label(raster_name, model_name)
        group = root.insertGroup(0, unique_layer_name(f"{NAME}: {label}", project))
        added = []
        for key in ("OUTPUT_POLYGONS", "OUTPUT_MASK", "OUTPUT_PROBABILITY"):  # top to bottom
            if not self.wanted.get(key):
                continue
            layer = self._take_layer(results.get(key), key, context,
                                     unique_layer_name(f"{label} · {OUTPUT_NAMES[key]}", project))
            if layer is None:
                self._log("warning", f"{key}: no layer could be loaded from {results.get(key)!r}")
                continue
            style = STYLES[key]
            if os.path.exists(style):
                layer.loadNamedStyle(style)
            if project.addMapLayer(layer, False) is None:
                self._log("warning", f"{key}: the layer could not be added to the project")
                continue
            group.addLayer(layer)
            added.append(layer)
        self.last_layers = added
        return added

    def shutdown(self):
        self._closing = True
        try:
            QgsProject.instance().homePathChanged.disconnect(self.refresh_models)
        except (TypeError, RuntimeError):
            pass
        self._describe_tasks = []
        if self.task is not None:
            self.cancel()
            try:
                self.task.executed.disconnect(self._on_executed)
            except (TypeError, RuntimeError):
                pass
            self.task = None


def user_message(text):
    """An error for people: a Python traceback (an unexpected bug) is reduced to its last line;
    the full text stays in the tab's log and QGIS's log panel."""
    text = str(text).strip()
    if "Traceback (most recent call last)" in text:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return (lines[-1] if lines else text) + " (details in the log)"
    return text


def _safe(text):
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))
    return keep.strip("_") or "layer"


def _html(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
