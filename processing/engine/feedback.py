"""Progress, cancel and log reporting for engine code, independent of QGIS.

Processing algorithms wrap ``QgsProcessingFeedback`` in ``algorithms.base.QgisFeedback``;
command-line tools use ``PrintFeedback``; tests use ``Feedback`` (silent) or ``RecordingFeedback``.
"""

import sys
import time

from .errors import Cancelled


class Feedback:
    """Silent feedback: never cancelled. Subclass and override the four hooks."""

    def progress(self, percent) -> None:
        """Overall progress, 0..100."""

    def is_cancelled(self) -> bool:
        return False

    def info(self, message) -> None:
        """An informative log line."""

    def warn(self, message) -> None:
        """A warning the user should read."""

    # helpers -----------------------------------------------------------
    def check_cancelled(self) -> None:
        """Raise ``Cancelled`` when the user asked to stop."""
        if self.is_cancelled():
            raise Cancelled()

    def scaled(self, start, end) -> "Feedback":
        """A child feedback whose 0..100 maps onto ``start..end`` of this one."""
        return _ScaledFeedback(self, start, end)


class _ScaledFeedback(Feedback):
    def __init__(self, parent, start, end):
        self._parent = parent
        self._start = float(start)
        self._span = float(end) - float(start)

    def progress(self, percent) -> None:
        self._parent.progress(self._start + self._span * max(0.0, min(100.0, percent)) / 100.0)

    def is_cancelled(self) -> bool:
        return self._parent.is_cancelled()

    def info(self, message) -> None:
        self._parent.info(message)

    def warn(self, message) -> None:
        self._parent.warn(message)


class RecordingFeedback(Feedback):
    """Keeps everything it is told; cancels after ``cancel_after`` progress calls (tests)."""

    def __init__(self, cancel_after=None):
        self.percents = []
        self.infos = []
        self.warnings = []
        self.cancel_after = cancel_after

    def progress(self, percent) -> None:
        self.percents.append(float(percent))

    def is_cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.percents) >= self.cancel_after

    def info(self, message) -> None:
        self.infos.append(str(message))

    def warn(self, message) -> None:
        self.warnings.append(str(message))


class PrintFeedback(Feedback):
    """For command-line tools: log lines and a throttled percentage on stderr."""

    def __init__(self, stream=None):
        self._stream = stream or sys.stderr
        self._last = 0.0

    def progress(self, percent) -> None:
        now = time.monotonic()
        if now - self._last > 1.0 or percent >= 100:
            self._last = now
            print(f"  {percent:5.1f} %", file=self._stream, flush=True)

    def info(self, message) -> None:
        print(message, file=self._stream, flush=True)

    def warn(self, message) -> None:
        print(f"WARNING: {message}", file=self._stream, flush=True)
