"""gullyseg:segmentmany / engine.distributed: many scenes on Dask give the pixels of plain segment runs.

References are independent plain ``inference.segment_raster`` runs of each scene (one process, no
Dask); outputs are compared pixel for pixel, polygons by count and area, summary areas by value.
Clusters are small (2 worker processes, 1 thread each) and only on 127.0.0.1.
"""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import onnx_models
import pytest
from osgeo import gdal, ogr

from gullyseg.processing.engine import distributed, inference
from gullyseg.processing.engine.errors import Cancelled, GullySegError
from gullyseg.processing.engine.feedback import RecordingFeedback

# dask[distributed] is pinned in requirements-dev.txt: without it these tests fail (segment_many says what to
# install) rather than skip, so that a missing install is seen

THRESHOLD = 0.2  # the tiny FCN's probabilities: ~15-25 % gully pixels, many polygons
BLOCK = 256


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return onnx_models.make_fcn_model(tmp_path_factory.mktemp("many_model") / "fcn.onnx", in_channels=3)


@pytest.fixture(scope="module")
def scenes(scene_factory):
    """Three scenes of different sizes and CRSs; 'wide' is larger than BLOCK (run in blocks)."""
    return [
        scene_factory("wide", width=700, height=520, seed=11, epsg=32650, origin=(500000.0, 4000000.0)),
        scene_factory("small", width=256, height=250, seed=12, nodata_edge=True),
        scene_factory("tiny", width=200, height=180, seed=13),
    ]


@pytest.fixture(scope="module")
def references(scenes, model, tmp_path_factory):
    """Plain segment runs: {scene stem: (prob array, mask array, geotransform, crs, result)}."""
    base = tmp_path_factory.mktemp("many_ref")
    out = {}
    for scene in scenes:
        stem = scene.stem
        r = inference.segment_raster(str(scene), model, output_probability=str(base / f"{stem}_p.tif"),
                                     output_mask=str(base / f"{stem}_m.tif"),
                                     output_polygons=str(base / f"{stem}.gpkg"), threshold=THRESHOLD)
        p, m = gdal.Open(r["outputs"]["probability"]), gdal.Open(r["outputs"]["mask"])
        out[stem] = (p.ReadAsArray(), m.ReadAsArray(), p.GetGeoTransform(), p.GetProjection(), r)
    return out


def run(scenes, model, out_dir, **kwargs):
    kwargs.setdefault("workers", 2)
    kwargs.setdefault("block_size", BLOCK)
    kwargs.setdefault("threshold", THRESHOLD)
    fb = kwargs.pop("feedback", None) or RecordingFeedback()
    summary = distributed.segment_many([str(s) for s in scenes], model, str(out_dir), feedback=fb, **kwargs)
    return summary, fb


def rows(summary):
    return {r["scene"]: r for r in summary["scenes"]}


def assert_identical(out_dir, references, stems):
    for stem in stems:
        ref_p, ref_m, gt, crs, _ = references[stem]
        p = gdal.Open(str(out_dir / stem / "probability.tif"))
        m = gdal.Open(str(out_dir / stem / "mask.tif"))
        assert p.GetGeoTransform() == gt and m.GetGeoTransform() == gt, stem
        assert p.GetProjection() == crs, stem
        assert np.array_equal(p.ReadAsArray(), ref_p), f"{stem}: probability differs from a plain segment run"
        assert np.array_equal(m.ReadAsArray(), ref_m), f"{stem}: mask differs from a plain segment run"
        assert p.GetRasterBand(1).GetNoDataValue() == 255


def no_partials(out_dir):
    left = [os.path.join(d, f) for d, _, files in os.walk(out_dir) for f in files
            if ".partial-" in f or f.startswith(".gullyseg-")]
    assert not left, left


@pytest.fixture(scope="module")
def first_run(scenes, model, tmp_path_factory):
    out = tmp_path_factory.mktemp("many_out") / "job"
    summary, fb = run(scenes, model, out, polygons=True)
    return out, summary, fb


