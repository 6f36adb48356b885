"""Labelme JSON: read, validate, turn into burnable shapes (steps 3 and 4); written by ``labelme_writer``.

Labelme's coordinates are pixel-corner based: (0, 0) is the top-left corner of the image's
top-left pixel, x grows to the right, y grows down, and pixel (col, row) covers
``[col, col + 1) x [row, row + 1)``. GullySeg keeps that convention everywhere: shapes are
turned into OGR geometries in that pixel space and burnt by GDAL (``rasterize.py``).

Shape types: polygon, rectangle (two opposite corners), circle (centre and a point on the
circle), line (two points), linestrip (two or more points), point, and mask (a base64 PNG
covering the bounding box whose top-left pixel is the first point, as Labelme >= 5.3 writes
it). ``group_id``, ``flags``, ``description`` and unknown keys are tolerated and ignored.

Class maps follow Labelme's conventions: ``__ignore__`` burns the ignore value,
``_background_`` burns 0, classes burn 1..254; a labels.txt (``__ignore__``, ``_background_``,
then the classes in order) gives the same ids as Labelme's ``labelme2voc.py``.
"""

import base64
import binascii
import json
import math
import os
import uuid
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from osgeo import gdal, ogr

from . import safefiles
from .dataset import MASK_IGNORE
from .errors import GullySegError
from .gdalio import ring_polygon
from .labelme_writer import (  # noqa: F401 (the writer; importable from here as before)
    BACKGROUND_LABEL,
    LABELME_VERSION,
    collect_polygons,
    geometry_to_shapes,
    labelme_document,
    labelme_shape,
    layer_shapes,
    polygon_shapes,
    split_holes,
    to_pixel_of,
    write_labelme,
)

IGNORE_LABEL = "__ignore__"
DEFAULT_IGNORE_VALUE = MASK_IGNORE
SHAPE_TYPES = ("polygon", "rectangle", "circle", "line", "linestrip", "point", "mask")
LINE_TYPES = ("line", "linestrip")
POINT_COUNTS = {"rectangle": 2, "circle": 2, "line": 2, "point": 1, "mask": 2}  # exact counts Labelme writes

ERROR = "error"
WARNING = "warning"

# Points may sit this far outside the image (pixels) before it counts as "outside the tile":
# Labelme clamps to the image border, but float noise like 256.0000000001 is common.
EDGE_TOLERANCE = 1e-6
# Coordinates beyond this (pixels, either sign) cannot be burnt (GDAL's rasteriser works in
# 32-bit pixel indices): such a shape is an error, not "clipped".
MAX_COORDINATE = float(2 ** 31 - 1)
# imageWidth/imageHeight above this are refused (a tile is at most a few thousand pixels).
MAX_IMAGE_SIDE = 1_000_000
# A mask shape's PNG may hold at most this many pixels (and never more than its box).
MAX_MASK_PIXELS = 64 * 1024 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Maximum distance (pixels) between a true circle and its polygon (circles and point discs).
CIRCLE_TOLERANCE = 0.01


# --- problems -----------------------------------------------------------------------------

@dataclass
class Problem:
    """One problem found in a label source. ``severity`` is ERROR (the file is bad) or WARNING."""

    file: str
    message: str
    severity: str = ERROR
    shape_index: object = None  # 0-based index of the shape (or feature) in its file; None: the whole file
    tile_id: str = ""

    def as_dict(self) -> dict:
        return {
            "file": self.file,
            "tile_id": self.tile_id,
            "shape_index": "" if self.shape_index is None else self.shape_index,
            "severity": self.severity,
            "problem": self.message,
        }

    def __str__(self):
        where = os.path.basename(self.file) if self.file else "?"
        if self.shape_index is not None:
            where += f", shape {self.shape_index}"
        return f"{self.severity.upper()}: {where}: {self.message}"


# --- class maps ---------------------------------------------------------------------------

