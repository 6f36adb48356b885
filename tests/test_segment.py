"""gullyseg:segment and gullyseg:setmodelmetadata through processing.run and qgis_process; polygons."""

import json
import subprocess
import threading

import numpy as np
import onnx_models as om
import pytest
from osgeo import gdal, ogr

from gullyseg.processing.engine import inference
from gullyseg.processing.engine.errors import GullySegError


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("segmodels")
    return om.make_fcn_model(d / "fcn.onnx", layers=2, hidden=8, seed=11,
                             metadata={"class_names": {0: "gully"}, "seg_thresh": 0.45})


def _read(path):
    ds = gdal.Open(str(path))  # keep the dataset alive while its band is read (GDAL 3.6 bindings)
    return ds.GetRasterBand(1).ReadAsArray()


def test_processing_run_with_mask_layer_in_another_crs(run_alg, scene_factory, model, tmp_path):
    from qgis.core import (
        Qgis,
        QgsCoordinateReferenceSystem,
        QgsCoordinateTransform,
        QgsFeature,
        QgsGeometry,
        QgsProject,
        QgsVectorLayer,
    )

    scene = scene_factory("segalg", width=640, height=512, seed=13, nodata_edge=True)
    gt = gdal.Open(str(scene)).GetGeoTransform()
    x0, y0 = gt[0], gt[3]
    wkt = (f"POLYGON(({x0 + 30.2} {y0 - 20.7},{x0 + 400.1} {y0 - 60.3},{x0 + 350.6} {y0 - 330.2},"
           f"{x0 + 60.9} {y0 - 300.8},{x0 + 30.2} {y0 - 20.7}))")
    # the same polygon in EPSG:4326, as a memory layer
    layer = QgsVectorLayer("Polygon?crs=EPSG:4326", "area", "memory")
    geom = QgsGeometry.fromWkt(wkt)
    assert geom.transform(QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:32606"),
                                                 QgsCoordinateReferenceSystem("EPSG:4326"),
                                                 QgsProject.instance())) == Qgis.GeometryOperationResult.Success
    feat = QgsFeature()
    feat.setGeometry(geom)
    layer.dataProvider().addFeatures([feat])
    results = run_alg("segment", {
        "INPUT": str(scene), "MODEL": model, "MASK_LAYER": layer, "TTA": 1, "BATCH_SIZE": 4,
        "OUTPUT_PROBABILITY": str(tmp_path / "p.tif"), "OUTPUT_MASK": str(tmp_path / "m.tif"),
        "OUTPUT_POLYGONS": str(tmp_path / "g.gpkg"), "MIN_AREA": 2.0,
    })
    # the engine run with the polygon in the raster's CRS gives the same pixels
    ref = inference.segment_raster(str(scene), model, output_probability=str(tmp_path / "ref_p.tif"),
                                   output_mask=str(tmp_path / "ref_m.tif"), mask_wkts=[wkt], tta=1)
    np.testing.assert_array_equal(_read(tmp_path / "p.tif"), _read(tmp_path / "ref_p.tif"))
    np.testing.assert_array_equal(_read(tmp_path / "m.tif"), _read(tmp_path / "ref_m.tif"))
    assert results["PIXELS_PROCESSED"] == ref["pixels_processed"] > 0
    assert results["GULLY_AREA_M2"] == pytest.approx(ref["gully_area_m2"])
    assert results["PROVIDER"] == ref["provider"]
    # THRESHOLD -1 = the model's seg_thresh (0.45)
    prob, mask = _read(tmp_path / "p.tif"), _read(tmp_path / "m.tif")
    ok = prob != 255
    assert set(np.unique(mask[ok])) <= {0, 1}
    assert mask[ok & (prob >= 116)].min() == 1 and mask[ok & (prob <= 113)].max() == 0  # 0.45 * 254 = 114.3


