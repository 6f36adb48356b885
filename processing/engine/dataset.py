"""The dataset folder contract shared by every step (tiling, screening, labels, split, augment).

    <dataset>/
      index.gpkg     layer 'tiles': one polygon per tile (footprint in the scene CRS)
      images/        <tile_id>.tif and/or <tile_id>.jpg (+ .jgw, .aux.xml)
      masks/         <tile_id>.tif (label step)
      labelme/       <tile_id>.json (Labelme annotations)
      dataset.json   the dataset card (+ dataset.md, its human-readable twin)

Fields are only ever added to the index, never removed. Paths stored in the index are
relative to the dataset folder, with '/' separators.
"""

import json
import os
from typing import Any, Callable, Optional

from osgeo import gdal, ogr, osr

from ...metadata import VERSION
from . import gdalio, safefiles, windows
from .errors import GullySegError

INDEX_NAME = "index.gpkg"
INDEX_LAYER = "tiles"
CARD_JSON = "dataset.json"
CARD_MD = "dataset.md"
IMAGES_DIR = "images"
MASKS_DIR = "masks"
LABELME_DIR = "labelme"

STATUS_UNSCREENED = "unscreened"
STATUS_KEEP = "keep"
STATUS_REJECT = "reject"
STATUSES = (STATUS_UNSCREENED, STATUS_KEEP, STATUS_REJECT)
SCREENING_LOG = "screening_log.csv"  # the dock's journal of decisions with time stamps (screening.py)
SPLITS = ("train", "val", "test")
SPLIT_MANIFEST = "split.json"  # written by split.py
AUGMENT_MANIFEST = "augment.json"  # written by augment.py, read by split.py
AUGMENTED_DIR = "augmented"  # augment.py's variants: augmented/images|masks/<tile_id>__aNN.*
MASK_IGNORE = 255  # masks: the ignore value (also their nodata value) unless the card records another
MAX_LISTED = 20  # problems listed by name in an error message
# Side files that travel with a tile's image when it is linked elsewhere (split's folders):
SIDE_SUFFIXES = (".aux.xml",)  # appended to the full file name
SIDE_EXTS = {".jpg": (".jgw", ".wld"), ".tif": (".tfw",)}  # world files: replace the extension

# name -> OGR type. The core fields every index has (later steps may add more, e.g. gully_frac).
INDEX_FIELDS = {
    "tile_id": ogr.OFTString,
    "row": ogr.OFTInteger,
    "col": ogr.OFTInteger,
    "x_off": ogr.OFTInteger,
    "y_off": ogr.OFTInteger,
    "width": ogr.OFTInteger,
    "height": ogr.OFTInteger,
    "nodata_frac": ogr.OFTReal,
    "status": ogr.OFTString,
    "split": ogr.OFTString,
    "image_tif": ogr.OFTString,
    "image_jpg": ogr.OFTString,
}
# Fields added by later steps, with their types (so every writer agrees).
OPTIONAL_FIELDS = {
    "mask": ogr.OFTString,
    "labelme": ogr.OFTString,
    "gully_frac": ogr.OFTReal,
    "score": ogr.OFTReal,
}
_PY_TO_OGR = {str: ogr.OFTString, int: ogr.OFTInteger, float: ogr.OFTReal}


def tile_id(scene_name, row, col) -> str:
    """Stable tile id that sorts in grid order: '<scene>_r0007_c0012'."""
    return f"{scene_name}_r{row:04d}_c{col:04d}"


class DatasetPaths:
    """Paths inside a dataset folder."""

    def __init__(self, root):
        self.root = os.path.abspath(str(root))

    @classmethod
    def from_index(cls, index_path):
        return cls(os.path.dirname(os.path.abspath(str(index_path))))

    index = property(lambda self: os.path.join(self.root, INDEX_NAME))
    images = property(lambda self: os.path.join(self.root, IMAGES_DIR))
    masks = property(lambda self: os.path.join(self.root, MASKS_DIR))
    labelme = property(lambda self: os.path.join(self.root, LABELME_DIR))
    card = property(lambda self: os.path.join(self.root, CARD_JSON))
    card_md = property(lambda self: os.path.join(self.root, CARD_MD))

    def abs(self, relative) -> Optional[str]:
        """Absolute path of a path stored relative to the dataset folder ('' -> None).

        It must stay inside the folder (no '..', no absolute path), else a GullySegError."""
        return safefiles.confined(self.root, relative) if relative else None

    def rel(self, path) -> str:
        return os.path.relpath(os.path.abspath(path), self.root).replace(os.sep, "/")