class ClassMap:
    """Label name -> burn value. ``_background_`` is 0 and ``__ignore__`` the ignore value, always."""

    def __init__(self, values, ignore_value=DEFAULT_IGNORE_VALUE, ignored=(), source="CLASSES"):
        ignore_value = int(ignore_value)
        if not 0 <= ignore_value <= 255:
            raise GullySegError(f"IGNORE_VALUE must be between 0 and 255 (got {ignore_value}).")
        self.ignore_value = ignore_value
        self.source = source
        self.values = {}
        for label, value in values.items():
            value = int(value)
            if not 0 <= value <= 255:
                raise GullySegError(f"{source}: class '{label}' has value {value}; masks are uint8 (0..255).")
            if value == ignore_value and label != IGNORE_LABEL:
                raise GullySegError(
                    f"{source}: class '{label}' has value {value}, which is the ignore value (IGNORE_VALUE); "
                    f"write '{label}=ignore' if it should be ignored, or choose another value."
                )
            self.values[label] = value
        for label in ignored:
            self.values[label] = ignore_value
        self.values[IGNORE_LABEL] = ignore_value
        self.values.setdefault(BACKGROUND_LABEL, 0)

    def __contains__(self, label):
        return label in self.values

    def value(self, label) -> int:
        return self.values[label]

    @property
    def classes(self) -> dict:
        """{label: value} of the real classes (not background, not ignored)."""
        return {k: v for k, v in self.values.items() if v not in (0, self.ignore_value)}

    def foreground_values(self) -> list:
        """Values counted by ``gully_frac``: the class 'gully' if mapped, else every class."""
        if "gully" in self.values and self.values["gully"] not in (0, self.ignore_value):
            return [self.values["gully"]]
        return sorted(set(self.classes.values()))

    def first_class(self) -> tuple:
        """(label, value) of the first real class, used for polygons without a class field."""
        for label, value in self.values.items():
            if value not in (0, self.ignore_value):
                return label, value
        raise GullySegError(f"{self.source}: the class map has no class besides background and ignore.")

    def as_dict(self) -> dict:
        return dict(sorted(self.values.items(), key=lambda kv: (kv[1], kv[0])))


