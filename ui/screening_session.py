"""Screening logic without widgets: the queue, decisions, undo, filters, counters and rate.

The dock's screening tab is a thin view over a ``ScreeningSession``. The session never touches
Qt: it is given the tiles and a ``write(tile, status)`` callable that persists a decision
(the tab passes one that writes through the index layer's data provider, so every decision
is on disk before the session moves on). If ``write`` raises, nothing changes.
"""

import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ..processing.engine.dataset import (  # noqa: F401 (the statuses and their rule, importable from here)
    STATUS_KEEP,
    STATUS_REJECT,
    STATUS_UNSCREENED,
    normalise_status,
)

FILTER_UNSCREENED = "unscreened"
FILTER_KEPT = "keep"
FILTER_REJECTED = "reject"
FILTER_ALL = "all"
FILTERS = (FILTER_UNSCREENED, FILTER_KEPT, FILTER_REJECTED, FILTER_ALL)

ORDER_ID = "id"  # grid order (tile ids sort in grid order)
ORDER_SCORE = "score"  # highest predicted gully share first; unscored tiles last
ORDERS = (ORDER_ID, ORDER_SCORE)

RATE_WINDOW_S = 300.0  # tiles per minute over the last five minutes of work
BUSY_TIMEOUT_S = 3.0  # how long a decision waits for another writer of the index (then it fails, said once)


def write_with_retry(write_once, timeout=BUSY_TIMEOUT_S, clock=time.monotonic, sleep=time.sleep):
    """Call ``write_once() -> (ok, errors)`` until it succeeds, or fails for a reason other than
    another writer holding the file ("database is locked"/"busy"), or ``timeout`` seconds passed.

    The busy timeout for a second writer (a QGIS edit session, another QGIS, a script): short
    locks are waited out instead of failing at once. Returns (ok, errors of the last try only)."""
    end = clock() + timeout
    delay = 0.05
    while True:
        ok, errors = write_once()
        if ok:
            return True, []
        busy = any("locked" in str(e).lower() or "busy" in str(e).lower() for e in errors)
        if not busy or clock() >= end:
            return False, list(errors)
        sleep(delay)
        delay = min(delay * 2, 0.5)


@dataclass(eq=False)  # identity: two tiles are never "equal" (fast `in`/`index` on the queue)
class Tile:
    fid: int
    tile_id: str
    status: str = STATUS_UNSCREENED
    bounds: tuple = None  # (xmin, ymin, xmax, ymax) in the index CRS
    row: int = None
    col: int = None
    image_tif: str = ""  # relative to the dataset folder
    image_jpg: str = ""
    score: float = None
    extra: dict = field(default_factory=dict)


def matches(status, filter_name):
    return filter_name == FILTER_ALL or status == filter_name


