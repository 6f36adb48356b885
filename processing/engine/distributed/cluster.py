"""The client side of segment_many: the Dask client or local cluster, submission, progress, cancel."""

import contextlib
import glob
import logging
import os
import shutil
import sys
import time
import uuid

from ..errors import Cancelled, GullySegError
from .plan import BLOCK_DIR, MASK, POLYGONS, PROBABILITY, SIDECAR, require_dask
from .records import read_complete
from .tasks import _PACKAGE, _ROOT, _block_stem, _bootstrap, _remove_outputs


def _python_executable():
    """A Python interpreter for spawned worker processes (QGIS's sys.executable may be QGIS itself)."""
    exe = sys.executable or ""
    if os.path.basename(exe).lower().startswith("python"):
        return None
    for cand in (os.path.join(sys.prefix, "bin", "python3"), os.path.join(sys.exec_prefix, "python.exe"),
                 shutil.which("python3")):
        if cand and os.path.isfile(cand):
            return cand
    return None


@contextlib.contextmanager
def _client(scheduler, workers, threads_per_worker, feedback):
    """A dask.distributed Client: on ``scheduler`` (tcp://...) or on a new LocalCluster."""
    require_dask()
    import multiprocessing.spawn as mp_spawn

    from distributed import Client, LocalCluster

    cluster = None
    old_exe = None
    try:
        if scheduler:
            if "://" not in scheduler:
                scheduler = "tcp://" + scheduler
            try:
                client = Client(scheduler, timeout="20s")
            except (OSError, TimeoutError) as exc:
                raise GullySegError(f"SCHEDULER: cannot reach the Dask scheduler at '{scheduler}': {exc}") from None
        else:
            exe = _python_executable()
            if exe:
                old_exe = mp_spawn.get_executable()
                mp_spawn.set_executable(exe)
            cluster = LocalCluster(n_workers=int(workers), threads_per_worker=int(threads_per_worker),
                                   processes=True, dashboard_address=":0", silence_logs=logging.ERROR,
                                   host="127.0.0.1")
            client = Client(cluster)
        info = client.scheduler_info()
        link = None
        if "dashboard" in (info.get("services") or {}):
            try:  # the dashboard's pages need bokeh (on the scheduler's machine)
                import bokeh  # noqa: F401

                link = client.dashboard_link
            except ImportError:
                pass
        nw = len(info.get("workers", {}))
        feedback.info(f"Dask scheduler {client.scheduler.address}: {nw} worker(s), "
                      f"{sum(w.get('nthreads', 0) for w in info.get('workers', {}).values())} thread(s)"
                      + (f"; dashboard {link}" if link else "; no dashboard (install bokeh for one)"))
        try:
            yield client, cluster
        finally:
            with contextlib.suppress(Exception):
                client.close(timeout=10)
    finally:
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close(timeout=20)
        if old_exe is not None:
            mp_spawn.set_executable(old_exe)


