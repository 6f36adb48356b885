"""gullyseg:exportlabelme and gullyseg:rasterizelabels through processing.run and qgis_process.

Burn rule: GDAL's pixel-centre rule (ALL_TOUCHED=false) unless a test says otherwise.
"""

import csv
import json
import os
import subprocess

import numpy as np
import pytest
from osgeo import gdal, ogr

from gullyseg.processing.engine import dataset, labelme, tiling


def make_dataset(scene, folder):
    return tiling.grid_tiles(str(scene), str(folder)).index_path


def gullies(scene):
    return str(scene).replace(".tif", "_gullies.gpkg")


def array(path):
    return gdal.Open(str(path)).ReadAsArray()


@pytest.fixture
def scene(scene_factory):
    return scene_factory("labels", width=512, height=512, seed=3)


def test_vector_in_epsg4326_equals_gdal_rasterize(scene, tmp_path, run_alg, gdal_tool):
    """Polygons in EPSG:4326 over EPSG:32606 tiles == ogr2ogr -t_srs + gdal_rasterize -te -ts 256 256."""
    index = make_dataset(scene, tmp_path / "ds")
    geographic = str(tmp_path / "gullies_4326.gpkg")
    subprocess.run([gdal_tool("ogr2ogr"), "-t_srs", "EPSG:4326", geographic, gullies(scene)], check=True)
    back = str(tmp_path / "gullies_back.gpkg")
    subprocess.run([gdal_tool("ogr2ogr"), "-t_srs", "EPSG:32606", back, geographic], check=True)
    records, _ = dataset.read_index(index)
    for all_touched in (False, True):
        out = tmp_path / f"masks_{all_touched}"
        results = run_alg("rasterizelabels", {
            "TILES": index, "VECTOR": geographic, "ALL_TOUCHED": all_touched, "OUTPUT_DIR": str(out)})
        assert results["MASK_COUNT"] == len(records) == 4
        burnt = 0
        for rec in records:
            xmin, ymin, xmax, ymax = rec["bounds"]
            ref = tmp_path / f"ref_{rec['tile_id']}_{all_touched}.tif"
            cmd = [gdal_tool("gdal_rasterize"), "-q", "-burn", "1", "-ot", "Byte", "-init", "0",
                   "-te", repr(xmin), repr(ymin), repr(xmax), repr(ymax), "-ts", "256", "256"]
            subprocess.run(cmd + (["-at"] if all_touched else []) + [back, str(ref)], check=True)
            ours = array(out / f"{rec['tile_id']}.tif")
            assert np.array_equal(ours, array(ref)), (rec["tile_id"], all_touched)
            burnt += int(ours.sum())
        assert burnt > 1000


def test_round_trip_through_both_algorithms(scene, tmp_path, run_alg):
    """polygons -> exportlabelme -> rasterizelabels == polygons -> rasterizelabels."""
    index = make_dataset(scene, tmp_path / "ds")
    exported = run_alg("exportlabelme", {"TILES": index, "PREFILL": gullies(scene)})
    assert exported["JSON_COUNT"] == 4 and exported["SHAPE_COUNT"] > 0
    via = run_alg("rasterizelabels", {"TILES": index, "OUTPUT_DIR": str(tmp_path / "via_labelme")})
    empty = tmp_path / "empty"
    empty.mkdir()
    direct = run_alg("rasterizelabels", {"TILES": index, "VECTOR": gullies(scene), "LABELME_DIR": str(empty),
                                         "OUTPUT_DIR": str(tmp_path / "direct")})
    assert via["MASK_COUNT"] == direct["MASK_COUNT"] == 4
    for name in sorted(os.listdir(direct["OUTPUT_DIR"])):
        assert np.array_equal(array(tmp_path / "via_labelme" / name), array(tmp_path / "direct" / name)), name


