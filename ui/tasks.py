"""Background work for the dock: a QgsTask that runs one engine function with progress and cancel.

The function runs in a worker thread and must not touch layers, the project or widgets; it
gets an engine ``Feedback`` whose progress moves the task (and QGIS's task bar) and whose
``is_cancelled`` follows the task's cancel button. ``on_done(task)`` runs in the GUI thread.
"""

import traceback

from qgis.core import QgsMessageLog, QgsProcessingException, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from .. import compat
from ..metadata import NAME
from ..processing.engine.errors import Cancelled, GullySegError
from ..processing.engine.feedback import Feedback


class _TaskFeedback(Feedback):
    def __init__(self, task):
        self._task = task

    def progress(self, percent):
        self._task.setProgress(max(0.0, min(100.0, float(percent))))

    def is_cancelled(self):
        return self._task.isCanceled()

    def info(self, message):
        self._task.messages.append(("info", str(message)))

    def warn(self, message):
        self._task.messages.append(("warning", str(message)))


class EngineTask(QgsTask):
    """Run ``function(*args, feedback=..., **kwargs)`` in the background.

    After it ends: ``result`` (the return value), ``error`` (a user-facing message or None),
    ``cancelled`` (bool), ``messages`` (list of (level, text)).
    """

    def __init__(self, description, function, *args, on_done=None, **kwargs):
        super().__init__(description, QgsTask.Flag.CanCancel)
        self._function = function
        self._args = args
        self._kwargs = kwargs
        self._on_done = on_done
        self.result = None
        self.error = None
        self.cancelled = False
        self.messages = []

    def run(self):
        try:
            self.result = self._function(*self._args, feedback=_TaskFeedback(self), **self._kwargs)
            return True
        except Cancelled:
            self.cancelled = True
            return False
        except GullySegError as exc:
            self.error = str(exc)
            return False
        except Exception as exc:  # noqa: BLE001 (report, never crash QGIS's task manager)
            self.error = f"{type(exc).__name__}: {exc}"
            QgsMessageLog.logMessage(traceback.format_exc(), NAME, compat.MSG_CRITICAL)
            return False

    def finished(self, result):  # GUI thread
        if not result and self.isCanceled():
            self.cancelled = True
        if self._on_done is not None:
            self._on_done(self)


def wait_for(task, timeout=60.0, poll=0.02):
    """Process events until ``task`` has finished (tests, benchmarks). Returns True if it did."""
    import time

    from qgis.core import QgsApplication

    end = time.monotonic() + timeout
    finished_states = (QgsTask.TaskStatus.Complete, QgsTask.TaskStatus.Terminated)
    while time.monotonic() < end:
        QgsApplication.processEvents()
        try:
            if task.status() in finished_states:
                QgsApplication.processEvents()
                return True
        except RuntimeError:  # the C++ task was already deleted: it finished
            return True
        time.sleep(poll)
    return False


class AlgorithmTask(QgsTask):
    """A Processing algorithm in the background, as ``QgsProcessingAlgRunnerTask`` runs it (prepare
    here in the GUI thread, ``runPrepared`` in the worker, ``postProcess`` back in the GUI thread),
    except that a person's cancel is not logged as a CRITICAL Processing error: it ends quietly and
    the caller says it once, as information. Other errors go to ``feedback.reportError``.

    ``executed(successful, results)`` is emitted in the GUI thread when it ends."""

    executed = pyqtSignal(bool, dict)

    def __init__(self, algorithm, parameters, context, feedback, description=""):
        super().__init__(description or algorithm.displayName(), QgsTask.Flag.CanCancel)
        self.algorithm = algorithm.create()
        self.parameters = parameters
        self.context = context
        self.feedback = feedback
        self.results = {}
        self.error = None
        self.cancelled = False
        try:
            prepared = self.algorithm.prepare(parameters, context, feedback)
        except QgsProcessingException as exc:
            prepared, self.error = False, str(exc)
        if not prepared:
            self.error = self.error or "the algorithm could not be prepared"
            feedback.reportError(self.error, True)
            self.cancel()

    def cancel(self):
        if self.feedback is not None:
            self.feedback.cancel()
        super().cancel()

    def run(self):
        if self.isCanceled():
            return False
        try:
            self.results = self.algorithm.runPrepared(self.parameters, self.context, self.feedback) or {}
            return not self.feedback.isCanceled()
        except QgsProcessingException as exc:
            if self.feedback.isCanceled():
                self.cancelled = True  # the person's cancel: not an error
            else:
                self.error = str(exc)
                self.feedback.reportError(self.error, True)
            return False
        except Exception as exc:  # noqa: BLE001 (report, never crash QGIS's task manager)
            self.error = f"{type(exc).__name__}: {exc}"
            self.feedback.reportError(traceback.format_exc(), True)
            return False

    def finished(self, result):  # GUI thread
        if result:
            try:
                extra = self.algorithm.postProcess(self.context, self.feedback)
                if extra:
                    self.results = extra
            except QgsProcessingException as exc:
                self.error = str(exc)
                self.feedback.reportError(self.error, True)
                result = False
        if not result and self.feedback.isCanceled():
            self.cancelled = True
        self.executed.emit(bool(result), dict(self.results or {}))