def test_local_cluster_matches_plain_segment_runs(first_run, references):
    out, summary, fb = first_run
    r = rows(summary)
    assert [s for s in r] == ["wide", "small", "tiny"]
    assert all(row["status"] == "done" for row in r.values()), summary["scenes"]
    assert r["wide"]["blocks"] == 9  # 700 x 520 in 256 px blocks: 3 x 3
    assert r["small"]["blocks"] == 0 and r["tiny"]["blocks"] == 0
    assert_identical(out, references, ["wide", "small", "tiny"])
    no_partials(out)
    assert not (out / "wide" / ".blocks").exists()
    for stem, row in r.items():
        ref = references[stem][4]
        assert row["pixels_processed"] == ref["pixels_processed"]
        assert row["gully_area_m2"] == pytest.approx(ref["gully_area_m2"])
        assert row["provider"] == ref["provider"]
        assert row["worker"].startswith("tcp://127.0.0.1:")
    assert len(summary["workers"]) == 2, "both worker processes took work"
    # progress and the per-worker share were reported
    assert any("Mpx/s" in line and "per worker" in line for line in fb.infos)
    assert fb.percents and fb.percents[-1] == 100


def test_summary_files_mosaics_and_polygons(first_run, references):
    out, summary, _ = first_run
    with open(out / "summary.csv", newline="") as f:
        table = {row["scene"]: row for row in csv.DictReader(f)}
    assert list(table) == ["wide", "small", "tiny"]
    with open(out / "summary.json") as f:
        js = json.load(f)
    assert [row["scene"] for row in js["scenes"]] == ["wide", "small", "tiny"]
    for stem, row in table.items():
        assert float(row["gully_area_m2"]) == pytest.approx(references[stem][4]["gully_area_m2"], abs=1e-3)
        assert float(row["seconds"]) > 0 and row["status"] == "done" and row["worker"]
    # two CRSs: one mosaic per CRS, each over that CRS's masks, pixel for pixel
    mosaics = sorted(p.name for p in out.glob("mosaic*.vrt"))
    assert mosaics == ["mosaic_EPSG_32606.vrt", "mosaic_EPSG_32650.vrt"]
    v = gdal.Open(str(out / "mosaic_EPSG_32650.vrt"))
    assert np.array_equal(v.ReadAsArray(), references["wide"][1])
    v = gdal.Open(str(out / "mosaic_EPSG_32606.vrt"))
    assert sorted(os.path.basename(f) for f in v.GetFileList()[1:]) == ["mask.tif", "mask.tif"]
    # merged polygons: per scene, the count and the areas of a plain segment run's polygons
    merged = ogr.Open(str(out / "polygons.gpkg"))
    layers = {merged.GetLayer(i).GetName(): merged.GetLayer(i) for i in range(merged.GetLayerCount())}
    assert set(layers) == {"gullies_EPSG_32606", "gullies_EPSG_32650"}
    for stem in ("wide", "small", "tiny"):
        ref_ds = ogr.Open(references[stem][4]["outputs"]["polygons"])
        ref_areas = sorted(round(f.GetField("area_m2"), 6) for f in ref_ds.GetLayer(0))
        layer = layers["gullies_EPSG_32650" if stem == "wide" else "gullies_EPSG_32606"]
        layer.SetAttributeFilter(f"scene = '{stem}'")
        areas = sorted(round(f.GetField("area_m2"), 6) for f in layer)
        assert len(areas) == len(ref_areas) == rows(summary)[stem]["polygons"] > 0, stem
        assert areas == ref_areas, stem
        # the summary's gully area is the reference mask's gully pixels; the polygons (specks under MIN_AREA's
        # default of 4 pixels dropped) cover at most that
        gt = references[stem][2]
        mask_area = int((references[stem][1] == 1).sum()) * abs(gt[1] * gt[5])
        assert rows(summary)[stem]["gully_area_m2"] == pytest.approx(mask_area)
        assert 0.9 * mask_area < sum(areas) <= mask_area + 1e-6


