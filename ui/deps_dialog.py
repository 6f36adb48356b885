"""Plugins > GullySeg > Install dependencies…: pip into the plugin's own folder, from inside QGIS.

The command is built by ui/deps.py (QGIS-free, unit-tested) and runs in a QProcess: QGIS stays
responsive, pip's output streams into the dialog line by line, Cancel stops pip, and the result
line says what happened. Nothing is written into QGIS's own Python.
"""

import importlib
import os
import tempfile

from qgis.core import QgsApplication, QgsMessageLog
from qgis.PyQt.QtCore import QProcess, QProcessEnvironment, pyqtSignal
from qgis.PyQt.QtGui import QFontDatabase
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
)

from .. import compat
from ..metadata import NAME
from . import deps

MISSING_PACKAGE_HINTS = ("onnxruntime is not installed", "No module named 'onnxruntime'", "No module named 'torch'",
                         "No module named 'segmentation_models_pytorch'")


def profile_packages_folder():
    """The plugin's package folder in the current QGIS profile."""
    return deps.packages_folder(QgsApplication.qgisSettingsDirPath())


def activate_packages_folder(folder=None):
    """Put the plugin's package folder on sys.path (at the end). Called when the plugin starts."""
    folder = folder or profile_packages_folder()
    added = deps.add_to_sys_path(folder)
    if added:
        importlib.invalidate_caches()
    return added


def mentions_missing_package(text):
    return any(hint in str(text) for hint in MISSING_PACKAGE_HINTS)


