"""Background work for the dock: a QgsTask that runs one engine function with progress and cancel.

The function runs in a worker thread and must not touch layers, the project or widgets; it
gets an engine ``Feedback`` whose progress moves the task (and QGIS's task bar) and whose
``is_cancelled`` follows the task's cancel button. ``on_done(task)`` runs in the GUI thread.
"""

import traceback

from qgis.core import QgsMessageLog, QgsTask

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