def test_polygons_match_the_mask(scene_factory, model, tmp_path, gdal_tool):
    scene = scene_factory("segalg", width=640, height=512, seed=13, nodata_edge=True)
    inference.segment_raster(str(scene), model, output_probability=str(tmp_path / "p0.tif"))
    p0 = _read(tmp_path / "p0.tif")
    thr = float(np.percentile(p0[p0 != 255], 85)) / 254 + 0.5 / 254  # ~15 % gully pixels, many polygons
    res = inference.segment_raster(str(scene), model, output_probability=str(tmp_path / "p.tif"),
                                   output_mask=str(tmp_path / "m.tif"), output_polygons=str(tmp_path / "g.gpkg"),
                                   threshold=thr, min_area=0)
    mask, prob = _read(tmp_path / "m.tif"), _read(tmp_path / "p.tif")
    assert res["polygons"] > 3
    ds = ogr.Open(str(tmp_path / "g.gpkg"))
    lyr = ds.GetLayer(0)
    assert lyr.GetName() == "g"
    assert [lyr.GetLayerDefn().GetFieldDefn(i).GetName() for i in range(3)] == ["area_m2", "perimeter_m", "mean_prob"]
    areas = {f.GetFID(): (f["area_m2"], f["perimeter_m"], f["mean_prob"], f.GetGeometryRef().Clone()) for f in lyr}
    assert len(areas) == res["polygons"]
    # rasterising the polygons with gdal_rasterize (fid as value) gives back the mask's gully pixels
    src = gdal.Open(str(tmp_path / "m.tif"))
    gt = src.GetGeoTransform()
    w, h = src.RasterXSize, src.RasterYSize
    labels = tmp_path / "labels.tif"
    subprocess.run([gdal_tool("gdal_rasterize"), "-q", "-sql", "SELECT fid * 1 AS label, geom FROM g", "-a", "label",
                    "-ot", "Int32", "-init", "0", "-te", str(gt[0]),
                    str(gt[3] + h * gt[5]), str(gt[0] + w * gt[1]), str(gt[3]), "-ts", str(w), str(h),
                    str(tmp_path / "g.gpkg"), str(labels)], check=True)
    lab = _read(labels)
    np.testing.assert_array_equal(lab > 0, mask == 1)
    pixel_area = abs(gt[1] * gt[5])
    counts = np.bincount(lab.ravel())
    sums = np.bincount(lab.ravel(), weights=prob.ravel().astype(np.float64))
    for fid, (area, perim, mean, geom) in areas.items():
        assert area == pytest.approx(counts[fid] * pixel_area)
        assert mean == pytest.approx(sums[fid] / counts[fid] / 254.0, abs=1e-9)
        assert perim == pytest.approx(geom.Boundary().Length()) and perim >= 4 * 0.75
        assert mean >= thr - 1 / 254
    assert sum(a for a, *_ in areas.values()) == pytest.approx(res["gully_area_m2"])
    # MIN_AREA drops exactly the small ones; SIMPLIFY keeps valid, simpler outlines
    inference.segment_raster(str(scene), model, output_polygons=str(tmp_path / "big.gpkg"), threshold=thr,
                             min_area=5.0, simplify=0.75)
    big_ds = ogr.Open(str(tmp_path / "big.gpkg"))
    big = [f for f in big_ds.GetLayer(0)]
    assert len(big) == sum(1 for a, *_ in areas.values() if a >= 5.0)
    assert all(f.GetGeometryRef().IsValid() for f in big)
    assert not list(tmp_path.glob(".*"))  # no temporary probability/mask left behind


def test_geographic_crs_refused(tmp_path, model):
    path = tmp_path / "geo.tif"
    gdal.Translate(str(path), gdal.GetDriverByName("MEM").Create("", 300, 300, 3, gdal.GDT_Byte),
                   outputSRS="EPSG:4326", outputBounds=[-150, 62, -149.99, 61.99])
    with pytest.raises(GullySegError, match="geographic"):
        inference.segment_raster(str(path), model, output_mask=str(tmp_path / "m.tif"))
    assert not (tmp_path / "m.tif").exists()


