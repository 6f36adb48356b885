"""gullyseg:gridtiles through Processing (processing.run, a graphical model, batch-style string
parameters) and through the real command line (qgis_process.bin)."""

import os

import numpy as np
import pytest
from osgeo import gdal, ogr, osr
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsGeometry,
    QgsProcessingException,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelParameter,
    QgsProcessingParameterRasterLayer,
    QgsRasterLayer,
    QgsVectorLayer,
)

from gullyseg.processing.engine import dataset


def _aoi_4326(scene, tmp_path):
    """A GeoPackage polygon in EPSG:4326 over the upper-left part of the (UTM) scene."""
    ds = gdal.Open(str(scene))
    gt = ds.GetGeoTransform()
    src = ds.GetSpatialRef()
    dst = osr.SpatialReference()
    dst.ImportFromEPSG(4326)
    dst.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    src.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    ct = osr.CoordinateTransformation(src, dst)
    px = [(20, 20), (300, 40), (60, 330)]  # a triangle in scene pixels
    pts = [ct.TransformPoint(gt[0] + x * gt[1], gt[3] + y * gt[5])[:2] for x, y in px]
    wkt = "POLYGON((" + ",".join(f"{x} {y}" for x, y in pts + pts[:1]) + "))"
    path = str(tmp_path / "aoi_4326.gpkg")
    out = ogr.GetDriverByName("GPKG").CreateDataSource(path)
    layer = out.CreateLayer("aoi", dst, ogr.wkbPolygon)
    feat = ogr.Feature(layer.GetLayerDefn())
    feat.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
    layer.CreateFeature(feat)
    out = None
    return path


def test_processing_run_default_parameters(run_alg, scene_factory, tmp_path):
    scene = scene_factory("bgrn", bands="bgrn", nodata_edge=True, width=600, height=520)
    res = run_alg("gridtiles", {"INPUT": str(scene), "OUTPUT_DIR": str(tmp_path / "ds")})
    assert res["OUTPUT_DIR"] == str(tmp_path / "ds")
    assert res["OUTPUT_INDEX"] == str(tmp_path / "ds" / "index.gpkg")
    records, _ = dataset.read_index(res["OUTPUT_INDEX"])
    assert res["TILE_COUNT"] == len(records) and res["TILE_COUNT"] + res["SKIPPED_COUNT"] == 9
    for rec in records:  # default FORMAT: both
        tif = gdal.Open(os.path.join(res["OUTPUT_DIR"], rec["image_tif"]))
        ref = gdal.Translate("/vsimem/r.tif", str(scene), srcWin=[rec["x_off"], rec["y_off"], 256, 256])
        np.testing.assert_array_equal(tif.ReadAsArray(), ref.ReadAsArray())
        # JPEG opens in QGIS at the tile's place
        layer = QgsRasterLayer(os.path.join(res["OUTPUT_DIR"], rec["image_jpg"]), "jpg", "gdal")
        assert layer.isValid() and layer.crs().authid() == "EPSG:32606"
        xmin, ymin, xmax, ymax = rec["bounds"]
        ext = layer.extent()
        assert (ext.xMinimum(), ext.yMinimum(), ext.xMaximum(), ext.yMaximum()) == pytest.approx(
            (xmin, ymin, xmax, ymax), abs=1e-6)
    card = dataset.read_card(tmp_path / "ds")
    assert card["tiling"]["tile_count"] == res["TILE_COUNT"]


def test_aoi_in_epsg4326(run_alg, scene_factory, tmp_path):
    """Only tiles intersecting a WGS 84 polygon are written; reference: QGIS's native extractbylocation."""
    from qgis import processing

    scene = scene_factory("rgb", width=512, height=512)
    aoi = _aoi_4326(scene, tmp_path)
    full = run_alg("gridtiles", {"INPUT": str(scene), "TILE_SIZE": 128, "FORMAT": 0,
                                 "OUTPUT_DIR": str(tmp_path / "full")})
    part = run_alg("gridtiles", {"INPUT": str(scene), "TILE_SIZE": 128, "FORMAT": 0, "AOI": aoi,
                                 "OUTPUT_DIR": str(tmp_path / "part")})
    ref = processing.run("native:extractbylocation", {
        "INPUT": full["OUTPUT_INDEX"], "PREDICATE": [0], "INTERSECT": aoi, "OUTPUT": "memory:"})["OUTPUT"]
    expected = {f["tile_id"] for f in ref.getFeatures()}
    got = {r["tile_id"] for r in dataset.read_index(part["OUTPUT_INDEX"])[0]}
    assert got == expected and 0 < len(got) < 16
    assert part["SKIPPED_COUNT"] == 16 - len(got)


def test_aoi_memory_layer_and_string_parameters(run_alg, scene_factory, tmp_path):
    """Batch-style values (strings) and an in-memory AOI layer in another CRS."""
    scene = scene_factory("rgb", width=512, height=512)
    ds = gdal.Open(str(scene))
    gt = ds.GetGeoTransform()
    layer = QgsVectorLayer("Polygon?crs=EPSG:32606", "aoi", "memory")
    feat = QgsFeature()
    x, y = gt[0] + 300 * gt[1], gt[3] + 300 * gt[5]
    feat.setGeometry(QgsGeometry.fromWkt(f"POLYGON(({x} {y},{x + 10} {y},{x + 10} {y - 10},{x} {y}))"))
    layer.dataProvider().addFeatures([feat])
    res = run_alg("gridtiles", {"INPUT": str(scene), "TILE_SIZE": "256", "STRIDE": "0", "EDGE": "1",
                                "MAX_NODATA": "0.5", "FORMAT": "0", "AOI": layer, "OVERWRITE": "false",
                                "OUTPUT_DIR": str(tmp_path / "ds")})
    assert res["TILE_COUNT"] == 1 and res["SKIPPED_COUNT"] == 3
    assert os.listdir(tmp_path / "ds" / "images") == [f"{os.path.splitext(scene.name)[0]}_r0001_c0001.tif"]


