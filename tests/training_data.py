"""The tiny training dataset shared by the training tests (imported by name; tests/ is on sys.path)."""

import dataset_builder

from gullyseg.processing.engine import split, synthetic


def tiny_dataset(base):
    """A 256 x 256 synthetic scene under ``base`` cut into 16 tiles of 64 px, masks from its ground truth,
    split 6:2:2. Returns {'scene', 'mask', 'root', 'base'}."""
    scene = base / "scene.tif"
    synthetic.make_scene(str(scene), width=256, height=256, seed=3, mask_path=str(base / "scene_mask.tif"),
                         gullies_path=str(base / "scene_gullies.gpkg"))
    root = base / "dataset"
    dataset_builder.build_dataset(root, scene, tile_size=64)
    split.split_dataset(str(root), ratios="6:2:2", seed=1)
    return {"scene": scene, "mask": base / "scene_mask.tif", "root": root, "base": base}
