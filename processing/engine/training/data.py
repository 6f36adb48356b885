"""Reading a split dataset folder for training: checks, statistics and lazy tile batches.

The one place the training engine reads the dataset folder contract (dataset.py, split.py):
``split.json`` (``split.SPLIT_MANIFEST``) lists every sample (original tiles and the augmented
variants ``<tile_id>__aNN``) with its split and its files relative to the folder; the list files
``train.txt`` / ``val.txt`` / ``test.txt`` say which samples are in each split; the card
``dataset.json`` gives the bands, data type, tile size and pixel size of the tiles.

Training reads the GeoTIFF tiles (``image_tif``: the scene's own values, exactly what
gullyseg:segment will see), never the JPEG twins (stretched to 8-bit RGB for labelling).
Nothing is held for the whole dataset: ``check_dataset`` streams every file once (header checks,
mask values, per-channel mean/std of the train split), and ``TileSource.batches`` reads the tiles
of a batch when training needs them, in a prefetch thread.
"""

import os
from typing import Callable

import numpy as np
from osgeo import gdal

from .. import dataset, gdalio, split
from ..errors import GullySegError
from ..feedback import Feedback

ALLOWED_MASK_VALUES = (0, 1, 255)  # background, gully, ignored
DTYPE_MAX = {"Byte": 255.0, "UInt16": 65535.0, "Int16": 32767.0, "UInt32": 4294967295.0}


class DatasetSpec:
    """What the trainer needs to know about a split dataset folder."""

    def __init__(self, root, card, samples, lists):
        self.root = root
        self.card = card
        self.samples = samples  # {sample id: {'image': abs path, 'mask': abs path, 'split': ...}}
        self.lists = lists  # {'train': [ids], 'val': [...], 'test': [...]}
        source = card.get("source") or {}
        tiling = card.get("tiling") or {}
        self.bands = int(source.get("bands") or 0) or None
        self.data_type = source.get("data_type") or "Byte"
        self.tile_size = int(tiling.get("tile_size") or 0) or None
        pixel = source.get("pixel_size") or [None]
        self.resolution_cm = abs(float(pixel[0])) * 100.0 if pixel and pixel[0] else None
        self.input_max = DTYPE_MAX.get(self.data_type, 1.0)
        self.mean = None
        self.std = None
        self.class_counts = None
        self.card_id = None

    def ids(self, which) -> list:
        return self.lists[which]

    def sizes(self) -> dict:
        return {k: len(v) for k, v in self.lists.items()}


def _list_ids(path):
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def open_dataset(root, what="DATASET") -> DatasetSpec:
    """Read the card, split manifest and list files of ``root``; error before anything else when
    the folder is not a split dataset or its train list is empty."""
    if not root or not os.path.isdir(str(root)):
        raise GullySegError(f"{what}: '{root}' is not a folder; give a dataset folder made by gridtiles and "
                            "split by splitdataset.")
    paths = dataset.DatasetPaths(root)
    if not os.path.exists(paths.index):
        raise GullySegError(f"{what}: '{paths.root}' has no tile index ({dataset.INDEX_NAME}); is it a GullySeg "
                            "dataset folder?")
    manifest_path = os.path.join(paths.root, split.SPLIT_MANIFEST)
    manifest = split.read_json(manifest_path, what)
    if not manifest or not isinstance(manifest.get("samples"), dict):
        raise GullySegError(
            f"{what}: '{paths.root}' has no split ({split.SPLIT_MANIFEST} is missing or has no samples). Run "
            "'Split dataset into train/val/test' (gullyseg:splitdataset) first.")
    card = dataset.read_card(paths.root)
    lists, samples = {}, {}
    for which in split.SPLITS:
        list_path = os.path.join(paths.root, f"{which}.txt")
        if not os.path.exists(list_path):
            raise GullySegError(f"{what}: the list file '{list_path}' is missing; re-run gullyseg:splitdataset.")
        ids = _list_ids(list_path)
        for sid in ids:
            entry = manifest["samples"].get(sid)
            if entry is None:
                raise GullySegError(f"{what}: '{list_path}' lists the sample '{sid}', which {split.SPLIT_MANIFEST} "
                                    "does not know; re-run gullyseg:splitdataset.")
            if not entry.get("image_tif"):
                raise GullySegError(
                    f"{what}: sample '{sid}' has no GeoTIFF image (only '{entry.get('image_jpg')}'); trainmodel "
                    "trains on the GeoTIFF tiles, which hold the values gullyseg:segment sees. Cut the tiles with "
                    "FORMAT GeoTIFF (or both).")
            samples[sid] = {"image": paths.abs(entry["image_tif"]), "mask": paths.abs(entry["mask"]),
                            "split": which, "variant": bool(entry.get("variant"))}
        lists[which] = ids
    if not lists["train"]:
        raise GullySegError(f"{what}: the train list '{os.path.join(paths.root, 'train.txt')}' is empty; nothing "
                            "to train on. Split with a non-zero train ratio.")
    return DatasetSpec(paths.root, card, samples, lists)


