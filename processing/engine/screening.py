"""The screening journal and report: who decided what, when, and how fast.

The tile index holds each tile's current status (keep, reject, unscreened); it has no history. The
dock's screening tab also appends every decision and undo to the dataset folder's journal,
``screening_log.csv`` (``dataset.SCREENING_LOG``), one line per action, flushed at once, so the
time stamps survive QGIS closing. ``screening_report`` (gullyseg:screeningreport and the dock's
Report… button) reads both and writes the report: a CSV of the decisions with their time stamps
and a JSON summary (counts, rate).

Rate: decisions per minute of active screening. Pauses longer than ``gap_minutes`` (default 5)
between two actions are not counted as screening time, so a lunch break does not lower the rate.
Tiles whose status was set before the journal existed (or by another tool) are counted as
``decided_without_time``.
"""

import csv
import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Optional

from . import dataset, gdalio
from .errors import GullySegError

LOG_FIELDS = ("time_utc", "session", "tile_id", "old_status", "new_status", "action")
ACTIONS = ("decide", "undo")
DEFAULT_GAP_MINUTES = 5.0


def log_path(root) -> str:
    return os.path.join(str(root), dataset.SCREENING_LOG)


def append_log(root, rows) -> None:
    """Append journal rows (tuples in LOG_FIELDS order) to the dataset's journal, header first when new.
    Appending one line and flushing is what a crash can interrupt at worst: the reader skips a torn
    last line."""
    path = log_path(root)
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    try:
        with open(path, "a", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(LOG_FIELDS)
            writer.writerows(rows)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise GullySegError(f"Cannot append to the screening journal '{path}': {exc.strerror or exc}") from None


def _parse_time(text):
    try:
        value = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def read_log(root) -> tuple:
    """(rows as dicts sorted by time, number of unreadable lines) of the dataset's journal; ([], 0) without one."""
    path = log_path(root)
    if not os.path.exists(path):
        return [], 0
    rows, bad = [], 0
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                return [], 0
            if tuple(header) != LOG_FIELDS:
                raise GullySegError(f"'{path}' is not a GullySeg screening journal: its header is {header}, "
                                    f"expected {list(LOG_FIELDS)}.")
            for line in reader:
                row = dict(zip(LOG_FIELDS, line)) if len(line) == len(LOG_FIELDS) else None
                when = _parse_time(row["time_utc"]) if row else None
                if row is None or when is None or row["action"] not in ACTIONS:
                    bad += 1
                    continue
                row["_when"] = when
                rows.append(row)
    except (OSError, UnicodeDecodeError) as exc:
        raise GullySegError(f"Cannot read the screening journal '{path}': {exc}") from None
    rows.sort(key=lambda r: r["_when"])
    return rows, bad


@dataclass
class ScreeningReport:
    index: str
    total: int
    kept: int
    rejected: int
    remaining: int
    decisions: int  # decide actions in the journal, minus undos
    undos: int
    decided_without_time: int  # tiles with a status the journal does not explain
    active_minutes: float
    rate_per_minute: float
    first_utc: Optional[str]
    last_utc: Optional[str]
    sessions: int
    unreadable_journal_lines: int
    gap_minutes: float
    csv: str
    json: str


def _active_minutes(times, gap_minutes):
    span = 0.0
    for a, b in zip(times, times[1:]):
        step = (b - a).total_seconds() / 60.0
        if step <= gap_minutes:
            span += step
    return span


def screening_report(index_path, output_csv, output_json=None, gap_minutes=DEFAULT_GAP_MINUTES,
                     overwrite=True) -> ScreeningReport:
    """Write the decisions CSV (journal rows with time stamps, plus each tile's current status) and the
    JSON summary (``output_json`` or the CSV's name with .json); returns the summary."""
    if not index_path or not os.path.isfile(str(index_path)):
        raise GullySegError(f"INPUT: '{index_path}' is not a file; give a dataset's {dataset.INDEX_NAME}.")
    if gap_minutes <= 0:
        raise GullySegError(f"GAP_MINUTES: {gap_minutes} must be more than 0.")
    records, _ = dataset.read_index(index_path)
    status = {r["tile_id"]: dataset.normalise_status(r.get("status")) for r in records}
    root = os.path.dirname(os.path.abspath(str(index_path)))
    rows, bad = read_log(root)
    decides = [r for r in rows if r["action"] == "decide"]
    undos = [r for r in rows if r["action"] == "undo"]
    logged = {r["tile_id"] for r in rows}
    kept = sum(1 for s in status.values() if s == dataset.STATUS_KEEP)
    rejected = sum(1 for s in status.values() if s == dataset.STATUS_REJECT)
    decisions = len(decides) - len(undos)
    active = _active_minutes([r["_when"] for r in rows], float(gap_minutes))
    output_json = output_json or os.path.splitext(str(output_csv))[0] + ".json"
    summary = ScreeningReport(
        index=os.path.abspath(str(index_path)), total=len(status), kept=kept, rejected=rejected,
        remaining=len(status) - kept - rejected, decisions=decisions, undos=len(undos),
        decided_without_time=sum(1 for t, s in status.items() if s != dataset.STATUS_UNSCREENED and t not in logged),
        active_minutes=round(active, 3),
        rate_per_minute=round(decisions / active, 2) if active > 0 and decisions > 0 else 0.0,
        first_utc=rows[0]["time_utc"] if rows else None, last_utc=rows[-1]["time_utc"] if rows else None,
        sessions=len({r["session"] for r in rows}), unreadable_journal_lines=bad, gap_minutes=float(gap_minutes),
        csv=os.path.abspath(str(output_csv)), json=os.path.abspath(str(output_json)))
    for target in (output_csv, output_json):
        folder = os.path.dirname(os.path.abspath(str(target)))
        os.makedirs(folder, exist_ok=True)
    with gdalio.atomic_output(str(output_csv), overwrite=overwrite, what="OUTPUT_CSV") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(LOG_FIELDS + ("current_status",))
            for r in rows:
                writer.writerow([r[f] for f in LOG_FIELDS] + [status.get(r["tile_id"], "not in index")])
    with gdalio.atomic_output(str(output_json), overwrite=overwrite, what="OUTPUT_REPORT") as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(asdict(summary), handle, indent=2)
            handle.write("\n")
    return summary
