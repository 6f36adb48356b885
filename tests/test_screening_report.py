"""The screening journal and report (gullyseg:screeningreport): counts checked against GDAL's own SQL
over the index, time stamps and rate against hand-made journals, bad journals as clear errors."""

import csv
import json

import pytest
from osgeo import ogr

from gullyseg.processing.engine import dataset, screening, tiling
from gullyseg.processing.engine.errors import GullySegError


@pytest.fixture
def index(tmp_path, scene_factory):
    scene = scene_factory("journal", width=256, height=256, seed=8)
    root = tmp_path / "dataset"
    tiling.grid_tiles(str(scene), str(root), tile_size=64)
    return root / dataset.INDEX_NAME


def _ids(index):
    return sorted(r["tile_id"] for r in dataset.read_index(str(index))[0])


def _sql_counts(index):
    """{status: count} by OGR SQL on the GeoPackage (independent of the engine's reader)."""
    ds = ogr.Open(str(index))
    layer = ds.ExecuteSQL("SELECT status, COUNT(*) AS n FROM tiles GROUP BY status")
    out = {f.GetField("status"): f.GetField("n") for f in layer}
    ds.ReleaseResultSet(layer)
    return out


def _row(t, tile, old, new, action="decide", session="s1"):
    return (f"2026-11-27T{t}+00:00", session, tile, old, new, action)


def test_counts_time_stamps_and_rate(index, tmp_path):
    ids = _ids(index)
    dataset.update_index(str(index), {ids[0]: {"status": "keep"}, ids[1]: {"status": "reject"},
                                      ids[2]: {"status": "keep"}, ids[5]: {"status": "reject"}})
    root = index.parent
    screening.append_log(root, [_row("10:00:00", ids[0], "unscreened", "keep"),
                                _row("10:00:06", ids[1], "unscreened", "reject"),
                                _row("10:00:12", ids[3], "unscreened", "keep")])
    # a second session after a 30-minute pause: an undo and another decision
    screening.append_log(root, [_row("10:30:12", ids[3], "keep", "unscreened", "undo", "s2"),
                                _row("10:30:18", ids[2], "unscreened", "keep", session="s2")])
    rep = screening.screening_report(str(index), str(tmp_path / "out" / "report.csv"))
    sql = _sql_counts(index)
    assert (rep.kept, rep.rejected) == (sql["keep"], sql["reject"]) == (2, 2)
    assert rep.total == sum(sql.values()) == len(ids) and rep.remaining == sql["unscreened"]
    assert (rep.decisions, rep.undos, rep.sessions) == (3, 1, 2)
    assert rep.decided_without_time == 1  # ids[5]: a status the journal does not explain
    assert rep.active_minutes == pytest.approx(0.3)  # 6 s + 6 s + (the 30 min pause left out) + 6 s
    assert rep.rate_per_minute == pytest.approx(10.0)  # 3 decisions (4 minus an undo) in 18 s
    assert (rep.first_utc, rep.last_utc) == ("2026-11-27T10:00:00+00:00", "2026-11-27T10:30:18+00:00")
    rows = list(csv.DictReader(open(tmp_path / "out" / "report.csv", encoding="utf-8")))
    assert [(r["tile_id"], r["action"], r["current_status"]) for r in rows] == [
        (ids[0], "decide", "keep"), (ids[1], "decide", "reject"), (ids[3], "decide", "unscreened"),
        (ids[3], "undo", "unscreened"), (ids[2], "decide", "keep")]
    summary = json.loads((tmp_path / "out" / "report.json").read_text())
    assert summary["rate_per_minute"] == rep.rate_per_minute and summary["kept"] == 2
    # a longer allowed pause counts the break as screening time
    rep2 = screening.screening_report(str(index), str(tmp_path / "r2.csv"), gap_minutes=60)
    assert rep2.active_minutes == pytest.approx(30.3)


def test_journal_header_once_and_a_torn_last_line_is_skipped(index, tmp_path):
    ids = _ids(index)
    root = index.parent
    screening.append_log(root, [_row("09:00:00", ids[0], "unscreened", "keep")])
    screening.append_log(root, [_row("09:00:05", ids[1], "unscreened", "keep")])
    text = (root / dataset.SCREENING_LOG).read_text()
    assert text.count("time_utc") == 1 and text.count("\n") == 3
    with open(root / dataset.SCREENING_LOG, "a", encoding="utf-8") as handle:
        handle.write("2026-11-27T09:00:0")  # QGIS killed in the middle of a line
    rows, bad = screening.read_log(root)
    assert [r["tile_id"] for r in rows] == ids[:2] and bad == 1
    rep = screening.screening_report(str(index), str(tmp_path / "r.csv"))
    assert rep.unreadable_journal_lines == 1 and rep.decisions == 2


def test_no_journal_gives_counts_without_time(index, tmp_path):
    ids = _ids(index)
    dataset.update_index(str(index), {ids[0]: {"status": "keep"}})
    rep = screening.screening_report(str(index), str(tmp_path / "r.csv"))
    assert (rep.kept, rep.decisions, rep.decided_without_time, rep.rate_per_minute) == (1, 0, 1, 0.0)
    assert rep.first_utc is None


def test_bad_inputs_are_errors_and_write_nothing(index, tmp_path):
    (index.parent / dataset.SCREENING_LOG).write_text("when,who\n1,2\n")
    with pytest.raises(GullySegError, match="screening_log.csv' is not a GullySeg screening journal"):
        screening.screening_report(str(index), str(tmp_path / "r.csv"))
    with pytest.raises(GullySegError, match="INPUT: .*not a file"):
        screening.screening_report(str(tmp_path / "nothing.gpkg"), str(tmp_path / "r.csv"))
    (index.parent / dataset.SCREENING_LOG).unlink()
    with pytest.raises(GullySegError, match="GAP_MINUTES"):
        screening.screening_report(str(index), str(tmp_path / "r.csv"), gap_minutes=0)
    assert list(tmp_path.glob("r.*")) == []


def test_algorithm_outputs_equal_the_engine(index, tmp_path, run_alg):
    ids = _ids(index)
    dataset.update_index(str(index), {ids[0]: {"status": "reject"}})
    screening.append_log(index.parent, [_row("11:00:00", ids[0], "unscreened", "reject")])
    res = run_alg("screeningreport", {"TILES": str(index), "OUTPUT_CSV": str(tmp_path / "a.csv"),
                                      "OUTPUT_REPORT": str(tmp_path / "a.json")})
    rep = screening.screening_report(str(index), str(tmp_path / "b.csv"))
    assert (res["TOTAL"], res["KEPT"], res["REJECTED"], res["REMAINING"], res["DECISIONS"],
            res["DECIDED_WITHOUT_TIME"]) == (rep.total, rep.kept, rep.rejected, rep.remaining, rep.decisions,
                                             rep.decided_without_time) == (len(ids), 0, 1, len(ids) - 1, 1, 0)
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