def _run_jobs(todo, params, scheduler, workers, threads_per_worker, retries, model_threads, feedback, stats,
              total_px, n_blocks, t_start):
    from distributed import Event, wait

    with _client(scheduler, workers, threads_per_worker, feedback) as (client, cluster):
        info = client.scheduler_info().get("workers", {})
        host_workers = {}
        for addr in info:
            host = addr.split("://")[-1].rsplit(":", 1)[0]
            host_workers[host] = host_workers.get(host, 0) + 1
        event_name = f"gullyseg-cancel-{uuid.uuid4().hex}"
        event = Event(event_name, client=client)
        event.clear()
        pending = {}  # future -> (row, kind)
        for row, spec, blocks in todo:
            spec.update(event=event_name, threads=int(model_threads or 0), host_workers=host_workers)
            if not blocks:
                f = client.submit(_bootstrap, _PACKAGE, _ROOT, dict(spec, kind="scene"), retries=retries,
                                  key=f"scene-{spec['scene']}-{uuid.uuid4().hex[:6]}", pure=False)
                pending[f] = (row, "scene", spec["width"] * spec["height"])
                continue
            row["blocks"] = len(blocks)
            block_items = []
            for block in blocks:
                bspec = dict(spec, kind="block", block=list(block))
                stem = _block_stem(block)
                done = read_complete(os.path.join(spec["folder"], BLOCK_DIR, stem + ".json"), spec["signature"],
                                     block[2:])
                if done is not None:
                    block_items.append(dict(done["result"], status="skipped", block=list(block)))
                    stats["blocks_done"] += 1
                    continue
                f = client.submit(_bootstrap, _PACKAGE, _ROOT, bspec, retries=retries,
                                  key=f"block-{spec['scene']}-{stem}-{uuid.uuid4().hex[:6]}", pure=False)
                pending[f] = (row, "block", block[2] * block[3])
                block_items.append(f)
            aspec = dict(spec, kind="assemble", block_results=block_items)
            f = client.submit(_bootstrap, _PACKAGE, _ROOT, aspec, retries=retries,
                              key=f"assemble-{spec['scene']}-{uuid.uuid4().hex[:6]}", pure=False)
            pending[f] = (row, "assemble", 0)
        n_scenes = len(todo)
        all_futures = list(pending)
        try:
            while pending:
                if feedback.is_cancelled():
                    raise Cancelled()
                try:
                    done, _ = wait(list(pending), timeout=0.5, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    continue
                for f in done:
                    row, kind, px = pending.pop(f)
                    try:
                        res = f.result()
                    except Exception as exc:  # noqa: BLE001 - retries exhausted, worker lost too often
                        res = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "worker": None,
                               "seconds": 0.0}
                    _record(row, kind, res, px, stats)
                    if kind == "block" and res.get("status") == "done":
                        stats["blocks_done"] += 1
                    if kind in ("scene", "assemble"):
                        stats["scenes_done"] += 1
                    elapsed = max(1e-6, time.monotonic() - t_start)
                    share = ", ".join(f"{w} {100.0 * n / max(1, stats['pixels']):.0f} %"
                                      for w, n in sorted(stats["by_worker"].items()))
                    feedback.info(
                        f"{row['scene']} {kind}{'' if kind != 'block' else ' ' + str(res.get('block'))}: "
                        f"{res.get('status')}{' - ' + res['error'] if res.get('error') else ''}; scenes "
                        f"{stats['scenes_done']}/{n_scenes}, blocks {stats['blocks_done']}/{n_blocks}, "
                        f"{stats['pixels'] / 1e6 / elapsed:.2f} Mpx/s; per worker: {share}")
                    feedback.progress(100.0 * stats["pixels"] / max(1, total_px))
        except BaseException:
            with contextlib.suppress(Exception):
                event.set()
            with contextlib.suppress(Exception):
                client.cancel(all_futures, force=True)
            if cluster is not None:
                with contextlib.suppress(Exception):
                    cluster.close(timeout=20)
            else:
                time.sleep(2.0)  # remote tasks see the event within about a second
            for row, spec, _ in todo:
                if row["status"] not in ("done", "failed"):
                    _remove_outputs(spec["folder"], [SIDECAR, PROBABILITY, MASK, POLYGONS])
                    shutil.rmtree(os.path.join(spec["folder"], BLOCK_DIR), ignore_errors=True)
                    _cleanup_partials(os.path.dirname(spec["folder"]), [spec["folder"]])
            raise


def _record(row, kind, res, px, stats):
    worker = res.get("worker")
    if res.get("status") == "done" and kind in ("scene", "block"):
        stats["pixels"] += px
        stats["by_worker"][worker] = stats["by_worker"].get(worker, 0) + px
    if kind == "block":
        row["seconds"] = (row["seconds"] or 0.0) + res.get("seconds", 0.0)
        row["cpu_seconds"] = row.get("cpu_seconds", 0.0) + res.get("cpu_seconds", 0.0)
        workers = set(filter(None, (row["worker"] or "").split(";"))) | {worker}
        row["worker"] = ";".join(sorted(w for w in workers if w))
        if res.get("status") != "done" and row["status"] != "failed":
            row.update(status="failed", error=res.get("error") or res.get("status"))
        return
    if res.get("status") == "done":
        row.update(status="done", error="", pixels_processed=res["pixels_processed"],
                   gully_pixels=res["gully_pixels"], gully_area_m2=res["gully_area_m2"],
                   polygons=res.get("polygons"), provider=res.get("provider"))
    elif row["status"] != "failed":
        row.update(status="failed", error=res.get("error") or res.get("status"))
    row["seconds"] = (row["seconds"] or 0.0) + res.get("seconds", 0.0)
    row["cpu_seconds"] = row.get("cpu_seconds", 0.0) + res.get("cpu_seconds", 0.0)  # summary.json only
    if kind == "assemble":
        row["assembly_seconds"] = res.get("seconds", 0.0)  # summary.json only (benchmarks/bench_segmentmany.py)
    if kind == "scene":
        row["worker"] = worker
    elif worker and worker not in (row["worker"] or "").split(";"):
        row["worker"] = ";".join(filter(None, [row["worker"], worker]))


def _cleanup_partials(output_dir, folders):
    """Remove temporary files left by lost workers (``.name.partial-xxxx``, ``.gullyseg-*``)."""
    for folder in folders:
        for pattern in (".*.partial-*", ".gullyseg-*"):
            for p in glob.glob(os.path.join(glob.escape(folder), pattern)) + glob.glob(
                    os.path.join(glob.escape(folder), BLOCK_DIR, pattern)):
                with contextlib.suppress(OSError):
                    os.remove(p)


