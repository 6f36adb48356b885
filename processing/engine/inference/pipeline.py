"""The blend pipeline: reader thread -> model threads -> weighted sums in window order -> sink."""

import queue
import threading
import time

import numpy as np

from ..errors import Cancelled, GullySegError
from ..onnx_model import NonFiniteOutput
from .weights import _inverse_weight_sums, window_weight

_PANEL_END = object()  # the reader's marker after the last window of a column panel


class _Scratch:
    """Arrays reused for every panel of a run: the same threads fill the same buffers, so the heap
    does not grow with the number of panels (the scene's width)."""

    def __init__(self):
        self.buffers = {}

    def get(self, name, shape, dtype):
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        buf = self.buffers.get(name)
        if buf is None or buf.size < nbytes:
            buf = self.buffers[name] = np.empty(nbytes, dtype=np.uint8)
        return buf[:nbytes].view(dtype).reshape(shape)


class _Accumulator:
    """Hann-weighted sums over the region of a ``_Grid`` or ``_Panel``; finished rows go to ``sink``.

    Used by the calling thread only. ``add`` blends a window's probability, ``skip`` counts a
    window without valid pixels, ``flush`` hands every row that no pending window touches any more
    to ``sink(y, prob, valid)`` (absolute raster rows, region columns, in order).
    """

    def __init__(self, grid, sink, scratch):
        self.grid, self.sink = grid, sink
        self.gx, self.gy, self.gw, self.gh = grid.region
        self.ww, self.wh = grid.window
        stride_y = (grid.row_y[1] - grid.row_y[0]) if len(grid.row_y) > 1 else 0
        cap = self.wh + stride_y  # grows when a batch spans more rows
        self.acc_p = scratch.get("acc_p", (cap, self.gw), np.float32)
        self.acc_v = scratch.get("acc_v", (cap, self.gw), bool)
        self.acc_p[...] = 0
        self.acc_v[...] = False
        self.inv_wy, self.inv_wx = _inverse_weight_sums(grid)
        self.top, self.used, self.flushed_rows = self.gy, 0, 0
        self.remaining = [len(row) for row in grid.rows]
        self.weights = {}
        self.ran = self.skipped = 0  # windows that start in the region's columns (one panel counts each)

    def add(self, win, p, valid):
        gx, gy, gw, gh = self.gx, self.gy, self.gw, self.gh
        key = self.grid.edges(win)
        wt = self.weights.get(key)
        if wt is None:
            wt = self.weights[key] = window_weight(self.ww, self.wh, *key, margin=self.grid.context)
        xa, xb = max(win.x_off, gx), min(win.x_end, gx + gw)
        ya, yb = max(win.y_off, gy), min(win.y_end, gy + gh)
        r0, r1 = ya - self.top, yb - self.top
        if r1 > self.acc_p.shape[0]:
            extra = r1 - self.acc_p.shape[0] + self.wh
            self.acc_p = np.concatenate([self.acc_p, np.zeros((extra, gw), np.float32)])
            self.acc_v = np.concatenate([self.acc_v, np.zeros((extra, gw), bool)])
        sy = slice(ya - win.y_off, yb - win.y_off)
        sx = slice(xa - win.x_off, xb - win.x_off)
        cols = slice(xa - gx, xb - gx)
        part = p[sy, sx]
        np.multiply(part, wt[sy, sx], out=part)  # p is this window's own array
        self.acc_p[r0:r1, cols] += part
        self.acc_v[r0:r1, cols] |= valid[sy, sx]
        self.used = max(self.used, r1)
        self.remaining[win.row] -= 1
        self.ran += self.grid.counts(win)

    def skip(self, win):
        self.remaining[win.row] -= 1
        self.skipped += self.grid.counts(win)

    def flush(self):
        grid = self.grid
        r = self.flushed_rows
        while r < len(grid.rows) and self.remaining[r] == 0:
            r += 1
        if r == self.flushed_rows:
            return
        self.flushed_rows = r
        final = grid.row_y[r] if r < len(grid.rows) else self.gy + self.gh
        n = final - self.top
        if n <= 0:
            return
        # divided by the summed weights of the windows over each pixel (a valid pixel has had all of
        # them: a window over a valid pixel is never skipped)
        valid = self.acc_v[:n].copy()
        y0 = self.top - self.gy
        prob = np.multiply(self.acc_p[:n], self.inv_wy[y0:y0 + n, None])
        prob *= self.inv_wx
        self.sink(self.top, prob, valid)
        used = self.used
        keep = max(0, used - n)
        if keep:
            self.acc_p[:keep] = self.acc_p[n:used]
            self.acc_v[:keep] = self.acc_v[n:used]
        self.acc_p[keep:used] = 0
        self.acc_v[keep:used] = False
        self.used = keep
        self.top = final


