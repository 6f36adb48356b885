"""A screening test dataset: gridtiles over a synthetic scene, kept pristine; each test gets a copy.

Shared by the dock tests (test_dock_screening, test_dock_keys); imported by name (tests/ is on sys.path).
"""

import shutil

from gullyseg.processing.engine import dataset, tiling


def make_source_dataset(tmp_path_factory, scene_factory, name, width, height, seed, tile):
    """A dataset folder made by gridtiles (tif + jpg) from a synthetic scene; tests copy it."""
    scene = scene_factory(name, width=width, height=height, seed=seed)
    root = tmp_path_factory.mktemp(f"{name}_ds") / "dataset"
    tiling.grid_tiles(str(scene), str(root), tile_size=tile)
    return root


def copy_index(source_dataset, tmp_path):
    """A fresh copy of the dataset under ``tmp_path``; returns the path of its index.gpkg."""
    root = tmp_path / "dataset"
    shutil.copytree(source_dataset, root)
    return root / dataset.INDEX_NAME


def statuses(index_path):
    """{tile_id: status} as the index holds them."""
    records, _ = dataset.read_index(str(index_path))
    return {r["tile_id"]: r["status"] for r in records}