def test_extent_parameter(run_alg, scene_factory, model, tmp_path):
    scene = scene_factory("segalg", width=640, height=512, seed=13, nodata_edge=True)
    gt = gdal.Open(str(scene)).GetGeoTransform()
    xmin, xmax = gt[0] + 100 * 0.75, gt[0] + 400 * 0.75
    ymax, ymin = gt[3] - 50 * 0.75, gt[3] - 350 * 0.75
    run_alg("segment", {"INPUT": str(scene), "MODEL": model,
                        "EXTENT": f"{xmin},{xmax},{ymin},{ymax} [EPSG:32606]",
                        "OUTPUT_PROBABILITY": str(tmp_path / "p.tif"), "OUTPUT_MASK": str(tmp_path / "m.tif")})
    ds = gdal.Open(str(tmp_path / "p.tif"))
    assert (ds.RasterXSize, ds.RasterYSize) == (300, 300)
    assert ds.GetGeoTransform()[0] == pytest.approx(xmin) and ds.GetGeoTransform()[3] == pytest.approx(ymax)


def test_compression_parameter(run_alg, scene_factory, model, tmp_path):
    """COMPRESSION (advanced) picks the GeoTIFF codec; the pixels are the same whatever the codec."""
    scene = scene_factory("segalg", width=640, height=512, seed=13, nodata_edge=True)
    from gullyseg.processing.algorithms.segment import SegmentAlgorithm

    labels = [name for name, _ in SegmentAlgorithm.COMPRESSION_OPTIONS]
    assert labels[0] == "DEFLATE"  # the default: any GIS software reads it
    outputs = {}
    for index, name in enumerate(labels):
        out = tmp_path / name
        out.mkdir()
        run_alg("segment", {"INPUT": str(scene), "MODEL": model, "COMPRESSION": index,
                            "OUTPUT_PROBABILITY": str(out / "p.tif"), "OUTPUT_MASK": str(out / "m.tif")})
        for kind in ("p", "m"):
            ds = gdal.Open(str(out / f"{kind}.tif"))
            assert ds.GetMetadata("IMAGE_STRUCTURE").get("COMPRESSION", "NONE") == name
        outputs[name] = (_read(out / "p.tif"), _read(out / "m.tif"))
    for name in labels[1:]:
        for a, b in zip(outputs["DEFLATE"], outputs[name]):
            np.testing.assert_array_equal(a, b)


def test_unknown_compression_refused_before_any_output(scene_factory, model, tmp_path):
    scene = scene_factory("segalg", width=640, height=512, seed=13, nodata_edge=True)
    with pytest.raises(GullySegError, match="COMPRESSION must be one of DEFLATE, ZSTD, LZW, NONE"):
        inference.segment_raster(str(scene), model, output_probability=str(tmp_path / "p.tif"), compression="JPEG")
    assert list(tmp_path.iterdir()) == []


def test_cancel_through_processing(run_alg, scene_factory, tmp_path):
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    scene = scene_factory("segalg", width=640, height=512, seed=13, nodata_edge=True)
    slow = om.make_slow_model(tmp_path / "slow.onnx")
    feedback = QgsProcessingFeedback()
    threading.Timer(1.0, feedback.cancel).start()
    out = tmp_path / "out"
    with pytest.raises(QgsProcessingException):
        run_alg("segment", {"INPUT": str(scene), "MODEL": str(slow), "OUTPUT_PROBABILITY": str(out / "p.tif"),
                            "OUTPUT_MASK": str(out / "m.tif")}, feedback=feedback)
    assert not out.exists() or not list(out.iterdir())


