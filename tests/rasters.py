"""Write small georeferenced test rasters from numpy arrays.

Plain module (tests ``import rasters``: conftest puts tests/ on sys.path).
"""

import numpy as np
from osgeo import gdal, gdal_array, osr

GT = (420000.0, 0.75, 0.0, 7010000.0, 0.0, -0.75)  # 0.75 m pixels, as the users' Jilin-1 scenes


def write_raster(path, data, gt=GT, epsg=32606, nodata=None, gdal_type=None, options=(), close=True):
    """(H, W) or (C, H, W) ``data`` -> a GeoTIFF at ``path`` (gt / epsg None: left unset).

    gdal_type: the bands' type (default: from data's dtype; GDAL casts on writing). Returns the
    path, or the dataset still open when ``close`` is False (to add a mask band, say).
    """
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    bands, height, width = data.shape
    if gdal_type is None:
        gdal_type = gdal_array.NumericTypeCodeToGDALTypeCode(data.dtype)
    ds = gdal.GetDriverByName("GTiff").Create(str(path), width, height, bands, gdal_type, list(options))
    if gt is not None:
        ds.SetGeoTransform(gt)
    if epsg:
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(epsg)
        ds.SetProjection(srs.ExportToWkt())
    for i in range(bands):
        band = ds.GetRasterBand(i + 1)
        if nodata is not None:
            band.SetNoDataValue(nodata)
        band.WriteArray(data[i])
    if not close:
        return ds
    ds = None
    return str(path)