def test_class_field_and_combined_sources(scene, tmp_path, run_alg):
    """CLASS_FIELD labels through CLASSES; Labelme shapes burn over the polygons."""
    index = make_dataset(scene, tmp_path / "ds")
    records, crs = dataset.read_index(index)
    rec = records[0]
    x0, y0 = rec["bounds"][0], rec["bounds"][3]
    layer_path = str(tmp_path / "classes.gpkg")
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(layer_path)
    from osgeo import osr
    srs = osr.SpatialReference()
    srs.ImportFromWkt(crs)
    layer = ds.CreateLayer("polys", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("kind", ogr.OFTString))
    for kind, (a, b) in (("gully", (0, 30)), ("dam_land", (30, 60))):
        feat = ogr.Feature(layer.GetLayerDefn())
        feat.SetField("kind", kind)
        feat.SetGeometry(ogr.CreateGeometryFromWkt(
            f"POLYGON(({x0 + a * 0.75} {y0},{x0 + b * 0.75} {y0},{x0 + b * 0.75} {y0 - 90},"
            f"{x0 + a * 0.75} {y0 - 90},{x0 + a * 0.75} {y0}))"))
        layer.CreateFeature(feat)
    ds = None
    labelme_dir = tmp_path / "lm"
    labelme_dir.mkdir()
    labelme.write_labelme(str(labelme_dir / f"{rec['tile_id']}.json"), labelme.labelme_document(
        [labelme.labelme_shape("__ignore__", [(10, 10), (50, 20)], "rectangle")], "x.jpg", 256, 256))
    results = run_alg("rasterizelabels", {
        "TILES": index, "VECTOR": layer_path, "CLASS_FIELD": "kind", "CLASSES": "gully=1,dam_land=2",
        "LABELME_DIR": str(labelme_dir)})
    mask = array(os.path.join(results["OUTPUT_DIR"], f"{rec['tile_id']}.tif"))
    expected = np.zeros((256, 256), dtype=np.uint8)
    expected[0:120, 0:30] = 1
    expected[0:120, 30:60] = 2
    expected[10:20, 10:50] = 255
    assert np.array_equal(mask, expected)
    frac = next(r for r in dataset.read_index(index)[0] if r["tile_id"] == rec["tile_id"])["gully_frac"]
    assert frac == pytest.approx((expected == 1).sum() / (expected != 255).sum(), abs=1e-6)


def test_strict_and_non_strict_through_processing(scene, tmp_path, run_alg):
    from qgis.core import QgsProcessingException

    index = make_dataset(scene, tmp_path / "ds")
    ids = [r["tile_id"] for r in dataset.read_index(index)[0]]
    lm = os.path.join(os.path.dirname(index), "labelme")
    os.makedirs(lm)
    good = labelme.labelme_document([labelme.labelme_shape("gully", [(0, 0), (16, 16)], "rectangle")], "a.jpg",
                                    256, 256)
    labelme.write_labelme(os.path.join(lm, f"{ids[0]}.json"), good)
    labelme.write_labelme(os.path.join(lm, f"{ids[1]}.json"), labelme.labelme_document(
        [labelme.labelme_shape("Gully", [(1, 1), (9, 1), (9, 9)])], "b.jpg", 256, 256))
    report = str(tmp_path / "report.csv")
    with pytest.raises(QgsProcessingException, match="'Gully'"):
        run_alg("rasterizelabels", {"TILES": index, "OUTPUT_REPORT": report})
    assert not os.path.isdir(os.path.join(os.path.dirname(index), "masks"))
    assert [r["severity"] for r in csv.DictReader(open(report))] == ["error"]
    results = run_alg("rasterizelabels", {"TILES": index, "STRICT": False, "OUTPUT_REPORT": report})
    assert results["MASK_COUNT"] == 1 and results["PROBLEM_COUNT"] == 1 and results["SKIPPED_FILES"] == 1
    results = run_alg("rasterizelabels", {"TILES": index, "UNKNOWN_LABELS": 1, "OVERWRITE": True})
    assert results["MASK_COUNT"] == 2 and results["ERROR_COUNT"] == 0 and results["PROBLEM_COUNT"] == 1