def test_setmodelmetadata_in_place(run_alg, tmp_path):
    path = om.make_fcn_model(tmp_path / "m.onnx")
    results = run_alg("setmodelmetadata", {"MODEL": path, "RESOLUTION": 75, "ACTIVATION": 0, "INPUT_MAX": 1023,
                                           "BANDS": "3,2,1", "CLASS_NAMES": "gully"})
    meta = om.read_metadata(path)
    assert json.loads(meta["resolution"]) == 75
    assert json.loads(meta["gullyseg"]) == {"input_max": 1023, "bands": [3, 2, 1]}
    assert json.loads(results["METADATA"]) == meta
    assert results["OUTPUT_MODEL"] == path


def test_qgis_process(qgis_process, scene_factory, model, tmp_path):
    scene = scene_factory("segalg", width=640, height=512, seed=13, nodata_edge=True)
    out = qgis_process("gullyseg:segment", {
        "INPUT": str(scene), "MODEL": model, "BANDS": "1,2,3", "TTA": 0,
        "OUTPUT_PROBABILITY": str(tmp_path / "p.tif"), "OUTPUT_MASK": str(tmp_path / "m.tif"),
        "OUTPUT_POLYGONS": str(tmp_path / "g.gpkg"),
    })
    res = out["results"]
    assert res["PROVIDER"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    mask = _read(tmp_path / "m.tif")
    assert res["PIXELS_PROCESSED"] == int((mask != 255).sum())
    assert res["GULLY_AREA_M2"] == pytest.approx((mask == 1).sum() * 0.5625)
    gds = ogr.Open(str(tmp_path / "g.gpkg"))
    assert gds.GetLayer(0).GetFeatureCount() == res["POLYGON_COUNT"]
    meta = qgis_process("gullyseg:setmodelmetadata", {"MODEL": model, "RESOLUTION": 75,
                                                      "OUTPUT_MODEL": str(tmp_path / "copy.onnx")})
    assert json.loads(om.read_metadata(tmp_path / "copy.onnx")["resolution"]) == 75
    assert "resolution" in json.loads(meta["results"]["METADATA"])


def test_in_a_graphical_model(provider, scene_factory, model, tmp_path):
    """segment as a child of a QgsProcessingModelAlgorithm (what the Modeler builds): model
    parameters feed INPUT and MODEL, its outputs are model outputs, and the pixels are those of a
    direct engine run."""
    from qgis import processing
    from qgis.core import (
        QgsApplication,
        QgsProcessingContext,
        QgsProcessingFeedback,
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterFile,
        QgsProcessingParameterRasterLayer,
        QgsProject,
    )

    scene = scene_factory("segmodel", width=640, height=512, seed=17, nodata_edge=True)
    src = QgsProcessingModelChildParameterSource
    graph = QgsProcessingModelAlgorithm("segment_in_a_model", "tests")
    for definition in (QgsProcessingParameterRasterLayer("scene", "Scene"),
                       QgsProcessingParameterFile("onnx", "Model", extension="onnx")):
        graph.addModelParameter(definition, QgsProcessingModelParameter(definition.name()))
    child = QgsProcessingModelChildAlgorithm("gullyseg:segment")
    child.setChildId("segment")
    child.addParameterSources("INPUT", [src.fromModelParameter("scene")])
    child.addParameterSources("MODEL", [src.fromModelParameter("onnx")])
    outputs = {}
    for name, child_output in (("probability", "OUTPUT_PROBABILITY"), ("mask", "OUTPUT_MASK")):
        out = QgsProcessingModelOutput(name, name)
        out.setChildId("segment")
        out.setChildOutputName(child_output)
        outputs[name] = out
    child.setModelOutputs(outputs)
    alg = QgsApplication.processingRegistry().algorithmById("gullyseg:segment")
    for definition in alg.parameterDefinitions():  # the rest at their defaults, as the Modeler sets them
        if not definition.isDestination() and definition.name() not in child.parameterSources() \
                and definition.defaultValue() is not None:
            child.addParameterSources(definition.name(), [src.fromStaticValue(definition.defaultValue())])
    graph.addChildAlgorithm(child)
    graph.updateDestinationParameters()
    ok, problems = graph.validate()
    assert ok, problems

    # the model's own parameter names for its outputs: "segment:mask" on QGIS 3.22, "mask" (the output's
    # name) from 3.2x on; a value under the other name is no value ("Incorrect parameter value for mask")
    names = {d.description(): d.name() for d in graph.destinationParameterDefinitions()}
    assert sorted(names) == ["mask", "probability"], names

    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    res = processing.run(graph, {"scene": str(scene), "onnx": model, names["probability"]: str(tmp_path / "p.tif"),
                                 names["mask"]: str(tmp_path / "m.tif")},
                         feedback=QgsProcessingFeedback(), context=context)
    assert res[names["probability"]] == str(tmp_path / "p.tif")
    inference.segment_raster(str(scene), model, output_probability=str(tmp_path / "direct_p.tif"),
                             output_mask=str(tmp_path / "direct_m.tif"))
    for kind in ("p", "m"):
        np.testing.assert_array_equal(_read(tmp_path / f"{kind}.tif"), _read(tmp_path / f"direct_{kind}.tif"))


def test_optional_parameters_default_to_the_model_and_accept_minus_one(run_alg, scene_factory, tmp_path):
    """OVERLAP, THRESHOLD, CONTEXT_MARGIN and MIN_AREA show no -1 sentinel (empty = from model metadata);
    -1 from older scripts still means that. The default MIN_AREA drops 1-3 pixel specks."""
    from gullyseg.processing.algorithms.segment import SegmentAlgorithm

    alg = SegmentAlgorithm()
    alg.initAlgorithm()
    for name in ("OVERLAP", "THRESHOLD", "CONTEXT_MARGIN", "MIN_AREA"):
        param = alg.parameterDefinition(name)
        assert param.defaultValue() is None and "-1" not in param.description(), name
        assert "empty" in param.description(), name
    assert "empty = from model metadata" in alg.shortHelpString() and "4 pixels" in alg.shortHelpString()
    scene = scene_factory("segalg", width=640, height=512, seed=13, nodata_edge=True)
    path = om.make_fcn_model(tmp_path / "m.onnx", layers=3, seed=4,
                             metadata={"seg_thresh": 0.3, "tiles_overlap": 25, "gullyseg": {"context_margin": 8}})
    runs = {}
    for name, extra in (("empty", {}), ("minus1", {"OVERLAP": -1, "THRESHOLD": -1, "CONTEXT_MARGIN": -1}),
                        ("explicit", {"OVERLAP": 64, "THRESHOLD": 0.3, "CONTEXT_MARGIN": 8})):
        runs[name] = run_alg("segment", {"INPUT": str(scene), "MODEL": path, **extra,
                                         "OUTPUT_PROBABILITY": str(tmp_path / f"{name}_p.tif"),
                                         "OUTPUT_MASK": str(tmp_path / f"{name}_m.tif")})
    for name in ("minus1", "explicit"):
        for kind in "pm":
            np.testing.assert_array_equal(_read(tmp_path / f"{name}_{kind}.tif"), _read(tmp_path / f"empty_{kind}.tif"))
    direct = inference.segment_raster(str(scene), path, output_probability=str(tmp_path / "d.tif"), context_margin=8)
    np.testing.assert_array_equal(_read(tmp_path / "d.tif"), _read(tmp_path / "empty_p.tif"))
    assert direct["overlap"] == 64 and direct["threshold"] == pytest.approx(0.3) and direct["context_margin"] == 8
    zero = inference.segment_raster(str(scene), path, output_probability=str(tmp_path / "z.tif"), context_margin=0)
    assert zero["context_margin"] == 0
    assert (_read(tmp_path / "z.tif") != _read(tmp_path / "d.tif")).any()  # the margin changed something


def test_default_min_area_drops_specks(scene_factory, model, tmp_path):
    scene = scene_factory("segalg", width=640, height=512, seed=13, nodata_edge=True)
    inference.segment_raster(str(scene), model, output_probability=str(tmp_path / "p0.tif"))
    p0 = _read(tmp_path / "p0.tif")
    thr = float(np.percentile(p0[p0 != 255], 85)) / 254 + 0.5 / 254
    counts = {}
    for name, min_area in (("all", 0), ("default", None)):
        res = inference.segment_raster(str(scene), model, output_polygons=str(tmp_path / f"{name}.gpkg"),
                                       threshold=thr, min_area=min_area)
        ds = ogr.Open(str(tmp_path / f"{name}.gpkg"))
        counts[name] = sorted(f["area_m2"] for f in ds.GetLayer(0))
        assert res["polygons"] == len(counts[name])
    pixel = 0.75 * 0.75
    assert [a for a in counts["all"] if a >= 4 * pixel - 1e-9] == counts["default"]
    assert len(counts["default"]) < len(counts["all"])  # there were specks to drop


def test_setmodelmetadata_context_margin_and_gully_output(run_alg, tmp_path):
    path = om.make_two_head_model(tmp_path / "heads.onnx")
    results = run_alg("setmodelmetadata", {"MODEL": path, "CONTEXT_MARGIN": 6, "GULLY_OUTPUT": "1",
                                           "CLASS_NAMES": "edge | background,gully"})
    meta = om.read_metadata(path)
    assert json.loads(meta["gullyseg"]) == {"context_margin": 6, "gully_output": 1}
    assert json.loads(results["METADATA"]) == meta
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match="context_margin=200 leaves no core"):
        run_alg("setmodelmetadata", {"MODEL": path, "CONTEXT_MARGIN": 200})
    assert om.read_metadata(path) == meta