class DependenciesDialog(QDialog):
    """``python``/``target``/``held`` default to QGIS's interpreter, the profile's folder and QGIS's numpy."""

    finishedInstall = pyqtSignal(bool, str)  # ok, result text

    def __init__(self, parent=None, python=None, target=None, held=None, features=None):
        super().__init__(parent)
        self.setWindowTitle(f"{NAME}: install dependencies")
        self.setObjectName("GullySegDependenciesDialog")
        self.target = target or profile_packages_folder()
        self._python = python
        if held is None:
            import numpy

            held = {"numpy": numpy.__version__}
        self.held = held
        self.process = None
        self.cancelled = False
        self.ok = None
        self._constraints = None
        self._log_tail = ""

        layout = QVBoxLayout(self)
        intro = QLabel(
            "GullySeg installs these Python packages with pip into a folder of its own, without "
            "administrator rights; QGIS's own Python is never changed and numpy stays at QGIS's version "
            f"({held.get('numpy', '?')}).<br>Folder: <code>{_html(self.target)}</code>", self)
        intro.setWordWrap(True)
        layout.addWidget(intro)
        missing = set(deps.missing_features())
        wanted = set(features) if features is not None else {"inference"}
        self.checks = {}
        for name, (label, _packages, _modules) in deps.FEATURES.items():
            state = "missing" if name in missing else "already importable"
            check = QCheckBox(f"{label} — {state}", self)
            check.setObjectName(f"feature_{name}")
            check.setChecked(name in wanted)
            layout.addWidget(check)
            self.checks[name] = check
        self.log = QPlainTextEdit(self)
        self.log.setObjectName("logView")
        self.log.setReadOnly(True)
        self.log.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.log.setMinimumHeight(180)
        layout.addWidget(self.log)
        self.result = QLabel("", self)
        self.result.setObjectName("resultLabel")
        self.result.setWordWrap(True)
        layout.addWidget(self.result)
        self.buttons = QDialogButtonBox(self)
        self.installButton = QPushButton("Install", self)
        self.installButton.setObjectName("installButton")
        self.cancelButton = QPushButton("Cancel", self)
        self.cancelButton.setObjectName("cancelButton")
        self.cancelButton.setEnabled(False)
        self.buttons.addButton(self.installButton, QDialogButtonBox.ButtonRole.ActionRole)
        self.buttons.addButton(self.cancelButton, QDialogButtonBox.ButtonRole.ActionRole)
        self.closeButton = self.buttons.addButton(QDialogButtonBox.StandardButton.Close)
        self.installButton.clicked.connect(self.install)
        self.cancelButton.clicked.connect(self.cancel)
        self.closeButton.clicked.connect(self.reject)
        layout.addWidget(self.buttons)
        self.resize(640, 480)

    # ------------------------------------------------------------------------------------
    def python(self):
        return self._python or deps.find_python()

    def command(self):
        features = [name for name, check in self.checks.items() if check.isChecked()]
        packages = deps.requirements(features)
        return deps.install_command(self.python(), self.target, packages, self._constraints)

    def install(self):
        """Start pip. Returns the QProcess, or None (the reason is in the result line)."""
        if self.process is not None:
            return None
        self.cancelled = False
        self.ok = None
        self._log_tail = ""
        try:
            os.makedirs(self.target, exist_ok=True)
            handle, self._constraints = tempfile.mkstemp(prefix="gullyseg_constraints_", suffix=".txt")
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(deps.constraints_text(self.held))
            command = self.command()
        except (deps.DependencyError, OSError) as exc:
            self._cleanup()
            self._finish(False, str(exc))
            return None
        self.log.clear()
        self._append("$ " + " ".join(_quote(part) for part in command) + "\n")
        process = QProcess(self)
        process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        env = QProcessEnvironment()
        for key, value in deps.environment(os.environ).items():
            env.insert(key, value)
        process.setProcessEnvironment(env)
        process.readyReadStandardOutput.connect(self._read)
        process.finished.connect(self._on_finished)
        process.errorOccurred.connect(self._on_error)
        self.process = process
        self.result.setText("Installing … (the log below follows pip)")
        self._set_running(True)
        process.start(command[0], command[1:])
        return process

    def cancel(self):
        if self.process is not None:
            self.cancelled = True
            self._append("\nCancelling: stopping pip …\n")
            self.process.terminate()
            if not self.process.waitForFinished(3000):
                self.process.kill()

    def is_running(self):
        return self.process is not None

    def _read(self):
        if self.process is None:
            return
        text = bytes(self.process.readAllStandardOutput()).decode("utf-8", "replace")
        self._append(text)

    def _append(self, text):
        self._log_tail = (self._log_tail + text)[-4000:]
        self.log.moveCursor(self.log.textCursor().MoveOperation.End)
        self.log.insertPlainText(text)
        self.log.moveCursor(self.log.textCursor().MoveOperation.End)

    def _on_error(self, error):
        if error == QProcess.ProcessError.FailedToStart and self.process is not None:
            process = self.process
            self.process = None
            self._cleanup()
            self._finish(False, f"pip could not be started ({process.program()}): {process.errorString()}")

    def _on_finished(self, exit_code, exit_status=None):
        if self.process is None:
            return
        self._read()
        crashed = exit_status == QProcess.ExitStatus.CrashExit
        self.process = None
        self._cleanup()
        removed = [] if self.cancelled else deps.remove_held(self.target)
        code = exit_code if not crashed or self.cancelled else (exit_code or -1)
        ok, text = deps.result_summary(code, self.cancelled, self._log_tail, removed)
        if ok:
            activate_packages_folder(self.target)
            importlib.invalidate_caches()
            features = [name for name, check in self.checks.items() if check.isChecked()]
            modules = [m for f in features for m in deps.FEATURES[f][2]]
            still = deps.missing_modules(modules)
            if still:
                ok, text = False, (f"pip finished but {', '.join(still)} cannot be imported from {self.target}; "
                                   "see the log above.")
            else:
                text += f" {', '.join(modules)} can be used now; no restart is needed."
        self._finish(ok, text)

    def _finish(self, ok, text):
        self.ok = ok
        self._set_running(False)
        colour = "#1a8c2e" if ok else ("#b06000" if self.cancelled else "#c83232")
        self.result.setText(f"<span style='color:{colour}'><b>{_html(text)}</b></span>")
        if self.cancelled:
            level = compat.MSG_INFO
        else:
            level = compat.MSG_SUCCESS if ok else compat.MSG_WARNING
        QgsMessageLog.logMessage(f"Install dependencies: {text}", NAME, level)
        self.finishedInstall.emit(ok, text)

    def _set_running(self, running):
        self.installButton.setEnabled(not running)
        self.cancelButton.setEnabled(running)
        for check in self.checks.values():
            check.setEnabled(not running)

    def _cleanup(self):
        if self._constraints and os.path.exists(self._constraints):
            os.remove(self._constraints)
        self._constraints = None

    def reject(self):
        if self.process is not None:
            self.cancel()
        super().reject()


def _quote(part):
    return f'"{part}"' if " " in part else part


def _html(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