def _field_type(name, value=None):
    if name in INDEX_FIELDS:
        return INDEX_FIELDS[name]
    if name in OPTIONAL_FIELDS:
        return OPTIONAL_FIELDS[name]
    return _PY_TO_OGR.get(type(value), ogr.OFTString)


def tile_polygon(bounds) -> ogr.Geometry:
    """The footprint of a tile (xmin, ymin, xmax, ymax), from its top-left corner clockwise."""
    xmin, ymin, xmax, ymax = bounds
    return gdalio.ring_polygon([(xmin, ymax), (xmax, ymax), (xmax, ymin), (xmin, ymin)])


def write_index(path, crs_wkt, records, overwrite=False, extra_fields=None) -> str:
    """Write a new tile index atomically.

    records: dicts with the INDEX_FIELDS (missing ones empty) and 'bounds' (xmin, ymin, xmax, ymax).
    extra_fields: optional {name: ogr type} for more columns present in the records.
    """
    fields = dict(INDEX_FIELDS)
    fields.update(extra_fields or {})
    with gdalio.atomic_output(path, overwrite=overwrite, what="OUTPUT_INDEX") as tmp, \
            gdalio.checked_write(path, "OUTPUT_INDEX"):
        drv = ogr.GetDriverByName("GPKG")
        ds = drv.CreateDataSource(tmp)
        srs = osr.SpatialReference()
        srs.ImportFromWkt(crs_wkt)
        layer = ds.CreateLayer(INDEX_LAYER, srs, ogr.wkbPolygon, ["FID=fid", "GEOMETRY_NAME=geom"])
        for name, ftype in fields.items():
            layer.CreateField(ogr.FieldDefn(name, ftype))
        defn = layer.GetLayerDefn()
        layer.StartTransaction()
        for rec in records:
            feat = ogr.Feature(defn)
            for name in fields:
                value = rec.get(name)
                if value is None:
                    if name == "status":
                        value = STATUS_UNSCREENED
                    elif fields[name] == ogr.OFTString:
                        value = ""
                    else:
                        continue
                feat.SetField(name, value)
            feat.SetGeometry(tile_polygon(rec["bounds"]))
            layer.CreateFeature(feat)
        layer.CommitTransaction()
        layer = None
        ds = None
    return path


def _open_index(path, update=False):
    if not os.path.exists(str(path)):
        raise GullySegError(f"TILES: tile index '{path}' does not exist.")
    try:
        ds = ogr.Open(str(path), 1 if update else 0)
    except RuntimeError as exc:
        raise GullySegError(f"TILES: cannot open tile index '{path}': {exc}") from None
    layer = ds.GetLayerByName(INDEX_LAYER) if ds is not None else None
    if layer is None and ds is not None and ds.GetLayerCount() == 1:
        layer = ds.GetLayer(0)
    if layer is None:
        raise GullySegError(f"TILES: '{path}' is not a GullySeg tile index (no '{INDEX_LAYER}' layer).")
    names = {layer.GetLayerDefn().GetFieldDefn(i).GetName() for i in range(layer.GetLayerDefn().GetFieldCount())}
    missing = [f for f in ("tile_id", "x_off", "y_off", "width", "height", "status") if f not in names]
    if missing:
        raise GullySegError(f"TILES: '{path}' lacks the fields {missing}; is it a GullySeg tile index?")
    return ds, layer


def normalise_status(value) -> str:
    """A tile's status as read from the index, tolerant of NULL/empty and case (anything unknown
    counts as unscreened)."""
    text = str(value or "").strip().lower()
    return text if text in (STATUS_KEEP, STATUS_REJECT) else STATUS_UNSCREENED


