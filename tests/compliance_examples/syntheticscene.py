"""Compliance example for gullyseg:syntheticscene: a small BGRN scene with a nodata edge."""

from osgeo import gdal, ogr


def parameters(tmp_path, scene):
    return {
        "WIDTH": 300,
        "HEIGHT": 260,
        "SEED": 5,
        "BANDS": 1,
        "NODATA_EDGE": True,
        "OUTPUT": str(tmp_path / "synthetic.tif"),
        "OUTPUT_GULLIES": str(tmp_path / "synthetic_gullies.gpkg"),
        "OUTPUT_MASK": str(tmp_path / "synthetic_mask.tif"),
    }


def check(results, tmp_path):
    ds = gdal.Open(results["OUTPUT"])
    assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (300, 260, 4)
    assert ds.GetRasterBand(1).DataType == gdal.GDT_UInt16
    mask = gdal.Open(results["OUTPUT_MASK"])
    assert (mask.RasterXSize, mask.RasterYSize) == (300, 260)
    vec = ogr.Open(results["OUTPUT_GULLIES"])
    assert vec.GetLayerByName("gullies").GetFeatureCount() >= 1
