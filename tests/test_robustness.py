"""Issue 14: nothing lost, nothing leaked. Full disks, failed overwrites, signals, hostile annotation
folders, and clear errors instead of tracebacks. See docs/guarantees.md.

The full disk is a real one: a small tmpfs mounted for the test (needs root, as in the project's
containers; elsewhere those tests are skipped with the reason)."""

import contextlib
import json
import os
import sqlite3
import subprocess

import pytest

from gullyseg.processing.engine import dataset, labelme, rasterize, tiling
from gullyseg.processing.engine.errors import GullySegError


@pytest.fixture
def scene(scene_factory):
    return scene_factory("robust", width=512, height=512, seed=5)


@pytest.fixture
def index(scene, tmp_path):
    return tiling.grid_tiles(str(scene), str(tmp_path / "ds")).index_path


def tile_ids(index_path):
    return [r["tile_id"] for r in dataset.read_index(index_path)[0]]


def write_json(folder, tid, shapes, width=256, height=256, **extra):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{tid}.json")
    doc = labelme.labelme_document(shapes, f"{tid}.jpg", width, height)
    doc.update(extra)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(doc, handle)
    return path


def label_every_tile(index_path):
    lm = os.path.join(os.path.dirname(index_path), "labelme")
    for tid in tile_ids(index_path):
        write_json(lm, tid, [labelme.labelme_shape("gully", [(3, 3), (120, 200)], "rectangle")])
    return lm


def leftovers(folder):
    """Hidden temporaries (.x.partial-...) anywhere under ``folder``."""
    found = []
    for base, dirs, files in os.walk(folder):
        found += [os.path.join(base, n) for n in files + dirs if ".partial" in n or n.startswith(".gullyseg-")]
    return found


@contextlib.contextmanager
def small_tmpfs(folder, size="2m"):
    os.makedirs(folder, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield str(folder)
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder, leave_bytes):
    """Fill the file system of ``folder`` until about ``leave_bytes`` are free."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    with open(os.path.join(folder, "filler.bin"), "wb") as handle:
        handle.write(b"\0" * max(0, free - leave_bytes))


# --- 1. a full disk: no 0-byte masks, index untouched ----------------------------------------

def test_full_disk_rasterize_fails_clearly_and_leaves_nothing(index, tmp_path):
    label_every_tile(index)
    before = open(index, "rb").read()
    with small_tmpfs(tmp_path / "full") as full:
        masks = os.path.join(full, "masks")
        os.makedirs(masks)
        fill(full, 12 * 1024)  # room for about one uncompressible-header mask, not four
        with pytest.raises(GullySegError) as err:
            rasterize.rasterize_labels(index, output_dir=masks)
        assert "OUTPUT_DIR" in str(err.value) and masks in str(err.value)
        assert os.listdir(masks) == []  # no 0-byte mask, no temporary
    assert open(index, "rb").read() == before


def test_full_disk_gridtiles_fails_clearly_and_leaves_nothing(scene, tmp_path):
    with small_tmpfs(tmp_path / "full") as full:
        fill(full, 200 * 1024)
        out = os.path.join(full, "ds")
        with pytest.raises(GullySegError, match="OUTPUT"):
            tiling.grid_tiles(str(scene), out)
        assert not os.path.exists(out) or leftovers(out) == [] and not os.path.exists(os.path.join(out, "index.gpkg"))


# --- 6. no orphan masks when the index cannot be updated -------------------------------------

def test_locked_index_leaves_no_orphan_masks(index):
    label_every_tile(index)
    root = os.path.dirname(index)
    lock = sqlite3.connect(index)
    lock.execute("BEGIN IMMEDIATE")  # readers may read, no other writer may write
    try:
        with pytest.raises(GullySegError, match="index"):
            rasterize.rasterize_labels(index)
    finally:
        lock.rollback()
        lock.close()
    masks = os.path.join(root, "masks")
    assert not os.path.isdir(masks) or os.listdir(masks) == []
    assert all(not r.get("mask") for r in dataset.read_index(index)[0])
