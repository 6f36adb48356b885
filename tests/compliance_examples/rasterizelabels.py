"""Compliance example for gullyseg:rasterizelabels: gully polygons burnt into the masks of a 2x2-tile dataset."""

import os

from osgeo import gdal

from gullyseg.processing.engine import tiling


def parameters(tmp_path, scene_factory):
    scene = scene_factory("compliance", width=512, height=512)
    index = tiling.grid_tiles(str(scene), str(tmp_path / "dataset")).index_path
    gullies = str(scene).replace(".tif", "_gullies.gpkg")
    return {"TILES": index, "VECTOR": gullies, "CLASSES": "gully=1", "OUTPUT_REPORT": str(tmp_path / "report.csv")}


def check(results, tmp_path):
    assert results["MASK_COUNT"] == 4 and results["PROBLEM_COUNT"] == 0
    masks = sorted(os.listdir(results["OUTPUT_DIR"]))
    assert len(masks) == 4
    ds = gdal.Open(os.path.join(results["OUTPUT_DIR"], masks[0]))
    assert ds.RasterCount == 1 and ds.GetRasterBand(1).DataType == gdal.GDT_Byte
    assert os.path.exists(results["OUTPUT_REPORT"])