def test_second_run_does_no_work_and_a_deleted_mask_redoes_only_that_scene(first_run, scenes, model, references,
                                                                         tmp_path):
    out, _, _ = first_run
    job = tmp_path / "job"
    shutil.copytree(out, job)
    before = {p: os.stat(p).st_mtime_ns for p in job.rglob("*.tif")}
    summary, fb = run(scenes, model, job, polygons=True)
    assert [r["status"] for r in summary["scenes"]] == ["skipped"] * 3
    assert not any("Dask scheduler" in line for line in fb.infos), "no cluster is started when nothing is to do"
    assert {p: os.stat(p).st_mtime_ns for p in job.rglob("*.tif")} == before
    # values of the skipped scenes come from their records
    assert rows(summary)["wide"]["gully_area_m2"] == pytest.approx(references["wide"][4]["gully_area_m2"])

    os.remove(job / "small" / "mask.tif")
    summary, fb = run(scenes, model, job, polygons=True)
    assert [r["status"] for r in summary["scenes"]] == ["skipped", "done", "skipped"]
    assert os.stat(job / "wide" / "probability.tif").st_mtime_ns == before[job / "wide" / "probability.tif"]
    assert_identical(job, references, ["wide", "small", "tiny"])

    # a changed file under a final name is noticed too (checksum), and so is a changed parameter
    with open(job / "tiny" / "probability.tif", "r+b") as f:
        f.seek(-10, os.SEEK_END)
        f.write(b"\0" * 10)
    summary, _ = run(scenes, model, job, polygons=True)
    assert [r["status"] for r in summary["scenes"]] == ["skipped", "skipped", "done"]
    assert_identical(job, references, ["tiny"])


def test_a_corrupt_scene_is_reported_and_the_others_finish(scenes, model, references, tmp_path, scene_factory):
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    truncated = bad_dir / "truncated.tif"
    data = open(scenes[1], "rb").read()
    truncated.write_bytes(data[: len(data) // 3])
    one_band = bad_dir / "oneband.tif"
    gdal.Translate(str(one_band), str(scenes[2]), bandList=[1])
    inputs = [scenes[2], truncated, one_band]
    summary, fb = run(inputs, model, tmp_path / "job", retries=0)
    r = rows(summary)
    assert r["tiny"]["status"] == "done"
    assert_identical(tmp_path / "job", references, ["tiny"])
    for name in ("truncated", "oneband"):
        assert r[name]["status"] == "failed" and r[name]["error"], r[name]
    assert "truncated.tif" in r["truncated"]["error"]
    assert "band" in r["oneband"]["error"].lower()
    with open(tmp_path / "job" / "summary.csv", newline="") as f:
        table = {row["scene"]: row for row in csv.DictReader(f)}
    assert table["oneband"]["status"] == "failed" and "band" in table["oneband"]["error"].lower()
    assert not (tmp_path / "job" / "truncated" / "mask.tif").exists()
    no_partials(tmp_path / "job")


def _worker_processes():
    """Child processes of this test process that are Dask worker processes (multiprocessing spawn)."""
    import psutil

    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            pass
    return found


class _KillOneWorker(RecordingFeedback):
    """Kills one worker process (SIGKILL) when the first task has finished."""

    def __init__(self):
        super().__init__()
        self.killed = None

    def info(self, message):
        super().info(message)
        if self.killed is None and ": done;" in message:
            workers = _worker_processes()
            if workers:
                self.killed = workers[-1].pid
                os.kill(self.killed, signal.SIGKILL)


def test_killing_a_worker_mid_job_still_gives_identical_outputs(scenes, model, references, tmp_path):
    fb = _KillOneWorker()
    summary, _ = run(scenes, model, tmp_path / "job", feedback=fb)
    assert fb.killed is not None, "no worker process was found to kill"
    assert [r["status"] for r in summary["scenes"]] == ["done"] * 3, summary["scenes"]
    assert_identical(tmp_path / "job", references, ["wide", "small", "tiny"])
    no_partials(tmp_path / "job")


class _CancelAfterFirst(RecordingFeedback):
    def info(self, message):
        super().info(message)
        if ": done;" in message:
            self.cancel_after = 0


def test_cancel_stops_and_removes_partial_outputs(scenes, model, tmp_path):
    with pytest.raises(Cancelled):
        run([scenes[0]], model, tmp_path / "job", feedback=_CancelAfterFirst())
    job = tmp_path / "job"
    assert not (job / "wide" / "mask.tif").exists() and not (job / "wide" / ".blocks").exists()
    assert not (job / "summary.csv").exists()
    no_partials(job)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _CancelAfter(RecordingFeedback):
    """Cancelled ``seconds`` after the job's tasks were submitted (the cluster's line is logged)."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds
        self.start = None

    def info(self, message):
        super().info(message)
        if message.startswith("Dask scheduler"):
            self.start = time.monotonic()

    def is_cancelled(self):
        return self.start is not None and time.monotonic() - self.start > self.seconds


def test_external_scheduler(scenes, model, references, tmp_path):
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1; SCHEDULER=tcp://127.0.0.1:PORT."""
    from distributed import Client

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH="")  # the workers get GullySeg from the task, not from the path
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", str(port), "--no-dashboard"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for i in range(2):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--host",
                 "127.0.0.1", "--no-dashboard", "--name", f"ext{i}"], env=env, cwd=tmp_path,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 120
        while True:
            try:
                with Client(address, timeout="5s") as c:
                    c.wait_for_workers(2, timeout=max(1, deadline - time.monotonic()))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        summary, fb = run(scenes, model, tmp_path / "job", scheduler=address)
        assert [r["status"] for r in summary["scenes"]] == ["done"] * 3, summary["scenes"]
        assert_identical(tmp_path / "job", references, ["wide", "small", "tiny"])
        assert any(f"Dask scheduler {address}" in line for line in fb.infos)
        assert summary["workers"] and all(w.startswith("tcp://127.0.0.1:") for w in summary["workers"])

        # cancel: the remote task sees the job's Dask Event and stops (a run of ~10 x 8 TTA passes of a slow
        # model: more than a minute if it were not stopped); nothing is written afterwards
        slow = onnx_models.make_slow_model(tmp_path / "slow.onnx")
        with pytest.raises(Cancelled):
            run([scenes[0]], slow, tmp_path / "cancelled", scheduler=address, block_size=1024, tta=2,
                feedback=_CancelAfter(2.0))
        deadline = time.monotonic() + 30
        with Client(address, timeout="10s") as c:
            while sum(c.run(lambda dask_worker: len(dask_worker.active_threads)).values()):
                assert time.monotonic() < deadline, "the cancelled task is still running on its worker"
                time.sleep(0.5)
        assert not (tmp_path / "cancelled" / "wide" / "mask.tif").exists()
        assert not (tmp_path / "cancelled" / "wide" / "probability.tif").exists()
        no_partials(tmp_path / "cancelled")
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