class _Blend:
    """Reader thread -> model threads (``runner.lanes`` batches at once) -> ``_Accumulator`` -> ``sink``.

    ``panels``: a ``_Grid`` or its column ``_Panel``s, done one after the other by the same threads
    (the reader goes on with the next panel while the last batches of one are blended).
    ``make_reader(panel, scratch)`` returns a reader for a panel; ``on_panel(panel)`` is called
    before the rows of each panel reach ``sink``. The reader thread reads, normalises straight
    into batch arrays and numbers every item (a batch, a skipped window, the end of a panel); the
    model threads run batches in any order; the calling thread (``run``) blends the results
    strictly in that order, so the sums, and the outputs, do not depend on the number of lanes.
    """

    def __init__(self, model, panels, make_reader, scale, runner, sink, feedback, stop, progress=(0.0, 100.0),
                 on_panel=None):
        self.model, self.panels, self.make_reader, self.scale = model, panels, make_reader, scale
        self.runner, self.sink, self.feedback, self.stop = runner, sink, feedback, stop
        self.progress_span, self.on_panel = progress, on_panel
        self.lanes, self.batch_size = runner.lanes, runner.batch_size
        self.halt = threading.Event()  # ends this run's threads; ``stop`` (cancel) ends the whole run
        self.jobs = queue.Queue()  # (seq, wins, x, valids); x None: a skipped window (wins) or _PANEL_END
        self.slots = threading.Semaphore(self.lanes + 2)  # batches between reader and blending: bounded memory
        self.spare = []  # batch arrays back from the blending, reused (no fresh pages to fault in per batch)
        self.results = {}  # seq -> (wins, probs, valids, x), from the model threads (probs None: as in ``jobs``)
        self.failures = []  # the first exception of any thread
        self.ready = threading.Condition()
        self.scratch = _Scratch()

    # -- helpers shared by the threads --
    def _deliver(self, seq, value):
        with self.ready:
            self.results[seq] = value
            self.ready.notify()

    def _fail(self, exc):
        with self.ready:
            self.failures.append(exc)
            self.ready.notify()

    def _stopped(self):
        return self.stop.is_set() or self.halt.is_set()

    def _take_slot(self):
        while not self._stopped():
            if self.slots.acquire(timeout=0.1):
                return True
        return False

    # -- the reader thread --
    def _produce(self):
        seq = 0
        try:
            for panel in self.panels:
                seq = self._produce_panel(panel, seq)
                if seq is None:
                    return
                self.jobs.put((seq, _PANEL_END, None, None))
                seq += 1
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            self._fail(exc)
        finally:
            for _ in range(self.lanes):
                self.jobs.put(None)

    def _produce_panel(self, panel, seq):
        """Queue a panel's windows in batches; returns the next sequence number (None: stopped)."""
        reader = self.make_reader(panel, self.scratch)
        reader.open()
        pad = panel.pad
        try:
            buf, wins, valids = None, [], []
            for row in panel.rows:
                if not row:  # a row of windows outside the panel's rows (a block)
                    continue
                first = panel.input_window(row[0])
                reader.need(first.y_off, first.y_end)
                for win in row:
                    if self._stopped():
                        return None
                    raw, valid_in = reader.window(panel.input_window(win))
                    valid = valid_in if pad is None else \
                        valid_in[pad[1]:pad[1] + win.height, pad[0]:pad[0] + win.width]
                    if not valid.any():
                        self.jobs.put((seq, win, None, None))
                        seq += 1
                        continue
                    if buf is None:
                        buf = self._batch_buffer(raw.shape)
                        if buf is None:
                            return None
                    self.model.normalise(raw, self.scale, valid_in, out=buf[len(wins)])
                    wins.append(win)
                    valids.append(valid.copy())
                    if len(wins) == self.batch_size:
                        self.jobs.put((seq, wins, buf, valids))
                        seq += 1
                        buf, wins, valids = None, [], []
            if wins:
                self.jobs.put((seq, wins, buf, valids))
                seq += 1
        finally:
            reader.close()
        return seq

    def _batch_buffer(self, shape):
        """A batch array (a spare one when there is one), once a slot is free; None when stopped."""
        if not self._take_slot():
            return None
        with self.ready:
            buf = self.spare.pop() if self.spare else None
        if buf is None or buf.shape[1:] != shape:
            buf = np.empty((self.batch_size,) + shape, dtype=np.float32)
        return buf

    # -- the model threads --
    def _run_model(self):
        while True:
            try:
                item = self.jobs.get(timeout=0.1)
            except queue.Empty:
                if self._stopped():
                    return
                continue
            if item is None or self.halt.is_set():
                return
            seq, wins, x, valids = item
            if x is None:
                self._deliver(seq, (wins, None, None, None))
                continue
            try:
                probs = self.runner.predict(x[:len(wins)])
            except NonFiniteOutput as exc:
                self._fail(_nan_error(exc, wins))
                return
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                self._fail(exc)
                return
            self._deliver(seq, (wins, probs, valids, x))

    # -- the calling thread --
    def _next(self, seq):
        """The item numbered ``seq`` once it is in (None after a timeout); raises a thread's failure."""
        with self.ready:
            if seq not in self.results and not self.failures:
                self.ready.wait(timeout=0.1)
            if self.failures:
                raise self.failures[0]
            return self.results.pop(seq, None)

    def run(self):
        """Blend every panel; returns (windows run, windows skipped), a window across panels counted once."""
        panels, feedback = self.panels, self.feedback
        start, end = self.progress_span
        total = max(1, sum(1 for p in panels for row in p.rows for w in row if p.counts(w)))
        counted = [0, 0]  # windows run / skipped in finished panels
        index = 0
        if self.on_panel:
            self.on_panel(panels[0])
        acc = _Accumulator(panels[0], self.sink, self.scratch)
        threads = [threading.Thread(target=self._produce, name="gullyseg-reader", daemon=True)]
        threads += [threading.Thread(target=self._run_model, name=f"gullyseg-model-{i}", daemon=True)
                    for i in range(self.lanes)]
        for thread in threads:
            thread.start()
        last_report, next_seq, ok = 0.0, 0, False
        try:
            while True:
                feedback.check_cancelled()
                item = self._next(next_seq)
                if item is None:
                    if self.stop.is_set():
                        feedback.check_cancelled()
                        raise Cancelled() from None
                    continue
                next_seq += 1
                wins, probs, valids, x = item
                if wins is _PANEL_END:  # every window of this panel is in: its last rows go out
                    acc.flush()
                    counted[0] += acc.ran
                    counted[1] += acc.skipped
                    index += 1
                    if index == len(panels):
                        break
                    if self.on_panel:
                        self.on_panel(panels[index])
                    acc = _Accumulator(panels[index], self.sink, self.scratch)
                    continue
                self._blend_item(acc, wins, probs, valids, x)
                now = time.monotonic()
                if now - last_report > 0.2:
                    last_report = now
                    done = counted[0] + counted[1] + acc.ran + acc.skipped
                    feedback.progress(start + (end - start) * done / total)
            feedback.progress(end)
            ok = True
        finally:
            self.halt.set()
            if not ok:  # stop a long run still going in a model thread
                self.runner.run_options.terminate = True
            for thread in threads:
                thread.join(timeout=10)
        return counted[0], counted[1]

    def _blend_item(self, acc, wins, probs, valids, x):
        if probs is None:  # a window without valid pixels
            acc.skip(wins)
        else:
            for win, p, valid in zip(wins, probs, valids):
                acc.add(win, p, valid)
            with self.ready:
                self.spare.append(x)
            self.slots.release()
        acc.flush()