def test_qgis_process_with_labels_txt(scene, tmp_path, qgis_process):
    """The command line: export, then rasterise with a labels.txt as the class map."""
    index = make_dataset(scene, tmp_path / "ds")
    out = qgis_process("gullyseg:exportlabelme", {"TILES": index, "PREFILL": gullies(scene)})
    assert out["results"]["JSON_COUNT"] == 4
    labels_txt = out["results"]["LABELS_FILE"]
    out = qgis_process("gullyseg:rasterizelabels", {"TILES": index, "CLASSES": labels_txt,
                                                    "OUTPUT_REPORT": str(tmp_path / "r.json")})
    assert out["results"]["MASK_COUNT"] == 4 and out["results"]["PROBLEM_COUNT"] == 0
    assert json.load(open(tmp_path / "r.json")) == []
    records, _ = dataset.read_index(index)
    for rec in records:
        mask = gdal.Open(os.path.join(os.path.dirname(index), rec["mask"]))
        tile = gdal.Open(os.path.join(os.path.dirname(index), rec["image_tif"]))
        assert mask.GetGeoTransform() == tile.GetGeoTransform()
        assert rec["gully_frac"] == pytest.approx(float((mask.ReadAsArray() == 1).mean()), abs=1e-6)


def test_in_a_model(scene, tmp_path, provider):
    """A graphical model chains exportlabelme (prefilled) -> rasterizelabels on a dataset's index."""
    from qgis import processing
    from qgis.core import (
        QgsProcessingContext,
        QgsProcessingFeedback,
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildDependency,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelParameter,
        QgsProcessingParameterFeatureSource,
        QgsProcessingParameterVectorLayer,
        QgsProject,
    )

    from gullyseg import compat

    index = make_dataset(scene, tmp_path / "ds")
    source = QgsProcessingModelChildParameterSource
    model = QgsProcessingModelAlgorithm("labels_model", "tests")
    model.addModelParameter(QgsProcessingParameterVectorLayer("tiles", "Tiles", [compat.TYPE_VECTOR_POLYGON]),
                            QgsProcessingModelParameter("tiles"))
    model.addModelParameter(QgsProcessingParameterFeatureSource("polygons", "Polygons", [compat.TYPE_VECTOR_POLYGON]),
                            QgsProcessingModelParameter("polygons"))
    export = QgsProcessingModelChildAlgorithm("gullyseg:exportlabelme")
    export.setChildId("export")
    export.addParameterSources("TILES", [source.fromModelParameter("tiles")])
    export.addParameterSources("PREFILL", [source.fromModelParameter("polygons")])
    model.addChildAlgorithm(export)
    masks = QgsProcessingModelChildAlgorithm("gullyseg:rasterizelabels")
    masks.setChildId("masks")
    masks.addParameterSources("TILES", [source.fromModelParameter("tiles")])
    masks.addParameterSources("ALL_TOUCHED", [source.fromStaticValue(False)])
    masks.setDependencies([QgsProcessingModelChildDependency("export")])
    model.addChildAlgorithm(masks)
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())

    class Recorder(QgsProcessingFeedback):
        errors = []

        def reportError(self, error, fatalError=False):  # noqa: N802, N803 (QGIS names)
            self.errors.append(error)

    feedback = Recorder()
    try:
        processing.run(model, {"tiles": index, "polygons": gullies(scene)}, feedback=feedback, context=context)
    except Exception:  # noqa: BLE001 (any failure of the model fails the test, with its errors)
        pytest.fail("model failed: " + " | ".join(feedback.errors))
    root = os.path.dirname(index)
    assert len([n for n in os.listdir(os.path.join(root, "labelme")) if n.endswith(".json")]) == 4
    records = dataset.read_index(index)[0]
    assert all(r["mask"] and r["labelme"] for r in records)
    assert sum(array(os.path.join(root, r["mask"])).sum() for r in records) > 1000