def test_polygon_attributes_on_a_hand_made_mask(tmp_path):
    """Holes, diagonal neighbours (separate polygons, 4-connected), the raster edge, nodata in the
    probability: area, perimeter and mean_prob equal those computed from the geometry and pixels."""
    import rasters

    from gullyseg.processing.engine import polygonize

    mask = np.zeros((40, 50), np.uint8)
    mask[5:15, 5:15] = 1
    mask[8:11, 8:11] = 0  # a hole
    mask[9, 9] = 1  # an island in the hole
    mask[20, 20] = mask[21, 21] = 1  # diagonal neighbours: two polygons
    mask[30:40, 40:50] = 1  # at the raster's corner
    mask[0, :] = 255  # nodata row
    prob = np.full(mask.shape, 100, np.uint8)
    prob[5:15, 5:15] = np.arange(100, dtype=np.uint8).reshape(10, 10) + 150
    prob[30, 40] = 255  # nodata inside a polygon: left out of its mean
    rasters.write_raster(tmp_path / "m.tif", mask[None], nodata=255)
    rasters.write_raster(tmp_path / "p.tif", prob[None], nodata=255)
    n = polygonize.polygonize(str(tmp_path / "m.tif"), str(tmp_path / "p.tif"), str(tmp_path / "g.gpkg"))
    assert n == 5
    ds = ogr.Open(str(tmp_path / "g.gpkg"))
    lyr = ds.GetLayer(0)
    gt = gdal.Open(str(tmp_path / "m.tif")).GetGeoTransform()
    pixel = abs(gt[1] * gt[5])
    for f in lyr:
        geom = f.GetGeometryRef()
        assert f["area_m2"] == pytest.approx(geom.GetArea())
        assert f["perimeter_m"] == pytest.approx(geom.Boundary().Length())
        # the pixels whose centres are inside, from the geometry itself
        inside = np.zeros(mask.shape, bool)
        for r in range(mask.shape[0]):
            for c in range(mask.shape[1]):
                x, y = gt[0] + (c + 0.5) * gt[1], gt[3] + (r + 0.5) * gt[5]
                inside[r, c] = geom.Contains(ogr.CreateGeometryFromWkt(f"POINT({x} {y})"))
        assert inside.sum() * pixel == pytest.approx(f["area_m2"]) and (mask[inside] == 1).all()
        values = prob[inside][prob[inside] != 255]
        assert f["mean_prob"] == pytest.approx(values.mean() / 254.0, abs=1e-12)
    has_index = ds.ExecuteSQL("SELECT HasSpatialIndex('g', 'geom')")
    assert has_index.GetNextFeature().GetField(0) == 1
    ds.ReleaseResultSet(has_index)
    # MIN_AREA: exactly the polygons of at least that many square metres stay
    n2 = polygonize.polygonize(str(tmp_path / "m.tif"), str(tmp_path / "p.tif"), str(tmp_path / "big.gpkg"),
                               min_area=2 * pixel)
    assert n2 == 2
    # most polygons dropped: the R-tree was refilled from the kept ones; spatial queries still find them
    big = ogr.Open(str(tmp_path / "big.gpkg"))
    blyr = big.GetLayer(0)
    envelopes = {f.GetFID(): f.GetGeometryRef().GetEnvelope() for f in blyr}
    rtree = big.ExecuteSQL("SELECT id, minx, maxx, miny, maxy FROM rtree_big_geom")
    entries = {f.GetField(0): tuple(f.GetField(i) for i in range(1, 5)) for f in rtree}
    big.ReleaseResultSet(rtree)
    assert entries.keys() == envelopes.keys()
    for fid, env in envelopes.items():
        minx, maxx, miny, maxy = entries[fid]  # float32, rounded outward by SQLite's R-tree
        assert env[0] - 1 <= minx <= env[0] and env[1] <= maxx <= env[1] + 1
        assert env[2] - 1 <= miny <= env[2] and env[3] <= maxy <= env[3] + 1
        blyr.SetSpatialFilterRect(env[0] + 0.1, env[2] + 0.1, env[0] + 0.2, env[2] + 0.2)
        assert fid in [f.GetFID() for f in blyr]
    blyr.SetSpatialFilter(None)