def _blend(model, panels, make_reader, scale, runner, sink, feedback, stop, progress=(0.0, 100.0), on_panel=None):
    """``_Blend(...).run()``: (windows run, windows skipped)."""
    return _Blend(model, panels, make_reader, scale, runner, sink, feedback, stop, progress, on_panel).run()


def _nan_error(exc, wins):
    """NaN in a batch's output: an error naming the model and the windows (never probability 0)."""
    bad = [(w, n) for w, n in zip(wins, exc.counts) if n]
    where = "; ".join(f"{n} pixel(s) of the window at column {w.x_off}, row {w.y_off} ({w.width}x{w.height} px)"
                      for w, n in bad[:3]) + (f" and {len(bad) - 3} more window(s)" if len(bad) > 3 else "")
    return GullySegError(
        f"MODEL: '{exc.model_path}' returned NaN for {where} (input pixel coordinates): the model is broken "
        "(NaN weights, a division by zero) or these pixels are far outside what it was trained on. NaN is never "
        "read as a probability of 0; no output was written.")


def _blend_panels(model, grid, make_reader, scale, runner, sink, feedback, stop, progress=(0.0, 100.0), panels=None):
    """``_blend`` over the column panels of ``grid`` (one panel unless the region is wide).

    ``make_reader(panel, scratch)`` returns a reader for a panel; ``sink`` is an ``_OutputSink``;
    ``panels``: the panels to run (those of a block), else ``grid.panels()``.
    Returns (windows run, windows skipped).
    """
    panels = panels or grid.panels()

    def on_panel(panel):
        gx, _, gw, _ = panel.region
        sink.panel(gx, gx + gw)

    return _blend(model, panels, make_reader, scale, runner, sink, feedback, stop, progress,
                  on_panel if len(panels) > 1 else None)
