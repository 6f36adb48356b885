"""The burning itself: Labelme burn items and polygon layers into a mask band with GDAL's rasterizer.

Burn rule: as ``gdal_rasterize``. With ``all_touched=False`` (default) a pixel is burnt when its
centre is inside the shape; with ``True`` every pixel the shape touches is burnt. Shapes burn in
order, later over earlier. Labelme shapes are burnt in the tile's pixel space (geotransform
``PIXEL_GT``: x right, y down, pixel-corner origin), polygons in map space on the tile's grid.
"""

import numpy as np
from osgeo import gdal, ogr, osr

from . import labelme, windows
from .errors import GullySegError
from .labelme import ERROR

PIXEL_GT = (0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
BURN_FIELD = "burn"


def _pixel_srs():
    srs = osr.SpatialReference()
    srs.SetLocalCS("Labelme pixel coordinates")
    return srs


def burn_rule(all_touched) -> str:
    return ("all touched: every pixel a shape touches is burnt" if all_touched
            else "pixel centre: a pixel is burnt when its centre is inside the shape (gdal_rasterize default)")


class GeometryLayer:
    """An in-memory OGR layer of (geometry, burn value) in one CRS, burnt tile by tile.

    Features keep their order (later burn over earlier); a spatial filter picks those near a tile.
    """

    def __init__(self, crs_wkt=None):
        self._ds = ogr.GetDriverByName("Memory").CreateDataSource("gullyseg_burn")
        srs = None
        if crs_wkt:
            srs = osr.SpatialReference()
            srs.ImportFromWkt(crs_wkt)
            srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        else:
            srs = _pixel_srs()
        self.srs = srs
        self.layer = self._ds.CreateLayer("shapes", srs, ogr.wkbUnknown)
        self.layer.CreateField(ogr.FieldDefn(BURN_FIELD, ogr.OFTInteger))
        self._defn = self.layer.GetLayerDefn()
        self.count = 0

    def add(self, geometry, value) -> None:
        if isinstance(geometry, str):
            geometry = ogr.CreateGeometryFromWkt(geometry)
        if geometry is None or geometry.IsEmpty():
            return
        feat = ogr.Feature(self._defn)
        feat.SetGeometry(geometry)
        feat.SetField(BURN_FIELD, int(value))
        self.layer.CreateFeature(feat)
        self.count += 1

    def burn(self, ds, all_touched, bounds=None) -> None:
        """Burn into band 1 of ``ds`` (features within ``bounds`` if given, in layer order)."""
        if self.count == 0:
            return
        if bounds is not None:
            self.layer.SetSpatialFilterRect(*bounds)
        else:
            self.layer.SetSpatialFilter(None)
        options = [f"ATTRIBUTE={BURN_FIELD}"]
        if all_touched:
            options.append("ALL_TOUCHED=TRUE")
        gdal.RasterizeLayer(ds, [1], self.layer, options=options)
        self.layer.SetSpatialFilter(None)


def _mem_raster(width, height, geotransform, srs_wkt):
    ds = gdal.GetDriverByName("MEM").Create("", int(width), int(height), 1, gdal.GDT_Byte)
    ds.SetGeoTransform(tuple(geotransform))
    ds.SetProjection(srs_wkt)
    return ds


def burn_items(ds, items, all_touched) -> None:
    """Burn Labelme BurnItems (pixel space) into band 1 of ``ds`` in their order.

    ``ds``'s geotransform is switched to pixel space for the duration and restored.
    """
    if not items:
        return
    saved_gt, saved_wkt = ds.GetGeoTransform(), ds.GetProjection()
    ds.SetGeoTransform(PIXEL_GT)
    ds.SetProjection(_pixel_srs().ExportToWkt())
    width, height = ds.RasterXSize, ds.RasterYSize
    band = ds.GetRasterBand(1)
    run = GeometryLayer()
    for item in items:
        if item.geometry is not None:
            run.add(item.geometry, item.value)
            continue
        run.burn(ds, all_touched)  # everything before this mask shape, then the mask over it
        run = GeometryLayer()
        mask, x0, y0 = item.mask, item.x0, item.y0
        part = windows.intersection((x0, y0, mask.shape[1], mask.shape[0]), (0, 0, width, height))
        if part is not None:
            xa, ya, w, h = part
            arr = band.ReadAsArray(xa, ya, w, h)
            arr[mask[ya - y0:ya - y0 + h, xa - x0:xa - x0 + w]] = item.value
            band.WriteArray(arr, xa, ya)
    run.burn(ds, all_touched)
    ds.SetGeoTransform(saved_gt)
    ds.SetProjection(saved_wkt)


def rasterize_shapes(width, height, items, all_touched=False) -> np.ndarray:
    """Labelme BurnItems -> uint8 array (height, width), background 0. For one image."""
    ds = _mem_raster(width, height, PIXEL_GT, _pixel_srs().ExportToWkt())
    burn_items(ds, items, all_touched)
    return ds.GetRasterBand(1).ReadAsArray()


def rasterize_labelme_file(path, classes, width=None, height=None, all_touched=False, line_width=10.0,
                           point_radius=5.0, unknown_labels="error") -> tuple:
    """One Labelme file -> (uint8 label map, problems). Size from the file unless given."""
    problems = []
    doc = labelme.read_labelme(path, problems)
    if doc is None:
        raise GullySegError("; ".join(str(p) for p in problems))
    width = width or doc.width
    height = height or doc.height
    if not width or not height:
        raise GullySegError(f"'{path}': no imageWidth/imageHeight; give the size.")
    items, ok = labelme.shape_items(doc, width, height, classes, line_width, point_radius, problems,
                                    unknown_labels=unknown_labels)
    if not ok or any(p.severity == ERROR for p in problems):
        raise GullySegError("; ".join(str(p) for p in problems if p.severity == ERROR))
    return rasterize_shapes(width, height, items, all_touched), problems