def test_unreachable_scheduler_is_a_clear_error(scenes, model, tmp_path):
    with pytest.raises(GullySegError, match="SCHEDULER"):
        run([scenes[2]], model, tmp_path / "job", scheduler=f"tcp://127.0.0.1:{_free_port()}")


def test_bad_parameters_are_refused_before_writing(scenes, model, tmp_path):
    with pytest.raises(GullySegError, match="BLOCK_SIZE"):
        run([scenes[2]], model, tmp_path / "a", block_size=1000)
    with pytest.raises(GullySegError, match="MODEL"):
        run([scenes[2]], str(tmp_path / "none.onnx"), tmp_path / "b")
    with pytest.raises(GullySegError, match="INPUT_FOLDER"):
        distributed.find_inputs([], tmp_path / "missing")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_without_dask_the_provider_loads_and_segmentmany_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(GullySegError, match=r"dask\[distributed\]"):
        distributed.require_dask()
    from gullyseg.processing.provider import algorithm_classes

    assert "segmentmany" in {cls.ALG_ID for cls in algorithm_classes()}


def test_algorithm_with_a_folder_pattern_and_a_mask_layer(scenes, model, tmp_path, run_alg):
    """INPUT_FOLDER + PATTERN, MASK_LAYER in another CRS: each scene equals segment with that mask."""
    folder = tmp_path / "in"
    folder.mkdir()
    for s in scenes[1:]:
        shutil.copy(s, folder / s.name)
    (folder / "notes.txt").write_text("not a raster")
    ds = gdal.Open(str(scenes[1]))
    gt = ds.GetGeoTransform()
    x0, y0 = gt[0] + 40 * gt[1], gt[3] + 30 * gt[5]
    x1, y1 = gt[0] + 160 * gt[1], gt[3] + 150 * gt[5]
    wkt_utm = f"POLYGON(({x0} {y0},{x1} {y0},{x1} {y1},{x0} {y1},{x0} {y0}))"
    geom = ogr.CreateGeometryFromWkt(wkt_utm)
    from osgeo import osr

    src = osr.SpatialReference()
    src.ImportFromWkt(ds.GetProjection())
    dst = osr.SpatialReference()
    dst.ImportFromEPSG(3857)
    for s in (src, dst):
        s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    geom.Transform(osr.CoordinateTransformation(src, dst))
    mask_path = tmp_path / "area.gpkg"
    vds = ogr.GetDriverByName("GPKG").CreateDataSource(str(mask_path))
    layer = vds.CreateLayer("area", srs=dst, geom_type=ogr.wkbPolygon)
    feat = ogr.Feature(layer.GetLayerDefn())
    feat.SetGeometry(geom)
    layer.CreateFeature(feat)
    vds = layer = None
    res = run_alg("segmentmany", {"INPUT_FOLDER": str(folder), "PATTERN": "*.tif", "MODEL": model,
                                  "MASK_LAYER": str(mask_path), "THRESHOLD": THRESHOLD, "WORKERS": 2,
                                  "OUTPUT_DIR": str(tmp_path / "job")})
    assert res["SCENES_DONE"] == 2 and res["SCENES_FAILED"] == 0
    back = ogr.CreateGeometryFromWkt(geom.ExportToWkt())
    back.Transform(osr.CoordinateTransformation(dst, src))
    for s in scenes[1:]:
        ref = inference.segment_raster(str(s), model, output_mask=str(tmp_path / f"{s.stem}_ref.tif"),
                                       mask_wkts=[back.ExportToWkt()], threshold=THRESHOLD)
        a = gdal.Open(ref["outputs"]["mask"])
        b = gdal.Open(str(tmp_path / "job" / s.stem / "mask.tif"))
        assert a.GetGeoTransform() == b.GetGeoTransform()
        assert np.array_equal(a.ReadAsArray(), b.ReadAsArray()), s.stem
    with open(res["SUMMARY"], newline="") as f:
        assert [r["scene"] for r in csv.DictReader(f)] == ["small", "tiny"]