def check_dataset(spec, feedback=None, what="DATASET") -> DatasetSpec:
    """Every sample's files exist, open, have the card's band count and one size; masks hold only
    0, 1 and 255. Computes the train split's per-channel mean/std (after / input_max, over labelled
    valid pixels) and class pixel counts. One streamed pass; the first problem is an error naming
    the file."""
    feedback = feedback or Feedback()
    n = len(spec.samples)
    size = spec.tile_size
    bands = spec.bands
    sums = sq = None
    count = 0
    classes = np.zeros(2, dtype=np.int64)
    for i, (sid, s) in enumerate(sorted(spec.samples.items())):
        if i % 16 == 0:
            feedback.check_cancelled()
            feedback.progress(100.0 * i / n)
        for key in ("image", "mask"):
            if not s[key] or not os.path.isfile(s[key]):
                raise GullySegError(f"{what}: the {key} file of sample '{sid}' ('{s[key]}') does not exist.")
        img = gdal.Open(s["image"])
        if img is None:
            raise GullySegError(f"{what}: cannot open the image '{s['image']}'.")
        if bands is None:
            bands = img.RasterCount
        if img.RasterCount != bands:
            raise GullySegError(
                f"{what}: the image '{s['image']}' has {img.RasterCount} band(s), but the dataset card says "
                f"{bands}; every tile must have the card's bands.")
        if size is None:
            size = img.RasterXSize
        if (img.RasterXSize, img.RasterYSize) != (size, size):
            raise GullySegError(f"{what}: the image '{s['image']}' is {img.RasterXSize} x {img.RasterYSize} px, "
                                f"not the dataset's {size} x {size}.")
        mds = gdal.Open(s["mask"])
        if mds is None:
            raise GullySegError(f"{what}: cannot open the mask '{s['mask']}'.")
        if (mds.RasterXSize, mds.RasterYSize) != (size, size):
            raise GullySegError(f"{what}: the mask '{s['mask']}' is {mds.RasterXSize} x {mds.RasterYSize} px, "
                                f"not the image's {size} x {size}.")
        mask = mds.GetRasterBand(1).ReadAsArray()
        bad = ~np.isin(mask, ALLOWED_MASK_VALUES)
        if bad.any():
            values = sorted({int(v) for v in np.unique(mask[bad])[:10]})
            raise GullySegError(
                f"{what}: the mask '{s['mask']}' holds the value(s) {values}; the model has two classes (0 "
                "background, 1 gully) and 255 means ignored. Rasterise the labels with a class map gully=1.")
        if s["split"] == "train":
            raw = img.ReadAsArray().reshape(img.RasterCount, size, size).astype(np.float64) / spec.input_max
            valid = (mask != 255) & gdalio.valid_mask(img, 0, 0, size, size)
            v = raw[:, valid]
            if sums is None:
                sums, sq = np.zeros(len(raw)), np.zeros(len(raw))
            sums += v.sum(axis=1)
            sq += (v * v).sum(axis=1)
            count += v.shape[1]
            classes += np.bincount(mask[mask != 255].ravel(), minlength=2)[:2]
        img = mds = None
    spec.bands = bands
    spec.tile_size = size
    if count == 0:
        raise GullySegError(f"{what}: the train split has no labelled pixels (every mask pixel is 255).")
    mean = sums / count
    std = np.sqrt(np.maximum(sq / count - mean * mean, 0.0))
    spec.mean = [round(float(m), 6) for m in mean]
    spec.std = [round(float(max(s, 1e-3)), 6) for s in std]
    spec.class_counts = [int(c) for c in classes]
    feedback.progress(100.0)
    return spec


class TileSource:
    """Reads samples of a split from disk, normalised like onnx_model.ModelInfo.normalise."""

    def __init__(self, spec, which, batch_size):
        self.spec = spec
        self.ids = list(spec.ids(which))
        self.batch_size = int(batch_size)
        scale = float(spec.input_max)
        std = np.asarray(spec.std, np.float64)
        mean = np.asarray(spec.mean, np.float64)
        # the same folded multiply-add as segment's preprocessing (bit-identical inputs)
        self.a = (1.0 / (scale * std)).astype(np.float32).reshape(-1, 1, 1)
        self.b = (-mean / std).astype(np.float32).reshape(-1, 1, 1)

    def __len__(self):
        return len(self.ids)

    def read(self, sid) -> tuple:
        """(x float32 [C, H, W], y int64 [H, W], raw image) of one sample."""
        s = self.spec.samples[sid]
        img = gdal.Open(s["image"])
        raw = img.ReadAsArray()
        raw = raw.reshape((img.RasterCount,) + raw.shape[-2:])
        valid = gdalio.valid_mask(img, 0, 0, img.RasterXSize, img.RasterYSize)
        x = raw.astype(np.float32)
        x *= self.a
        if self.b.any():
            x += self.b
        if not valid.all():
            x[:, ~valid] = 0.0
        mds = gdal.Open(s["mask"])  # keep the dataset alive while its band is read
        y = mds.GetRasterBand(1).ReadAsArray().astype(np.int64)
        mds = img = None
        return x, y, raw

    def _batches(self, order):
        import torch

        for i in range(0, len(order), self.batch_size):
            items = [self.read(self.ids[k]) for k in order[i:i + self.batch_size]]
            yield (torch.from_numpy(np.stack([it[0] for it in items])),
                   torch.from_numpy(np.stack([it[1] for it in items])))

    def batches(self, seed=None) -> Callable:
        """A ``batches(epoch)`` callable: shuffled per (seed, epoch) when seed is given; read ahead."""
        from . import loop

        def make(epoch=0):
            order = loop.epoch_order(len(self.ids), seed, epoch) if seed is not None else list(range(len(self.ids)))
            return loop.prefetch(self._batches(order))

        make.count = lambda: -(-len(self.ids) // self.batch_size)
        return make