def read_index(path) -> tuple:
    """Return (records, crs_wkt): records are dicts of every field plus 'fid' and 'bounds'."""
    ds, layer = _open_index(path)
    srs = layer.GetSpatialRef()
    defn = layer.GetLayerDefn()
    names = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    records = []
    for feat in layer:
        rec = {name: feat.GetField(name) for name in names}
        rec["fid"] = feat.GetFID()
        geom = feat.GetGeometryRef()
        if geom is not None:
            xmin, xmax, ymin, ymax = geom.GetEnvelope()
            rec["bounds"] = (xmin, ymin, xmax, ymax)
        records.append(rec)
    records.sort(key=lambda r: r["tile_id"])
    wkt = srs.ExportToWkt() if srs is not None else ""
    del layer, ds  # close the GeoPackage
    return records, wkt


def update_index(path, updates) -> int:
    """Set fields of tiles: ``updates`` is {tile_id: {field: value}}. Adds missing fields."""
    if not updates:
        return 0
    try:
        return _update_index(path, updates)
    except RuntimeError as exc:  # read-only file or folder, a locked database, a full disk
        raise GullySegError(f"TILES: cannot update the tile index '{path}': {exc}") from None


def _update_index(path, updates):
    if not os.access(str(path), os.W_OK):
        raise GullySegError(f"TILES: the tile index '{path}' is read-only; nothing was changed.")
    ds, layer = _open_index(path, update=True)
    defn = layer.GetLayerDefn()
    existing = {defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())}
    for values in updates.values():
        for name, value in values.items():
            if name not in existing:
                layer.CreateField(ogr.FieldDefn(name, _field_type(name, value)))
                existing.add(name)
    changed = 0
    layer.StartTransaction()
    for feat in layer:
        values = updates.get(feat.GetField("tile_id"))
        if not values:
            continue
        for name, value in values.items():
            if value is None:
                feat.SetFieldNull(name)
            else:
                feat.SetField(name, value)
        layer.SetFeature(feat)
        changed += 1
    layer.CommitTransaction()
    del layer, ds  # close (and flush) the GeoPackage
    return changed


def tiles_for_work(records, only_kept=True) -> list:
    """Tiles a step should work on: the kept ones once anything is kept, else all."""
    if only_kept and any(r.get("status") == STATUS_KEEP for r in records):
        return [r for r in records if r.get("status") == STATUS_KEEP]
    return list(records)


# --- the dataset card ------------------------------------------------------------------

def read_card(root) -> dict:
    """The dataset card (dataset.json) of the folder ``root``; {} when it has none."""
    card = read_json(DatasetPaths(root).card, "DATASET: the dataset card")
    return {} if card is None else card


def update_card(root, **sections) -> dict:
    """Merge top-level sections into dataset.json and rewrite dataset.md (both atomically).

    Deterministic: no timestamps, sorted keys, so re-running a step gives the same card.
    """
    paths = DatasetPaths(root)
    card = read_card(root)
    card["gullyseg_version"] = VERSION
    for name, value in sections.items():
        card[name] = value
    write_json(paths.card, card, what="dataset card", indent=2)
    with gdalio.atomic_output(paths.card_md, overwrite=True, what="dataset card") as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(card_markdown(card))
    return card


def card_markdown(card) -> str:
    """A short human-readable rendering of the card."""
    lines = ["# Dataset card", "", "Written by GullySeg; the machine-readable version is dataset.json.", ""]
    for section in sorted(k for k in card if k != "gullyseg_version"):
        lines.append(f"## {section}")
        value = card[section]
        if isinstance(value, dict):
            for key in sorted(value):
                lines.append(f"- **{key}**: {json.dumps(value[key], sort_keys=True)}")
        else:
            lines.append(f"- {json.dumps(value, sort_keys=True)}")
        lines.append("")
    lines.append(f"GullySeg version {card.get('gullyseg_version', '?')}.")
    return "\n".join(lines) + "\n"


# --- a tile's grid ---------------------------------------------------------------------