def read_labels_txt(path, ignore_value=DEFAULT_IGNORE_VALUE) -> "ClassMap":
    """A Labelme labels.txt: ``__ignore__`` (-1 -> ignore), ``_background_`` (0), classes 1..n."""
    raw = safefiles.read_bytes(path, "CLASSES", safefiles.MAX_TEXT_BYTES)  # a regular file of bounded size
    try:
        names = [line.strip() for line in raw.decode("utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as exc:
        raise GullySegError(f"CLASSES: cannot read the labels file '{path}': {exc}") from None
    if not names:
        raise GullySegError(f"CLASSES: the labels file '{path}' is empty.")
    values = {}
    # Labelme's labelme2voc.py: class_id = line number - 1, so __ignore__ is -1 and _background_ 0.
    start = -1 if names[0] == IGNORE_LABEL else (0 if names[0] == BACKGROUND_LABEL else 1)
    for i, name in enumerate(names):
        class_id = start + i
        if name == IGNORE_LABEL:
            continue
        if name == BACKGROUND_LABEL:
            if class_id != 0:
                raise GullySegError(f"CLASSES: '{path}': {BACKGROUND_LABEL} must be the first class (id 0).")
            continue
        if class_id >= 255 or class_id == ignore_value:
            raise GullySegError(f"CLASSES: '{path}' has too many classes for uint8 masks with ignore {ignore_value}.")
        values[name] = class_id
    return ClassMap(values, ignore_value, source=f"CLASSES ({os.path.basename(path)})")


def parse_class_map(text, ignore_value=DEFAULT_IGNORE_VALUE) -> "ClassMap":
    """``'gully=1, dam_land=2, cloud=ignore'`` or the path of a labels.txt -> ClassMap."""
    text = (text or "").strip()
    if not text:
        text = "gully=1"
    if os.path.isfile(text):
        return read_labels_txt(text, ignore_value)
    values, ignored = {}, []
    for item in text.replace(";", ",").replace("\n", ",").split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise GullySegError(
                f"CLASSES: '{item}' is not 'label=value'. Write e.g. 'gully=1' or 'gully=1,dam=2,cloud=ignore', "
                "or give the path of a Labelme labels.txt."
            )
        label, value = (part.strip() for part in item.rsplit("=", 1))
        if not label:
            raise GullySegError(f"CLASSES: '{item}' has no label name.")
        if value.lower() == "ignore":
            ignored.append(label)
            continue
        try:
            values[label] = int(value)
        except ValueError:
            raise GullySegError(f"CLASSES: value '{value}' of '{label}' is not an integer or 'ignore'.") from None
    return ClassMap(values, ignore_value, ignored=ignored)



parse_classes = parse_class_map  # the earlier name (metrics.parse_class_names parses class *names*)

def write_labels_txt(path, labels) -> None:
    """labels.txt in Labelme's convention: __ignore__, _background_, then the classes."""
    names = [IGNORE_LABEL, BACKGROUND_LABEL] + [n for n in labels if n not in (IGNORE_LABEL, BACKGROUND_LABEL)]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(names) + "\n")


# --- reading ------------------------------------------------------------------------------

@dataclass
class Shape:
    index: int
    label: str
    shape_type: str
    points: list
    mask_b64: object = None


@dataclass
class LabelmeDoc:
    path: str
    image_path: str
    width: object  # imageWidth (None when missing)
    height: object
    shapes: list = field(default_factory=list)
    version: str = ""


def read_labelme(path, problems) -> Optional["LabelmeDoc"]:
    """Parse a Labelme JSON. Returns a LabelmeDoc, or None after adding an ERROR to ``problems``.

    Any ERROR it adds (for the file or one of its shapes) means the file must not be burnt.
    Only regular files of at most ``safefiles.MAX_JSON_BYTES`` are read. JSON nested too deeply
    for Python's parser (RecursionError) stops the whole run with a GullySegError, STRICT or not.
    """
    try:
        raw = safefiles.read_bytes(path, "Labelme file", safefiles.MAX_JSON_BYTES)
    except GullySegError as exc:
        problems.append(Problem(path, str(exc)))
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        problems.append(Problem(path, f"cannot read the file: {exc}"))
        return None
    except RecursionError:
        raise GullySegError(
            f"LABELME_DIR: '{path}' is nested too deeply to be a Labelme file (a hostile or broken JSON); "
            "the run stops. Remove the file from the folder."
        ) from None
    except ValueError as exc:
        problems.append(Problem(path, f"invalid JSON: {exc}"))
        return None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        problems.append(Problem(path, "not a Labelme file (no 'shapes' list)"))
        return None

    def _int(key):
        value = data.get(key)
        if value is None:
            return None
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = int(value) if math.isfinite(value) else None  # Infinity, NaN: not a size
        elif isinstance(value, str):
            try:
                number = int(value.strip())
            except ValueError:
                number = None
        if number is None or not 0 < number <= MAX_IMAGE_SIDE:
            shown = repr(value) if len(repr(value)) < 40 else repr(value)[:40] + "..."
            problems.append(Problem(path, f"{key} is not a whole number of pixels in 1..{MAX_IMAGE_SIDE}: {shown}"))
            return None
        return number

    doc = LabelmeDoc(
        path=str(path),
        image_path=str(data.get("imagePath") or ""),
        width=_int("imageWidth"),
        height=_int("imageHeight"),
        version=str(data.get("version") or ""),
    )
    for i, raw in enumerate(data["shapes"]):
        if not isinstance(raw, dict):
            problems.append(Problem(path, "shape is not a JSON object", shape_index=i))
            continue
        label = raw.get("label")
        if not isinstance(label, str) or not label:
            problems.append(Problem(path, "shape has no label (or a label that is not text)", shape_index=i))
            continue
        shape_type = raw.get("shape_type") or "polygon"  # Labelme's default when the key is absent
        points = raw.get("points") or []
        try:
            if not isinstance(points, list) or any(not isinstance(p, list) or len(p) != 2 for p in points):
                raise TypeError
            pts = [(float(p[0]), float(p[1])) for p in points]
        except (TypeError, ValueError, IndexError, OverflowError):
            problems.append(Problem(path, f"'{label}' {shape_type}: points are not [x, y] pairs", shape_index=i))
            continue
        if not all(math.isfinite(v) for p in pts for v in p):
            problems.append(Problem(path, f"'{label}' {shape_type}: a point is not a finite number", shape_index=i))
            continue
        if any(abs(v) > MAX_COORDINATE for p in pts for v in p):
            problems.append(Problem(path, f"'{label}' {shape_type}: a point lies beyond {MAX_COORDINATE:.0f} px "
                                          "(GDAL's rasteriser cannot burn it)", shape_index=i))
            continue
        doc.shapes.append(Shape(i, label, str(shape_type), pts, raw.get("mask")))
    return doc


# --- shapes to geometries (pixel space: x right, y down) ----------------------------------

def _segments(radius, tolerance=CIRCLE_TOLERANCE):
    """Vertices for a circle polygon whose sagitta stays below ``tolerance`` pixels."""
    if radius <= tolerance:
        return 8
    n = math.pi / math.acos(max(-1.0, 1.0 - tolerance / radius))
    return int(min(4096, max(16, math.ceil(n))))


def circle_polygon(cx, cy, radius) -> ogr.Geometry:
    n = _segments(radius)
    angles = [2.0 * math.pi * k / n for k in range(n)]
    return ring_polygon([(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in angles])


def png_size(raw) -> Optional[tuple]:
    """(width, height) from a PNG's header (IHDR), or None when ``raw`` is not a PNG."""
    if len(raw) < 24 or raw[:8] != PNG_SIGNATURE or raw[12:16] != b"IHDR":
        return None
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")


def decode_mask_png(b64, max_size=None) -> np.ndarray:
    """A Labelme mask (base64 PNG) -> bool array (rows, cols), decoded by GDAL's PNG driver via /vsimem.

    Only PNG is decoded (checked by its signature, and GDAL may use no other driver: a VRT or a
    /vsicurl/ path in a shared file must never be opened). The size in the PNG's header is checked
    before any pixel is read: at most ``max_size`` (width, height) when given, and at most
    MAX_MASK_PIXELS in any case.
    """
    try:
        raw = base64.b64decode(b64, validate=False)
    except (binascii.Error, TypeError, ValueError) as exc:
        raise GullySegError(f"mask is not valid base64: {exc}") from None
    size = png_size(raw)
    if size is None:
        raise GullySegError("mask is not a PNG image (Labelme writes masks as base64 PNG)")
    width, height = size
    if width < 1 or height < 1 or width * height > MAX_MASK_PIXELS:
        raise GullySegError(f"mask PNG declares {width}x{height} pixels (at most {MAX_MASK_PIXELS:,} are read)")
    if max_size is not None and (width > max_size[0] or height > max_size[1]):
        raise GullySegError(f"mask PNG is {width}x{height} pixels, larger than its shape's box "
                            f"{max_size[0]}x{max_size[1]}")
    name = f"/vsimem/gullyseg_mask_{uuid.uuid4().hex}.png"
    gdal.FileFromMemBuffer(name, raw)
    try:
        try:
            ds = gdal.OpenEx(name, gdal.OF_RASTER, allowed_drivers=["PNG"])
        except RuntimeError as exc:
            raise GullySegError(f"mask is not a PNG image GDAL can read: {exc}") from None
        if ds is None or ds.GetDriver().ShortName != "PNG" or (ds.RasterXSize, ds.RasterYSize) != (width, height):
            raise GullySegError("mask is not a PNG image GDAL can read")
        # Labelme writes 1-bit or 8-bit grey PNGs; for RGB(A) ones any non-zero colour counts (not alpha)
        colour_bands = [1, 2, 3] if ds.RasterCount >= 3 else [1]
        mask = np.zeros((ds.RasterYSize, ds.RasterXSize), dtype=bool)
        try:
            for b in colour_bands:
                mask |= ds.GetRasterBand(b).ReadAsArray() != 0
        except RuntimeError as exc:
            raise GullySegError(f"mask PNG cannot be decoded: {exc}") from None
        ds = None
        return mask
    finally:
        gdal.Unlink(name)


@dataclass
class BurnItem:
    """One thing to burn, in file order: an OGR geometry, or a raster mask placed at (x0, y0)."""

    value: int
    geometry: object = None
    mask: object = None  # bool array
    x0: int = 0
    y0: int = 0


def shape_items(doc, width, height, classes, line_width, point_radius, problems, tile_id="",
                unknown_labels="error") -> tuple:
    """Turn a LabelmeDoc's shapes into BurnItems (pixel space) in file order, reporting problems.

    Returns (items, ok): ``ok`` is False when the file has an ERROR (it must then not be burnt).
    """
    ok = True
    items = []

    def report(shape, message, severity=ERROR):
        nonlocal ok
        problems.append(Problem(doc.path, message, severity, shape.index, tile_id))
        if severity == ERROR:
            ok = False

    for shape in doc.shapes:
        kind, pts, label = shape.shape_type, shape.points, shape.label
        if label not in classes:
            if unknown_labels == "skip":
                report(shape, f"label '{label}' is not in the class map; shape skipped", WARNING)
            else:
                report(shape, f"label '{label}' is not in the class map (CLASSES)")
            continue
        value = classes.value(label)
        if kind not in SHAPE_TYPES:
            report(shape, f"unknown shape_type '{kind}' (Labelme knows {', '.join(SHAPE_TYPES)})")
            continue
        need = POINT_COUNTS
        if kind == "polygon" and len(pts) < 3:
            report(shape, f"'{label}' polygon has {len(pts)} point(s); a polygon needs at least 3")
            continue
        if kind == "linestrip" and len(pts) < 2:
            report(shape, f"'{label}' linestrip has {len(pts)} point(s); it needs at least 2")
            continue
        if kind in need and len(pts) != need[kind]:
            report(shape, f"'{label}' {kind} has {len(pts)} point(s); Labelme writes {need[kind]}")
            continue
        if kind != "mask":
            outside = [p for p in pts if not (-EDGE_TOLERANCE <= p[0] <= width + EDGE_TOLERANCE
                                              and -EDGE_TOLERANCE <= p[1] <= height + EDGE_TOLERANCE)]
            if outside:
                x, y = outside[0]
                report(shape, f"'{label}' {kind}: {len(outside)} point(s) outside the {width}x{height} tile "
                              f"(e.g. {x:.2f}, {y:.2f}); clipped to the tile", WARNING)
        if kind == "polygon":
            geom = ring_polygon(pts)
        elif kind == "rectangle":
            (x1, y1), (x2, y2) = pts
            xa, xb, ya, yb = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
            geom = ring_polygon([(xa, ya), (xb, ya), (xb, yb), (xa, yb)])
        elif kind == "circle":
            (cx, cy), (px, py) = pts
            geom = circle_polygon(cx, cy, math.hypot(px - cx, py - cy))
        elif kind == "point":
            geom = circle_polygon(pts[0][0], pts[0][1], float(point_radius))
        elif kind in LINE_TYPES:
            line = ogr.Geometry(ogr.wkbLineString)
            for x, y in pts:
                line.AddPoint_2D(x, y)
            half = float(line_width) / 2.0
            geom = line.Buffer(half, max(4, _segments(half) // 4)) if half > 0 else None
        else:  # mask
            if not shape.mask_b64:
                report(shape, f"'{label}' mask shape has no 'mask' image")
                continue
            # Labelme's box: from int(first point) to int(second point), both included
            box = (abs(int(pts[1][0]) - int(pts[0][0])) + 1, abs(int(pts[1][1]) - int(pts[0][1])) + 1)
            try:
                mask = decode_mask_png(shape.mask_b64, max_size=(min(box[0], width + 1), min(box[1], height + 1)))
            except GullySegError as exc:
                report(shape, f"'{label}' {exc}")
                continue
            # Labelme pastes the PNG with its top-left pixel at int(first point).
            x0, y0 = int(math.floor(min(pts[0][0], pts[1][0]))), int(math.floor(min(pts[0][1], pts[1][1])))
            if x0 < 0 or y0 < 0 or x0 + mask.shape[1] > width or y0 + mask.shape[0] > height:
                report(shape, f"'{label}' mask ({mask.shape[1]}x{mask.shape[0]} at {x0}, {y0}) reaches outside "
                              f"the {width}x{height} tile; clipped to the tile", WARNING)
            items.append(BurnItem(value, mask=mask, x0=x0, y0=y0))
            continue
        if geom is not None and not geom.IsEmpty():
            items.append(BurnItem(value, geometry=geom))
    return items, ok