def test_errors_become_processing_exceptions(run_alg, tmp_path):
    bad = tmp_path / "geo.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(bad), 300, 300, 1, gdal.GDT_Byte)
    ds.SetGeoTransform((100, 0.001, 0, 40, 0, -0.001))
    ds.SetProjection(QgsCoordinateReferenceSystem("EPSG:4326").toWkt())
    ds = None
    with pytest.raises(QgsProcessingException):
        run_alg("gridtiles", {"INPUT": str(bad), "OUTPUT_DIR": str(tmp_path / "ds")})
    assert not (tmp_path / "ds").exists()


def test_in_a_graphical_model(provider, scene_factory, tmp_path):
    from qgis import processing

    model = QgsProcessingModelAlgorithm("tiles", "test")
    model.addModelParameter(QgsProcessingParameterRasterLayer("scene", "scene"),
                            QgsProcessingModelParameter("scene"))
    child = QgsProcessingModelChildAlgorithm("gullyseg:gridtiles")
    child.setChildId("grid")
    child.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("scene")])
    child.addParameterSources("TILE_SIZE", [QgsProcessingModelChildParameterSource.fromStaticValue(128)])
    child.addParameterSources("FORMAT", [QgsProcessingModelChildParameterSource.fromStaticValue(0)])
    child.addParameterSources("OUTPUT_DIR", [QgsProcessingModelChildParameterSource.fromStaticValue(
        str(tmp_path / "model_ds"))])
    model.addChildAlgorithm(child)
    assert model.childAlgorithm("grid").algorithm() is not None
    res = processing.run(model, {"scene": str(scene_factory("rgb", width=512, height=512))})
    assert res is not None
    assert len(list((tmp_path / "model_ds" / "images").glob("*.tif"))) == 16
    assert (tmp_path / "model_ds" / "index.gpkg").exists()


def test_index_stays_in_the_dataset_folder_when_a_model_chains_it(provider, scene_factory, tmp_path):
    """A model wiring OUTPUT_INDEX into a later step gets a temporary index path from QGIS; the index
    must still be written as <dataset>/index.gpkg, where its relative image paths resolve."""
    from qgis import processing

    model = QgsProcessingModelAlgorithm("tiles_then_labelme", "test")
    model.addModelParameter(QgsProcessingParameterRasterLayer("scene", "scene"),
                            QgsProcessingModelParameter("scene"))
    grid = QgsProcessingModelChildAlgorithm("gullyseg:gridtiles")
    grid.setChildId("grid")
    grid.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("scene")])
    grid.addParameterSources("FORMAT", [QgsProcessingModelChildParameterSource.fromStaticValue(2)])
    grid.addParameterSources("OUTPUT_DIR", [QgsProcessingModelChildParameterSource.fromStaticValue(
        str(tmp_path / "chained"))])
    model.addChildAlgorithm(grid)
    export = QgsProcessingModelChildAlgorithm("gullyseg:exportlabelme")
    export.setChildId("export")
    export.addParameterSources(
        "TILES", [QgsProcessingModelChildParameterSource.fromChildOutput("grid", "OUTPUT_INDEX")])
    export.addParameterSources("ONLY_KEPT", [QgsProcessingModelChildParameterSource.fromStaticValue(False)])
    model.addChildAlgorithm(export)
    res = processing.run(model, {"scene": str(scene_factory("rgb", width=512, height=512))})
    assert res is not None
    assert (tmp_path / "chained" / "index.gpkg").exists()
    assert len(list((tmp_path / "chained" / "labelme").glob("*.json"))) == 4


def test_qgis_process(qgis_process, scene_factory, tmp_path):
    scene = scene_factory("bgrn", bands="bgrn", nodata_edge=True, width=600, height=520)
    out = tmp_path / "cli_ds"
    res = qgis_process("gullyseg:gridtiles", {
        "INPUT": str(scene), "TILE_SIZE": 256, "STRIDE": 0, "EDGE": 2, "MAX_NODATA": 0.999, "FORMAT": 2,
        "JPEG_BANDS": "3,2,1", "OUTPUT_DIR": str(out),
    })["results"]
    assert int(res["TILE_COUNT"]) == 9 and int(res["SKIPPED_COUNT"]) == 0  # shift: 3 x 3 full tiles
    assert res["OUTPUT_INDEX"] == str(out / "index.gpkg")
    records, _ = dataset.read_index(res["OUTPUT_INDEX"])
    assert sorted({r["x_off"] for r in records}) == [0, 256, 600 - 256]
    for rec in records:
        tif = gdal.Open(str(out / rec["image_tif"]))
        ref = gdal.Translate("/vsimem/q.tif", str(scene), srcWin=[rec["x_off"], rec["y_off"], 256, 256])
        np.testing.assert_array_equal(tif.ReadAsArray(), ref.ReadAsArray())
        assert gdal.Open(str(out / rec["image_jpg"])).GetGeoTransform() == pytest.approx(tif.GetGeoTransform())
    # a second run into the same folder is refused without OVERWRITE, accepted with it
    done = qgis_process("gullyseg:gridtiles", {"INPUT": str(scene), "OUTPUT_DIR": str(out)}, expect_ok=False)
    assert done.returncode != 0 and "OVERWRITE" in (done.stdout + done.stderr)
    res = qgis_process("gullyseg:gridtiles", {"INPUT": str(scene), "FORMAT": 0, "OVERWRITE": True,
                                              "OUTPUT_DIR": str(out)})["results"]
    assert not list((out / "images").glob("*.jpg"))