class TileGrid:
    """A tile's grid: size, geotransform, CRS and (optionally) its image for nodata."""

    def __init__(self, tile_id, width, height, geotransform, crs_wkt, image=None, nodata_frac=0.0):
        self.tile_id = tile_id
        self.width = int(width)
        self.height = int(height)
        self.geotransform = tuple(geotransform)
        self.crs_wkt = crs_wkt
        self.image = image
        self.nodata_frac = nodata_frac or 0.0

    @property
    def bounds(self) -> tuple:
        return windows.bounds_of(self.geotransform, 0, 0, self.width, self.height)

    def to_pixel(self) -> Callable[[float, float], tuple]:
        """(x, y) map coordinates -> (col, row), computed as GDAL's rasterizer does."""
        return windows.to_pixel(self.geotransform)


def tile_grid(rec, paths, index_crs) -> "TileGrid":
    """The grid of an index record: from its GeoTIFF (exact) when present, else from the index."""
    image = paths.abs(rec.get("image_tif") or "")
    if image and os.path.exists(image):
        try:
            ds = gdal.Open(image)
            gt = ds.GetGeoTransform(can_return_null=True)
            wkt = ds.GetProjection() or index_crs
            if gt:
                return TileGrid(rec["tile_id"], ds.RasterXSize, ds.RasterYSize, gt, wkt, image, rec.get("nodata_frac"))
        except RuntimeError:
            pass
    width, height = int(rec["width"]), int(rec["height"])
    if "bounds" not in rec:
        raise GullySegError(f"TILES: tile '{rec['tile_id']}' has no footprint and no GeoTIFF to take its grid from.")
    xmin, ymin, xmax, ymax = rec["bounds"]
    gt = (xmin, (xmax - xmin) / width, 0.0, ymax, 0.0, -(ymax - ymin) / height)
    jpg = paths.abs(rec.get("image_jpg") or "")
    return TileGrid(rec["tile_id"], width, height, gt, index_crs,
                    image if image and os.path.exists(image) else (jpg if jpg and os.path.exists(jpg) else None),
                    rec.get("nodata_frac"))


def index_paths(index_path) -> tuple:
    """(index path, DatasetPaths) of an existing tile index, or an error naming TILES."""
    if not index_path or not os.path.exists(str(index_path)):
        raise GullySegError(f"TILES: tile index '{index_path}' does not exist.")
    return str(index_path), DatasetPaths.from_index(index_path)


def rel_or_abs(paths, path) -> str:
    """``path`` relative to the dataset folder when inside it, else absolute ('/' separators)."""
    rel = paths.rel(path)
    return rel if not rel.startswith("..") else os.path.abspath(path).replace(os.sep, "/")


# --- the tiles the steps work on -------------------------------------------------------

class TileSample:
    """An original tile of the dataset with its files (paths relative to the dataset folder)."""

    __slots__ = ("tile_id", "row", "col", "images", "mask", "split", "gully", "labelled")

    def __init__(self, tile_id, row, col, images, mask, split=""):
        self.tile_id = tile_id
        self.row = row
        self.col = col
        self.images = images  # {'tif': 'images/x.tif', 'jpg': 'images/x.jpg'}
        self.mask = mask
        self.split = split or ""
        self.gully = 0
        self.labelled = 0

    @property
    def gully_share(self) -> float:
        return self.gully / self.labelled if self.labelled else 0.0


def existing(paths, relative) -> bool:
    return bool(relative) and os.path.isfile(paths.abs(relative))


def listing(names) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return f"{shown}{more}"


