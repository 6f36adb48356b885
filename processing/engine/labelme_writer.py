"""The one Labelme writer: polygons (OGR) to Labelme shapes, documents and files.

Used by the export for annotation (``labelme_export``) and the synthetic annotator
(``synthetic.annotate``). Coordinates are Labelme's: pixel-corner based, x right, y down.

One hole strategy: Labelme polygons have no holes, so a polygon with holes is written as
hole-free pieces (``split_holes``), each with the polygon's label. The pieces burn exactly the
pixels of the polygon with its holes under either burn rule (pixel centre or all touched), in any
order, so every reader gets the polygon right: rasterizelabels, Labelme's own
labelme_json_to_dataset and a plain GDAL burn of the shapes alike. (A ``_background_`` polygon per
hole, which rasterizelabels also reads in files from elsewhere, grows the hole under the
all-touched rule and depends on the shapes' order.)
"""

import json
import math

from osgeo import ogr

from .gdalio import ring_polygon
from .windows import bounds_of, to_pixel

LABELME_VERSION = "5.4.1"  # the format version GullySeg writes (Labelme 5.x reads it silently)
BACKGROUND_LABEL = "_background_"


def labelme_shape(label, points, shape_type="polygon") -> dict:
    return {
        "label": label,
        "points": [[float(x), float(y)] for x, y in points],
        "group_id": None,
        "description": "",
        "shape_type": shape_type,
        "flags": {},
        "mask": None,
    }


def labelme_document(shapes, image_path, width, height) -> dict:
    """A Labelme document as Labelme writes it (imageData null: the image is read from imagePath)."""
    return {
        "version": LABELME_VERSION,
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": None,
        "imageHeight": int(height),
        "imageWidth": int(width),
    }


def write_labelme(path, document) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, ensure_ascii=False)
        handle.write("\n")


to_pixel_of = to_pixel  # windows.to_pixel


def split_holes(poly, depth=0) -> list:
    """Hole-free polygons covering ``poly`` (pixel coordinates): the one way GullySeg writes a
    polygon with holes to Labelme, whose polygons have none.

    Cuts along a vertical line through a hole, recursively; the line is a pixel edge (an integer x)
    where the hole spans one, so no pixel centre lies on a cut and the pieces burn exactly the
    pixels of ``poly`` with either burn rule.
    """
    if poly.GetGeometryCount() <= 1 or depth > 400:
        return [poly]
    hole = poly.GetGeometryRef(1)
    xmin, xmax, _, _ = hole.GetEnvelope()
    cx = 0.5 * (xmin + xmax)
    for candidate in (math.floor(cx), math.ceil(cx)):
        if xmin < candidate < xmax:
            cx = candidate
            break
    else:
        if cx - math.floor(cx) == 0.5:  # a pixel centre: move off it, still inside the hole
            cx = 0.5 * (xmin + cx)
    pxmin, pxmax, pymin, pymax = poly.GetEnvelope()
    parts = []
    for a, b in ((pxmin - 1, cx), (cx, pxmax + 1)):
        box = ring_polygon([(a, pymin - 1), (b, pymin - 1), (b, pymax + 1), (a, pymax + 1)])
        cut = poly.Intersection(box)  # kept alive while its parts are used
        pieces = []
        collect_polygons(cut, pieces)
        for piece in pieces:
            parts.extend(split_holes(piece.Clone(), depth=depth + 1))
    return parts


def _ring_points(ring):
    pts = [(ring.GetX(k), ring.GetY(k)) for k in range(ring.GetPointCount())]
    if len(pts) > 1 and pts[0] == pts[-1]:
        pts = pts[:-1]
    return pts