_LAYOUTS = {
    "nhw_pinned_batch": lambda p: om.make_nhw_model(p, size=128, pin_batch=True),
    "centred_core": lambda p: om.make_core_model(p, size=128),
    "two_heads": lambda p: om.make_two_head_model(p, metadata={"class_names": [{"0": "edge"},
                                                                                  {"0": "background", "1": "gully"}]}),
}


@pytest.mark.parametrize("layout", sorted(_LAYOUTS))
def test_new_output_layouts_through_processing_and_qgis_process(layout, run_alg, qgis_process, scene_factory,
                                                                 tmp_path):
    """The output layouts of issue 16 run from the Toolbox's path (processing.run) and qgis_process,
    pixel for pixel as the engine (whose results tests/test_model_layouts.py checks against references)."""
    scene = scene_factory("layouts", width=300, height=260, seed=21)
    model = str(_LAYOUTS[layout](tmp_path / f"{layout}.onnx"))
    inference.segment_raster(str(scene), model, output_probability=str(tmp_path / "engine.tif"),
                             output_mask=str(tmp_path / "engine_m.tif"), overlap=32)
    run_alg("segment", {"INPUT": str(scene), "MODEL": model, "OVERLAP": 32,
                        "OUTPUT_PROBABILITY": str(tmp_path / "toolbox.tif"),
                        "OUTPUT_MASK": str(tmp_path / "toolbox_m.tif")})
    qgis_process("gullyseg:segment", {"INPUT": str(scene), "MODEL": model, "OVERLAP": 32,
                                      "OUTPUT_PROBABILITY": str(tmp_path / "cli.tif"),
                                      "OUTPUT_MASK": str(tmp_path / "cli_m.tif")})
    for suffix in ("", "_m"):
        engine = _read(tmp_path / f"engine{suffix}.tif")
        assert (engine != 255).any()
        np.testing.assert_array_equal(_read(tmp_path / f"toolbox{suffix}.tif"), engine)
        np.testing.assert_array_equal(_read(tmp_path / f"cli{suffix}.tif"), engine)