def collect_tiles(root, what="DATASET") -> tuple:
    """Read the index and return ``(paths, records, tiles)`` for the tiles the steps work on.

    The kept tiles once anything is kept, else all tiles (``tiles_for_work``). A tile's
    mask is the index's ``mask`` field, else ``masks/<tile_id>.tif``; its images the
    ``image_tif``/``image_jpg`` fields, else ``images/<tile_id>.tif|.jpg``. Tiles without a
    mask or without any image are an error that names them (first 20 and the count).
    """
    if not root or not os.path.isdir(str(root)):
        raise GullySegError(f"{what}: '{root}' is not a folder; give the dataset folder made by gridtiles.")
    paths = DatasetPaths(root)
    if not os.path.exists(paths.index):
        raise GullySegError(
            f"{what}: '{paths.root}' has no tile index ({INDEX_NAME}); is it a GullySeg dataset folder?")
    records, _ = read_index(paths.index)
    work = tiles_for_work(records)
    if not work:
        raise GullySegError(f"{what}: the tile index '{paths.index}' has no tiles.")
    tiles, no_mask, no_image = [], [], []
    for rec in work:
        tid = rec["tile_id"]
        mask = rec.get("mask") or ""
        if not existing(paths, mask):
            mask = f"{MASKS_DIR}/{tid}.tif"
        if not existing(paths, mask):
            no_mask.append(tid)
        images = {}
        for ext in ("tif", "jpg"):
            rel = rec.get(f"image_{ext}") or ""
            if not existing(paths, rel):
                rel = f"{IMAGES_DIR}/{tid}.{ext}"
            if existing(paths, rel):
                images[ext] = rel
        if not images:
            no_image.append(tid)
        tiles.append(TileSample(tid, rec.get("row"), rec.get("col"), images, mask, rec.get("split")))
    if no_mask:
        kept = "kept " if any(r.get("status") == STATUS_KEEP for r in records) else ""
        raise GullySegError(
            f"{what}: {len(no_mask)} of {len(work)} {kept}tiles have no mask in '{paths.masks}': "
            f"{listing(no_mask)}. Rasterise their labels first (Rasterize labels to tile masks), "
            "or reject them in the index."
        )
    if no_image:
        raise GullySegError(
            f"{what}: {len(no_image)} tiles have no image (.tif or .jpg) in '{paths.images}': {listing(no_image)}."
        )
    return paths, records, tiles


def ignore_value(card) -> int:
    """The mask ignore value recorded in the card by the label step (any 'ignore_value' key), else 255."""
    stack = [card]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key.lower() == "ignore_value" and isinstance(value, (int, float)):
                    return int(value)
                stack.append(value)
    return MASK_IGNORE


# --- manifests (split.json, augment.json) and side files ----------------------------------

def read_json(path, what) -> Any:
    """The JSON document at ``path`` (None when there is none); a broken one is an error naming it."""
    if not os.path.exists(path):
        return None
    raw = safefiles.read_bytes(path, what, safefiles.MAX_JSON_BYTES)  # a regular file of bounded size
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise GullySegError(f"{what}: cannot read '{path}': {exc}") from None


def write_json(path, data, overwrite=True, what="manifest", indent=1, sort_keys=True) -> None:
    """Write ``data`` as indented JSON (sorted keys unless ``sort_keys`` is false) through
    ``gdalio.atomic_output``."""
    with gdalio.atomic_output(path, overwrite=overwrite, what=what) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=indent, sort_keys=sort_keys)
            handle.write("\n")


def read_variants(paths, tile_ids) -> dict:
    """Variants of ``augment.json`` whose source is one of ``tile_ids`` and whose files exist."""
    manifest = read_json(os.path.join(paths.root, AUGMENT_MANIFEST), "DATASET") or {}
    out = {}
    for vid, entry in (manifest.get("variants") or {}).items():
        if entry.get("source_tile") in tile_ids and existing(paths, entry.get("mask")):
            out[vid] = entry
    return out


def set_variant_splits(paths, split_of_tile) -> None:
    """Keep the 'split' of every variant in augment.json equal to its source tile's split."""
    path = os.path.join(paths.root, AUGMENT_MANIFEST)
    manifest = read_json(path, "DATASET")
    if not manifest or not manifest.get("variants"):
        return
    changed = False
    for entry in manifest["variants"].values():
        split = split_of_tile.get(entry.get("source_tile"), "")
        if entry.get("split") != split:
            entry["split"] = split
            changed = True
    if changed:
        write_json(path, manifest, what=AUGMENT_MANIFEST)


def side_files(src_abs) -> list:
    """(source side file, suffix to put after the destination stem) pairs that exist."""
    found = []
    for suffix in SIDE_SUFFIXES:
        if os.path.exists(src_abs + suffix):
            found.append((src_abs + suffix, "full", suffix))
    stem, image_ext = os.path.splitext(src_abs)
    for ext in SIDE_EXTS.get(image_ext.lower(), ()):
        if os.path.exists(stem + ext):
            found.append((stem + ext, "stem", ext))
    return found