def test_command_line_tool(scenes, model, references, tmp_path):
    tool = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "segmentmany.py")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff")
    cmd = [sys.executable, tool, "--model", model, "--output-dir", str(tmp_path / "job"), "--workers", "1",
           "--threshold", str(THRESHOLD), "--block-size", str(BLOCK), str(scenes[2]), str(bad)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr  # one scene failed
    assert proc.stdout.strip() == str(tmp_path / "job" / "summary.csv")
    assert_identical(tmp_path / "job", references, ["tiny"])
    proc = subprocess.run(cmd[:-1], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "1 skipped (complete)" in proc.stderr, proc.stderr


def test_qgis_process(scenes, model, references, tmp_path, qgis_process):
    """The batch runner spawns the local cluster's workers with a Python interpreter, not itself."""
    res = qgis_process("gullyseg:segmentmany", {"INPUTS": str(scenes[2]), "MODEL": model, "WORKERS": 1,
                                                "THRESHOLD": THRESHOLD, "OUTPUT_DIR": str(tmp_path / "job")})
    assert res["results"]["SCENES_DONE"] == 1, res
    assert_identical(tmp_path / "job", references, ["tiny"])


def test_a_scene_the_model_resamples_runs_whole(scenes, tmp_path):
    """A model at 1.5 m on 0.75 m scenes: no blocks (the warp needs the whole scene), pixels as segment's."""
    coarse = onnx_models.make_fcn_model(tmp_path / "coarse.onnx", in_channels=3, metadata={"resolution": 150})
    ref = inference.segment_raster(str(scenes[0]), coarse, output_mask=str(tmp_path / "ref_m.tif"),
                                   output_probability=str(tmp_path / "ref_p.tif"), threshold=THRESHOLD)
    assert ref["resampled"]
    summary, _ = run([scenes[0]], coarse, tmp_path / "job", workers=1)
    row = rows(summary)["wide"]
    assert row["status"] == "done" and row["blocks"] == 0
    for name, ref_path in (("mask.tif", ref["outputs"]["mask"]), ("probability.tif", ref["outputs"]["probability"])):
        a, b = gdal.Open(ref_path), gdal.Open(str(tmp_path / "job" / "wide" / name))
        assert a.GetGeoTransform() == b.GetGeoTransform()
        assert np.array_equal(a.ReadAsArray(), b.ReadAsArray()), name
