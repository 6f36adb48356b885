"""SIGTERM and SIGHUP clean up exactly as SIGINT (Ctrl+C) does.

``timeout``, SLURM, systemd and container stops end a batch job with SIGTERM; a closed terminal
sends SIGHUP. By default both kill the process at once, so the hidden temporaries of
``gdalio.atomic_output`` and a half-cut dataset would stay behind. While an engine job runs,
``terminate_as_interrupt`` turns them into ``Terminated`` (a ``KeyboardInterrupt``), the path a
Ctrl+C takes through every engine module: temporaries are removed, nothing half-written is
renamed into place. ``processAlgorithm`` then ends the process with the same signal
(``reraise``), so the caller sees the exit status it expects (143 for SIGTERM).

Installed only in the main thread (Python handles signals there) and only where the signal's
handler is the default one: under ``qgis_process`` and in scripts. QGIS's GUI runs algorithms
in worker threads and keeps its own handlers; nothing changes there.
"""

import contextlib
import os
import signal
import threading
from typing import Iterator

SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)


class Terminated(KeyboardInterrupt):
    """The process was asked to stop by a signal; partial outputs are removed on the way out."""

    def __init__(self, signum):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def _handler(signum, frame):
    raise Terminated(signum)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM/SIGHUP raise ``Terminated`` in the main thread while the block runs; restored after."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            with contextlib.suppress(ValueError, OSError, TypeError):
                if signal.getsignal(sig) == signal.SIG_DFL:
                    previous[sig] = signal.signal(sig, _handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, old)


def reraise(exc) -> None:
    """After the clean-up: end the process with the signal that stopped it (default handler)."""
    signum = getattr(exc, "signum", None)
    if signum is None or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signum) not in (signal.SIG_DFL, _handler):
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
