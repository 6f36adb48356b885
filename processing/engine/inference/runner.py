"""Running the model: batches through the session (fixed batches padded, TTA merged) and cancel."""

import threading

import numpy as np

from ..errors import Cancelled, GullySegError
from ..onnx_model import NonFiniteOutput
from .weights import _model_tta


class _Runner:
    """Runs batches through the session (fixed batch sizes padded), TTA merged by mean."""

    def __init__(self, model, batch_size, tta):
        import onnxruntime

        self.model = model
        self.batch_size = max(1, int(batch_size))
        if model.run_batch:
            self.batch_size = model.run_batch
        self.transforms = _model_tta(model, tta)
        self.lanes = model.lanes
        self.run_options = onnxruntime.RunOptions()
        self.run_options.log_severity_level = 3

    def _run(self, x):
        try:
            return self.model.session.run([self.model.output_name], {self.model.input_name: x}, self.run_options)[0]
        except Exception as exc:
            if self.run_options.terminate:
                raise Cancelled() from None
            if isinstance(exc, GullySegError):
                raise
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GullySegError(
                f"MODEL: '{self.model.path}' failed on a batch of shape {list(x.shape)}: {text}") from None

    def predict(self, x):
        """(n, C, H, W) float32 -> (n, H, W) float32 gully probability."""
        n = x.shape[0]
        fixed = self.model.run_batch
        total = None
        for fwd, inv in self.transforms:
            xt = np.ascontiguousarray(fwd(x))
            parts = []
            step = fixed or n
            for i in range(0, n, step):
                chunk = xt[i:i + step]
                if fixed and chunk.shape[0] < fixed:
                    pad = np.zeros((fixed - chunk.shape[0],) + chunk.shape[1:], dtype=np.float32)
                    chunk = np.concatenate([chunk, pad])
                out = self._run(chunk)
                try:
                    parts.append(self.model.gully_probability(out[:min(step, n - i)]))
                except NonFiniteOutput as exc:  # counts per window of this batch
                    exc.counts = [0] * i + list(exc.counts) + [0] * max(0, n - i - len(exc.counts))
                    raise
            p = parts[0] if len(parts) == 1 else np.concatenate(parts)
            p = np.ascontiguousarray(inv(p))
            total = p if total is None else total + p
        if len(self.transforms) > 1:
            total = total / np.float32(len(self.transforms))
        return total.astype(np.float32, copy=False)


class _CancelWatcher:
    """Polls feedback.is_cancelled() and sets RunOptions.terminate (onnxruntime stops mid-run)."""

    def __init__(self, feedback, runner, stop_event, interval=0.05):
        self.feedback, self.runner, self.stop_event, self.interval = feedback, runner, stop_event, interval
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="gullyseg-cancel-watch", daemon=True)

    def _watch(self):
        while not self.finished.wait(self.interval):
            try:
                cancelled = self.feedback.is_cancelled()
            except Exception:  # noqa: BLE001 - a dead feedback object must not kill the run
                cancelled = False
            if cancelled:
                self.runner.run_options.terminate = True
                self.stop_event.set()
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.finished.set()
        self.thread.join(timeout=2)
