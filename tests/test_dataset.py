"""The dataset folder contract: tile index (GeoPackage) and dataset card."""

import json

import pytest
from osgeo import osr
from qgis.core import QgsVectorLayer

from gullyseg.processing.engine import dataset
from gullyseg.processing.engine.errors import GullySegError


def _wkt(epsg=32606):
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    return srs.ExportToWkt()


def _records():
    recs = []
    for r in range(2):
        for c in range(3):
            x0, y0 = 420000 + c * 192.0, 7010000 - r * 192.0
            recs.append(dict(tile_id=dataset.tile_id("scene", r, c), row=r, col=c, x_off=c * 256, y_off=r * 256,
                             width=256, height=256, nodata_frac=0.0, image_tif=f"images/scene_r{r:04d}_c{c:04d}.tif",
                             bounds=(x0, y0 - 192.0, x0 + 192.0, y0)))
    return recs


def test_tile_ids_sort_in_grid_order():
    ids = [dataset.tile_id("scene", r, c) for r in range(12) for c in range(12)]
    assert ids == sorted(ids)
    assert dataset.tile_id("scene", 7, 12) == "scene_r0007_c0012"


def test_index_opens_in_qgis_with_fields_and_crs(tmp_path):
    path = tmp_path / "index.gpkg"
    dataset.write_index(str(path), _wkt(), _records())
    layer = QgsVectorLayer(str(path), "tiles", "ogr")
    assert layer.isValid() and layer.featureCount() == 6
    assert layer.crs().authid() == "EPSG:32606"
    names = set(layer.fields().names())
    assert set(dataset.INDEX_FIELDS) <= names
    feat = next(f for f in layer.getFeatures() if f["tile_id"] == "scene_r0001_c0002")
    assert feat["status"] == "unscreened" and feat["split"] == ""
    bbox = feat.geometry().boundingBox()
    assert (bbox.xMinimum(), bbox.yMaximum()) == (420384.0, 7009808.0)


def test_update_adds_fields_and_never_removes(tmp_path):
    path = str(tmp_path / "index.gpkg")
    dataset.write_index(path, _wkt(), _records())
    changed = dataset.update_index(path, {"scene_r0000_c0001": {"status": "keep", "gully_frac": 0.25}})
    assert changed == 1
    records, wkt = dataset.read_index(path)
    assert "32606" in wkt
    by_id = {r["tile_id"]: r for r in records}
    assert by_id["scene_r0000_c0001"]["status"] == "keep"
    assert by_id["scene_r0000_c0001"]["gully_frac"] == 0.25
    assert by_id["scene_r0000_c0000"]["gully_frac"] is None
    assert set(dataset.INDEX_FIELDS) <= set(by_id["scene_r0000_c0000"])
    kept = dataset.tiles_for_work(records)
    assert [r["tile_id"] for r in kept] == ["scene_r0000_c0001"]


def test_write_index_refuses_existing_file(tmp_path):
    path = tmp_path / "index.gpkg"
    dataset.write_index(str(path), _wkt(), _records())
    with pytest.raises(GullySegError, match="already exists"):
        dataset.write_index(str(path), _wkt(), _records())


def test_not_an_index_is_a_clear_error(tmp_path):
    with pytest.raises(GullySegError, match="does not exist"):
        dataset.read_index(str(tmp_path / "missing.gpkg"))
    other = tmp_path / "other.gpkg"
    from osgeo import ogr

    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(other))
    ds.CreateLayer("pts", osr.SpatialReference(_wkt()), ogr.wkbPoint).CreateField(ogr.FieldDefn("name"))
    ds = None
    with pytest.raises(GullySegError, match="tile index"):
        dataset.read_index(str(other))


def test_card_is_merged_and_deterministic(tmp_path):
    dataset.update_card(tmp_path, source={"scene": "a.tif", "crs": "EPSG:32606"})
    first = (tmp_path / "dataset.json").read_bytes()
    dataset.update_card(tmp_path, source={"scene": "a.tif", "crs": "EPSG:32606"})
    assert (tmp_path / "dataset.json").read_bytes() == first
    card = dataset.update_card(tmp_path, split={"ratios": [6, 2, 2]})
    on_disk = json.loads((tmp_path / "dataset.json").read_text())
    assert on_disk == card and on_disk["source"]["scene"] == "a.tif" and on_disk["split"]["ratios"] == [6, 2, 2]
    md = (tmp_path / "dataset.md").read_text()
    assert "## source" in md and "## split" in md