def polygon_shapes(geom, label, to_pixel=None, simplify_px=0.0, min_area=1e-9, size=None, decimals=None) -> list:
    """The polygons of ``geom`` as Labelme polygon shapes: the one Labelme polygon writer.

    ``to_pixel(x, y) -> (col, row)`` maps map coordinates to pixel coordinates (None: ``geom`` is
    in pixel coordinates already); each polygon is then simplified by ``simplify_px`` (0: not).
    Polygons with holes are cut into hole-free pieces (``split_holes``), written largest first.
    Pieces of ``min_area`` px² or less are dropped; with ``size`` (width, height) points are
    clamped to the image, with ``decimals`` rounded.
    """
    parts = []
    collect_polygons(geom, parts)
    keyed = []  # (area, polygon in pixel coordinates)
    for poly in parts:
        poly = poly.Clone()
        if to_pixel is not None:
            for r in range(poly.GetGeometryCount()):
                ring = poly.GetGeometryRef(r)
                for k in range(ring.GetPointCount()):
                    ring.SetPoint_2D(k, *to_pixel(ring.GetX(k), ring.GetY(k)))
        if simplify_px > 0:
            poly = poly.SimplifyPreserveTopology(simplify_px)
        simple = []
        collect_polygons(poly, simple)
        for one in simple:
            keyed.extend((piece.GetArea(), piece) for piece in split_holes(one.Clone()))
    keyed.sort(key=lambda kv: -kv[0])

    def shape(ring, name):
        pts = _ring_points(ring)
        if size is not None:
            pts = [(min(max(x, 0.0), size[0]), min(max(y, 0.0), size[1])) for x, y in pts]
        if decimals is not None:
            pts = [(round(x, decimals), round(y, decimals)) for x, y in pts]
        return labelme_shape(name, pts) if len(pts) >= 3 else None

    out = []
    for area, poly in keyed:
        if area > min_area and poly.GetGeometryRef(0) is not None:
            piece = shape(poly.GetGeometryRef(0), label)
            if piece is not None:
                out.append(piece)
    return out


def layer_shapes(layer, geotransform, width, height, label, simplify_px=0.0, min_area=1e-9, decimals=None) -> list:
    """Labelme shapes of the polygons of an OGR ``layer`` (in the raster's CRS) on one image.

    The image is ``width`` x ``height`` pixels with ``geotransform``. Features are clipped to it,
    merged (one label: overlapping polygons become one), and written by ``polygon_shapes``.
    """
    xmin, ymin, xmax, ymax = bounds_of(geotransform, 0, 0, width, height)
    frame = ring_polygon([(xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax)])
    layer.SetSpatialFilterRect(xmin, ymin, xmax, ymax)
    polygons = []
    for feat in layer:
        geom = feat.GetGeometryRef()
        if geom is None or geom.IsEmpty():
            continue
        cut, clipped = geom.Intersection(frame), []  # ``cut`` alive while its parts are cloned
        collect_polygons(cut, clipped)  # drops lines/points left by the clip
        polygons.extend(p.Clone() for p in clipped)
    layer.SetSpatialFilter(None)
    layer.ResetReading()
    if not polygons:
        return []
    multi = ogr.Geometry(ogr.wkbMultiPolygon)
    for poly in polygons:
        multi.AddGeometry(poly)
    union = multi.UnionCascaded() if len(polygons) > 1 else multi
    return polygon_shapes(union, label, to_pixel_of(geotransform), simplify_px=simplify_px,
                          min_area=min_area, size=(width, height) if decimals is not None else None,
                          decimals=decimals)


def geometry_to_shapes(geom, label, to_pixel, min_area=1e-9) -> list:
    """Polygons (OGR, map coordinates) -> Labelme polygon shapes in pixel coordinates
    (``polygon_shapes``: holes split into pieces, no simplification)."""
    return polygon_shapes(geom, label, to_pixel, min_area=min_area)


def collect_polygons(geom, out) -> None:
    if geom is None or geom.IsEmpty():
        return
    gtype = ogr.GT_Flatten(geom.GetGeometryType())
    if gtype == ogr.wkbPolygon:
        out.append(geom)
    elif gtype in (ogr.wkbMultiPolygon, ogr.wkbGeometryCollection):
        for k in range(geom.GetGeometryCount()):
            collect_polygons(geom.GetGeometryRef(k), out)
    elif gtype in (ogr.wkbCurvePolygon, ogr.wkbMultiSurface):
        collect_polygons(geom.GetLinearGeometry(), out)