class ScreeningSession:
    """A queue of tiles under a filter and an order, with decisions, undo, counters and a rate.

    tiles: iterable of ``Tile``. write: ``write(tile, status)`` persists a status (may raise).
    clock: seconds (monotonic), injectable for tests.
    """

    def __init__(self, tiles, write, filter_name=FILTER_UNSCREENED, order=ORDER_ID, clock=time.monotonic,
                 journal=None):
        self.tiles = sorted(tiles, key=lambda t: t.tile_id)
        self._by_id = {t.tile_id: t for t in self.tiles}
        self._write = write
        self._clock = clock
        self.undo_stack = []  # (tile, old status, new status)
        self._counts = {STATUS_UNSCREENED: 0, STATUS_KEEP: 0, STATUS_REJECT: 0}
        for tile in self.tiles:
            self._counts[tile.status] = self._counts.get(tile.status, 0) + 1
        self._decisions = deque()  # times of recent decisions (for the rate)
        # every decision and undo of this session, rows in screening.LOG_FIELDS order
        # (UTC time ISO, session id, tile id, old, new, action); ``journal(row)`` also gets each row
        # once its decision is on disk (the dock appends it to the dataset's screening journal)
        self.log = []
        self._journal = journal
        self._wall = lambda: datetime.now(timezone.utc)
        self._started = self._clock()
        self.session_id = self._wall().isoformat(timespec="seconds")
        self.filter = FILTER_UNSCREENED
        self.order = ORDER_ID
        self.queue = []
        self.pos = 0
        self.set_filter(filter_name, order, keep_current=False)

    # --- queue --------------------------------------------------------------------
    def _build_queue(self):
        queue = [t for t in self.tiles if matches(t.status, self.filter)]
        if self.order == ORDER_SCORE:
            # stable: equal scores stay in grid order; tiles without a score come last
            queue.sort(key=lambda t: (t.score is None, -(t.score or 0.0)))
        return queue

    def set_filter(self, filter_name=None, order=None, keep_current=True):
        """Apply a filter and/or order. Stays on the current tile when it is still listed (and the
        order is unchanged), else goes to the first unscreened tile of the new queue (resume)."""
        if filter_name is not None:
            if filter_name not in FILTERS:
                raise ValueError(f"unknown filter {filter_name!r}; one of {FILTERS}")
            self.filter = filter_name
        if order is not None:
            if order not in ORDERS:
                raise ValueError(f"unknown order {order!r}; one of {ORDERS}")
            if order != self.order:
                keep_current = False  # a new order starts at its top (likely gully tiles first)
            self.order = order
        current = self.current if keep_current else None
        self.queue = self._build_queue()
        if current is not None and current in self.queue:
            self.pos = self.queue.index(current)
        else:
            self.pos = self.first_unscreened_position()

    def first_unscreened_position(self):
        for i, tile in enumerate(self.queue):
            if tile.status == STATUS_UNSCREENED:
                return i
        return 0

    def set_scores(self, scores):
        """``scores``: {tile_id: float}. Reorders the queue when ordering by score."""
        for tile_id, score in scores.items():
            tile = self._by_id.get(tile_id)
            if tile is not None:
                tile.score = None if score is None else float(score)
        if self.order == ORDER_SCORE:
            self.set_filter(keep_current=False)

    @property
    def current(self):
        return self.queue[self.pos] if 0 <= self.pos < len(self.queue) else None

    @property
    def done(self):
        """True when the queue has no current tile (everything under the filter is decided)."""
        return self.current is None

    def upcoming(self, count):
        """The next ``count`` tiles after the current one (prefetch)."""
        start = self.pos + 1
        return self.queue[start:start + count]

    def next(self):
        if self.pos < len(self.queue) - 1:
            self.pos += 1
        return self.current

    def previous(self):
        if self.pos > 0 and self.queue:
            self.pos = min(self.pos - 1, len(self.queue) - 1)
        return self.current

    def skip(self):
        """Leave the current tile as it is and go on (it stays in the queue for later)."""
        return self._advance()

    def _advance(self):
        """After a decision or a skip. Unscreened queue: the next tile still unscreened, wrapping
        round to skipped ones; none left means done. Other filters: simply the next tile."""
        n = len(self.queue)
        if self.filter == FILTER_UNSCREENED:
            for i in list(range(self.pos + 1, n)) + list(range(0, min(self.pos + 1, n))):
                if self.queue[i].status == STATUS_UNSCREENED:
                    self.pos = i
                    return self.current
            self.pos = n
            return None
        if self.pos < n - 1:
            self.pos += 1
        return self.current

    # --- decisions ----------------------------------------------------------------
    def decide(self, status):
        """Write ``status`` for the current tile, remember it for undo, move on."""
        tile = self.current
        if tile is None:
            return None
        old = tile.status
        self._write(tile, status)  # raises -> nothing changed
        self._set_status(tile, status)
        self.undo_stack.append((tile, old, status))
        now = self._clock()
        self._record(tile, old, status, "decide")
        self._decisions.append(now)
        self._advance()
        return tile

    def _set_status(self, tile, status):
        self._counts[tile.status] -= 1
        tile.status = status
        self._counts[status] = self._counts.get(status, 0) + 1

    def keep(self):
        return self.decide(STATUS_KEEP)

    def reject(self):
        return self.decide(STATUS_REJECT)

    def undo(self):
        """Restore the status before the last decision (on disk) and go back to that tile."""
        if not self.undo_stack:
            return None
        tile, old, _new = self.undo_stack[-1]
        self._write(tile, old)
        self.undo_stack.pop()
        self._set_status(tile, old)
        self._record(tile, _new, old, "undo")
        if self._decisions:
            self._decisions.pop()
        if tile in self.queue:
            self.pos = self.queue.index(tile)
        else:  # filtered out meanwhile: show it anyway, where we are
            self.pos = min(max(self.pos, 0), len(self.queue))
            self.queue.insert(self.pos, tile)
        return tile

    def _record(self, tile, old, new, action):
        row = (self._wall().isoformat(timespec="seconds"), self.session_id, tile.tile_id, old, new, action)
        self.log.append(row)
        if self._journal is not None:
            self._journal(row)

    # --- jump ---------------------------------------------------------------------
    def find(self, text):
        """A tile by id, or by a unique suffix/substring ('r0007_c0012', '7,12' for row,col)."""
        text = (text or "").strip()
        if not text:
            return None
        if text in self._by_id:
            return self._by_id[text]
        parts = text.replace(";", ",").replace(" ", ",").split(",")
        parts = [p for p in parts if p]
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            row, col = int(parts[0]), int(parts[1])
            hits = [t for t in self.tiles if t.row == row and t.col == col]
            if len(hits) == 1:
                return hits[0]
        lowered = text.lower()
        hits = [t for t in self.tiles if t.tile_id.lower().endswith(lowered)]
        if len(hits) != 1:
            hits = [t for t in self.tiles if lowered in t.tile_id.lower()]
        return hits[0] if len(hits) == 1 else None

    def jump(self, text):
        """Go to a tile (see ``find``). A tile hidden by the filter switches the filter to 'all'."""
        tile = self.find(text)
        if tile is None:
            return None
        if tile not in self.queue:
            self.filter = FILTER_ALL
            self.queue = self._build_queue()
        self.pos = self.queue.index(tile)
        return tile

    # --- numbers ------------------------------------------------------------------
    def counts(self):
        kept = self._counts[STATUS_KEEP]
        rejected = self._counts[STATUS_REJECT]
        total = len(self.tiles)
        return {
            "kept": kept,
            "rejected": rejected,
            "remaining": total - kept - rejected,
            "total": total,
            "rate": self.rate(),
        }

    def rate(self):
        """Decisions per minute over the last ``RATE_WINDOW_S`` seconds (0 before two decisions)."""
        now = self._clock()
        while self._decisions and now - self._decisions[0] > RATE_WINDOW_S:
            self._decisions.popleft()
        if len(self._decisions) < 2:
            return 0.0
        span = max(now, self._decisions[-1]) - self._decisions[0]
        return 60.0 * (len(self._decisions) - 1) / span if span > 0 else 0.0

    def position_text(self):
        if not self.queue:
            return "0 / 0"
        if self.current is None:
            return f"done / {len(self.queue)}"
        return f"{self.pos + 1} / {len(self.queue)}"
