"""Labelme format: Labelme's own results (oracle), every shape type, class maps, reading/writing.

Burn rule in these tests: GDAL's default pixel-centre rule (a pixel is burnt when its centre,
at (col + 0.5, row + 0.5) in Labelme's pixel-corner coordinates, is inside the shape).
Labelme's labelme2voc.py fills with PIL instead, which treats integer coordinates as pixel
centres; the two differ along shape borders only (about 0.5 % of the pixels of these images).
"""

import base64
import io
import json
import math

import numpy as np
import pytest
from osgeo import gdal, ogr

from gullyseg.processing.engine import burn, labelme, rasterize
from gullyseg.processing.engine.errors import GullySegError

ORACLE_FILES = ["2011_000003", "2011_000006", "2011_000025"]
PRIMITIVE_CLASSES = "rectangle=1,circle=2,polygon=3,line=4,point=5,line_strip=6,octagon=7"


# --- independent references (plain numpy, no GDAL) ---------------------------------------

def _centres(width, height):
    xs, ys = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    return xs, ys


def _inside_polygon(points, width, height):
    """Even-odd ray casting at every pixel centre."""
    xs, ys = _centres(width, height)
    inside = np.zeros((height, width), dtype=bool)
    pts = list(points)
    for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1]):
        crosses = (y1 > ys) != (y2 > ys)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x1 + (ys - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (xs < x_at)
    return inside


def _distance_to_polyline(points, width, height):
    xs, ys = _centres(width, height)
    best = np.full((height, width), np.inf)
    for (x1, y1), (x2, y2) in zip(points[:-1], points[1:]):
        dx, dy = x2 - x1, y2 - y1
        t = np.clip(((xs - x1) * dx + (ys - y1) * dy) / (dx * dx + dy * dy), 0, 1)
        best = np.minimum(best, np.hypot(xs - (x1 + t * dx), ys - (y1 + t * dy)))
    return best


def _check_band(burnt, distance_inside, tolerance, what):
    """``distance_inside`` > 0 inside the true shape: pixels clearly inside must be burnt, clearly outside not."""
    clearly_in = distance_inside > tolerance
    clearly_out = distance_inside < -tolerance
    assert burnt[clearly_in].all(), f"{what}: {np.count_nonzero(~burnt[clearly_in])} pixels inside not burnt"
    assert not burnt[clearly_out].any(), f"{what}: {np.count_nonzero(burnt[clearly_out])} pixels outside burnt"
    assert clearly_in.sum() > 0


# --- Labelme's own results -------------------------------------------------------------------

@pytest.mark.parametrize("name", ORACLE_FILES)
def test_agrees_with_labelme_oracle(shared_data, name):
    """>= 99 % of pixels equal Labelme's labelme2voc.py label maps, with labels.txt's class ids.

    Burn rule: pixel centre (GDAL, as gdal_rasterize) against Labelme's PIL polygon fill; the
    oracle's -1 (ignore) is compared with our ignore value 255.
    """
    folder = shared_data / "labelme"
    classes = labelme.parse_classes(str(folder / "labels.txt"))
    assert classes.value("person") == 15 and classes.value("_background_") == 0
    assert classes.value("__ignore__") == 255
    ours, problems = rasterize.rasterize_labelme_file(str(folder / f"{name}.json"), classes, all_touched=False)
    oracle = np.load(folder / "oracle_npy" / f"{name}.npy")
    oracle = np.where(oracle == -1, 255, oracle)
    assert ours.shape == oracle.shape
    agreement = float(np.mean(ours == oracle))
    assert agreement >= 0.99, f"{name}: only {100 * agreement:.2f} % of pixels agree with Labelme"
    # every class Labelme burnt is present in ours too (the class ids come from labels.txt)
    assert set(np.unique(oracle)) == set(np.unique(ours))
    assert all(p.severity == labelme.WARNING for p in problems)


def test_oracle_points_outside_image_are_reported(shared_data):
    """2011_000006 has a 'chair' vertex below the image: a warning with the shape index, clipped."""
    folder = shared_data / "labelme"
    classes = labelme.parse_classes(str(folder / "labels.txt"))
    _, problems = rasterize.rasterize_labelme_file(str(folder / "2011_000006.json"), classes)
    assert [(p.severity, p.shape_index) for p in problems] == [(labelme.WARNING, 3)]
    assert "outside" in problems[0].message and "chair" in problems[0].message


# --- every shape type ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def primitives(shared_data):
    path = shared_data / "labelme" / "primitives.json"
    doc = json.loads(path.read_text())
    arr, problems = rasterize.rasterize_labelme_file(
        str(path), labelme.parse_classes(PRIMITIVE_CLASSES), line_width=10, point_radius=5)
    return doc, arr, problems


def test_primitives_every_type_burns(primitives):
    doc, arr, problems = primitives
    assert problems == []
    assert arr.shape == (doc["imageHeight"], doc["imageWidth"])
    assert {s["shape_type"] for s in doc["shapes"]} == set(labelme.SHAPE_TYPES)
    assert set(np.unique(arr)) == {0, 1, 2, 3, 4, 5, 6, 7}


def test_primitives_rectangles_exact(primitives):
    doc, arr, _ = primitives
    expected = np.zeros(arr.shape, dtype=bool)
    for shape in doc["shapes"]:
        if shape["shape_type"] == "rectangle":
            (x1, y1), (x2, y2) = shape["points"]
            expected[int(y1):int(y2), int(x1):int(x2)] = True  # corners on pixel edges: exactly these pixels
    assert np.array_equal(arr == 1, expected)
    assert expected.sum() == 100 * 100 + 151 * 102


def test_primitives_mask_shape_is_its_png(primitives, shared_data):
    from PIL import Image  # independent decoder for the reference (the engine uses GDAL)

    doc, arr, _ = primitives
    shape = next(s for s in doc["shapes"] if s["shape_type"] == "mask")
    png = np.array(Image.open(io.BytesIO(base64.b64decode(shape["mask"])))) != 0
    x0, y0 = (int(v) for v in shape["points"][0])
    expected = np.zeros(arr.shape, dtype=bool)
    expected[y0:y0 + png.shape[0], x0:x0 + png.shape[1]] = png
    assert np.array_equal(arr == 7, expected)
    assert np.array_equal(labelme.decode_mask_png(shape["mask"]), png)


def test_primitives_polygon_circle_lines_point(primitives):
    doc, arr, _ = primitives
    h, w = arr.shape
    xs, ys = _centres(w, h)
    by_label = {s["label"]: s for s in doc["shapes"] if s["shape_type"] != "rectangle"}
    # polygon: pixel centres inside the polygon (ray casting); centres lying exactly on an edge
    # (8 of them here) are ties that GDAL resolves its own way, so they are left out
    poly = by_label["polygon"]["points"]
    off_edge = _distance_to_polyline(poly + poly[:1], w, h) > 1e-9
    assert np.array_equal((arr == 3)[off_edge], _inside_polygon(poly, w, h)[off_edge])
    assert np.count_nonzero(~off_edge) < 20
    # circle: centre and a point on the circle
    (cx, cy), (px, py) = by_label["circle"]["points"]
    r = math.hypot(px - cx, py - cy)
    _check_band(arr == 2, r - np.hypot(xs - cx, ys - cy), 0.05, "circle")
    # point: a disc of POINT_RADIUS
    (qx, qy), = by_label["point"]["points"]
    _check_band(arr == 5, 5 - np.hypot(xs - qx, ys - qy), 0.05, "point")
    # line and linestrip: LINE_WIDTH / 2 around the line (round ends)
    _check_band(arr == 4, 5 - _distance_to_polyline(by_label["line"]["points"], w, h), 0.05, "line")
    _check_band(arr == 6, 5 - _distance_to_polyline(by_label["line_strip"]["points"], w, h), 0.05, "linestrip")


def test_line_width_and_point_radius_parameters(shared_data):
    path = str(shared_data / "labelme" / "primitives.json")
    classes = labelme.parse_classes(PRIMITIVE_CLASSES)
    thin, _ = rasterize.rasterize_labelme_file(path, classes, line_width=2, point_radius=2)
    thick, _ = rasterize.rasterize_labelme_file(path, classes, line_width=20, point_radius=10)
    for value in (4, 5, 6):
        assert 0 < np.count_nonzero(thin == value) < np.count_nonzero(thick == value)
    # a disc of radius 10 has about pi * 100 pixels
    assert abs(np.count_nonzero(thick == 5) - math.pi * 100) < 12


def test_all_touched_burns_a_superset(shared_data):
    path = str(shared_data / "labelme" / "2011_000025.json")
    classes = labelme.parse_classes(str(shared_data / "labelme" / "labels.txt"))
    centre, _ = rasterize.rasterize_labelme_file(path, classes, all_touched=False)
    touched, _ = rasterize.rasterize_labelme_file(path, classes, all_touched=True)
    assert np.count_nonzero(touched) > np.count_nonzero(centre)
    assert np.all(touched[centre > 0] > 0)


# --- synthetic files: order, rectangles on pixel edges, problems ---------------------------

def _write(path, shapes, width=64, height=48, image_path="img.jpg"):
    doc = labelme.labelme_document(shapes, image_path, width, height)
    labelme.write_labelme(str(path), doc)
    return str(path)


def test_rectangle_on_pixel_edges_exact_and_file_order(tmp_path):
    shapes = [
        labelme.labelme_shape("gully", [(10, 5), (30, 20)], "rectangle"),
        labelme.labelme_shape("dam", [(20, 10), (40, 30)], "rectangle"),  # later: burns over the first
        labelme.labelme_shape("__ignore__", [(0, 0), (4, 0), (4, 4), (0, 4)]),
    ]
    path = _write(tmp_path / "a.json", shapes)
    arr, problems = rasterize.rasterize_labelme_file(path, labelme.parse_classes("gully=1,dam=2"))
    expected = np.zeros((48, 64), dtype=np.uint8)
    expected[5:20, 10:30] = 1
    expected[10:30, 20:40] = 2
    expected[0:4, 0:4] = 255
    assert problems == []
    assert np.array_equal(arr, expected)


def test_mask_shape_burns_in_file_order(tmp_path):
    """A polygon drawn after a mask shape burns over it, and the mask over the earlier polygon."""
    from PIL import Image

    png = np.zeros((6, 8), dtype=np.uint8)
    png[1:5, 2:7] = 1
    buf = io.BytesIO()
    Image.fromarray(png * 255).save(buf, format="PNG")
    mask_shape = labelme.labelme_shape("b", [(10, 10), (17, 15)], "mask")
    mask_shape["mask"] = base64.b64encode(buf.getvalue()).decode()
    shapes = [
        labelme.labelme_shape("a", [(0, 0), (14, 14)], "rectangle"),
        mask_shape,
        labelme.labelme_shape("c", [(15, 12), (20, 20)], "rectangle"),
    ]
    path = _write(tmp_path / "m.json", shapes, 32, 32)
    arr, _ = rasterize.rasterize_labelme_file(path, labelme.parse_classes("a=1,b=2,c=3"))
    expected = np.zeros((32, 32), dtype=np.uint8)
    expected[0:14, 0:14] = 1
    expected[10:16, 10:18][png > 0] = 2
    expected[12:20, 15:20] = 3
    assert np.array_equal(arr, expected)


def test_problems_are_reported_per_shape(tmp_path):
    shapes = [
        labelme.labelme_shape("gully", [(1, 1), (5, 1)]),  # polygon with 2 points
        labelme.labelme_shape("road", [(1, 1), (5, 1), (5, 5)]),  # unknown label
        labelme.labelme_shape("gully", [(1, 1), (70, 1), (5, 5)]),  # outside the 64 px wide image
        {"label": "gully", "points": [[1, 1], [2, 2]], "shape_type": "ellipse"},  # unknown type
    ]
    path = _write(tmp_path / "p.json", shapes)
    problems = []
    doc = labelme.read_labelme(path, problems)
    items, ok = labelme.shape_items(doc, 64, 48, labelme.parse_classes("gully=1"), 10, 5, problems)
    assert not ok
    found = {(p.shape_index, p.severity) for p in problems}
    assert found == {(0, "error"), (1, "error"), (2, "warning"), (3, "error")}
    assert "at least 3" in next(p.message for p in problems if p.shape_index == 0)
    assert "'road'" in next(p.message for p in problems if p.shape_index == 1)
    assert len(items) == 1  # only the (clipped) polygon is burnable
    # UNKNOWN_LABELS=skip: the unknown label becomes a warning
    problems = []
    labelme.shape_items(doc, 64, 48, labelme.parse_classes("gully=1"), 10, 5, problems, unknown_labels="skip")
    assert next(p for p in problems if p.shape_index == 1).severity == "warning"


def test_invalid_json_is_a_problem(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"shapes": [ {"label": "gully", ')
    problems = []
    assert labelme.read_labelme(str(bad), problems) is None
    assert problems[0].severity == "error" and "invalid JSON" in problems[0].message
    other = tmp_path / "other.json"
    other.write_text('{"type": "FeatureCollection"}')
    assert labelme.read_labelme(str(other), problems) is None
    assert "not a Labelme file" in problems[-1].message


def test_group_id_flags_description_tolerated(tmp_path):
    shape = labelme.labelme_shape("gully", [(2, 2), (10, 2), (10, 10)])
    shape.update(group_id=3, flags={"checked": True}, description="wide gully", other_key=[1, 2])
    path = _write(tmp_path / "g.json", [shape])
    arr, problems = rasterize.rasterize_labelme_file(path, labelme.parse_classes("gully=1"))
    assert problems == [] and arr.sum() > 0


# --- class maps and the written format ---------------------------------------------------

def test_parse_classes():
    cm = labelme.parse_classes("gully=1, dam_land=2; cloud=ignore", ignore_value=200)
    assert cm.value("gully") == 1 and cm.value("dam_land") == 2
    assert cm.value("cloud") == 200 and cm.value("__ignore__") == 200 and cm.value("_background_") == 0
    assert cm.foreground_values() == [1]
    assert labelme.parse_classes("").values["gully"] == 1
    for bad in ("gully", "gully=x", "gully=300", "gully=255"):
        with pytest.raises(GullySegError, match="CLASSES"):
            labelme.parse_classes(bad)


def test_labels_txt_round_trip(tmp_path):
    path = tmp_path / "labels.txt"
    labelme.write_labels_txt(str(path), ["gully", "dam_land"])
    assert path.read_text().split() == ["__ignore__", "_background_", "gully", "dam_land"]
    cm = labelme.parse_classes(str(path))
    assert cm.value("gully") == 1 and cm.value("dam_land") == 2 and cm.value("__ignore__") == 255


def test_written_document_is_labelme_format(tmp_path):
    shapes = [labelme.labelme_shape("gully", [(1.5, 2.25), (10, 2), (10, 10)])]
    path = _write(tmp_path / "t.json", shapes, 256, 256, "t.jpg")
    data = json.loads(open(path).read())
    assert data["version"].startswith("5.")
    assert data["imageData"] is None and data["imagePath"] == "t.jpg"
    assert (data["imageWidth"], data["imageHeight"]) == (256, 256)
    assert data["shapes"][0]["shape_type"] == "polygon" and data["shapes"][0]["points"][0] == [1.5, 2.25]
    problems = []
    doc = labelme.read_labelme(path, problems)
    assert problems == [] and doc.shapes[0].points[0] == (1.5, 2.25)


def test_bad_mask_png_and_point_counts_are_errors(tmp_path):
    bad_mask = labelme.labelme_shape("gully", [(1, 1), (4, 4)], "mask")
    bad_mask["mask"] = base64.b64encode(b"not a png at all").decode()
    shapes = [
        bad_mask,
        labelme.labelme_shape("gully", [(1, 1), (4, 4), (6, 6)], "rectangle"),  # 3 points
        labelme.labelme_shape("gully", [(1, 1)], "circle"),
        labelme.labelme_shape("gully", [(1, 1)], "linestrip"),
    ]
    path = _write(tmp_path / "bad.json", shapes)
    problems = []
    doc = labelme.read_labelme(path, problems)
    items, ok = labelme.shape_items(doc, 64, 48, labelme.parse_classes("gully=1"), 10, 5, problems)
    assert not ok and items == []
    assert [(p.shape_index, p.severity) for p in problems] == [(i, "error") for i in range(4)]
    assert "PNG" in problems[0].message


def _burn(polygons, all_touched):
    ds = gdal.GetDriverByName("MEM").Create("", 64, 64, 1, gdal.GDT_Byte)
    ds.SetGeoTransform((0, 1, 0, 0, 0, 1))
    mem = ogr.GetDriverByName("Memory").CreateDataSource("")
    layer = mem.CreateLayer("p")
    for poly in polygons:
        feat = ogr.Feature(layer.GetLayerDefn())
        feat.SetGeometry(poly)
        layer.CreateFeature(feat)
    gdal.RasterizeLayer(ds, [1], layer, burn_values=[1],
                        options=["ALL_TOUCHED=TRUE"] if all_touched else [])
    return ds.ReadAsArray()


def test_holes_are_split_into_pieces_that_burn_the_polygon_pixels(tmp_path):
    """The one hole strategy: hole-free pieces with the polygon's label. Directly and through a
    written Labelme file read back by rasterizelabels' reader, they burn the pixels GDAL burns for the
    polygon with its holes, under both burn rules, also for a hole narrower than a pixel and an
    island inside a hole."""
    donut = ogr.CreateGeometryFromWkt(
        "POLYGON((3.3 2.2,60.7 4.1,58.2 61.6,2.4 59.9,3.3 2.2),(20.2 20.2,40.6 21.3,39.4 40.1,20.9 38.8,20.2 20.2),"
        "(45.2 10.1,45.8 10.1,45.8 30.7,45.2 30.7,45.2 10.1))")
    island = ogr.CreateGeometryFromWkt("POLYGON((25.1 25.3,33.7 25.2,33.2 34.6,25.1 25.3))")
    pieces = labelme.split_holes(donut.Clone())
    assert len(pieces) > 1 and all(p.GetGeometryCount() == 1 for p in pieces)
    for all_touched in (False, True):
        np.testing.assert_array_equal(_burn(pieces, all_touched), _burn([donut], all_touched))
    both = ogr.Geometry(ogr.wkbMultiPolygon)
    both.AddGeometry(donut)
    both.AddGeometry(island)
    shapes = labelme.polygon_shapes(both, "gully")
    assert {s["label"] for s in shapes} == {"gully"} and len(shapes) == len(pieces) + 1
    path = tmp_path / "donut.json"
    labelme.write_labelme(str(path), labelme.labelme_document(shapes, "donut.jpg", 64, 64))
    for all_touched in (False, True):
        burnt, _ = burn.rasterize_labelme_file(str(path), labelme.parse_classes("gully=1"), all_touched=all_touched)
        np.testing.assert_array_equal(burnt, _burn([donut, island], all_touched))
