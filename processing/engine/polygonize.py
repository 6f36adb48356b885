"""Gully mask -> polygons with area_m2, perimeter_m and mean_prob (GeoPackage).

``gdal.Polygonize`` traces the mask's gully pixels (value 1; 0 and the 255 nodata are left out,
4-connected, so each polygon is a set of edge-connected gully pixels), streaming line by line.
Then, per polygon: MIN_AREA drops polygons smaller than that many square metres (measured on
the pixel polygon, before simplification); SIMPLIFY (metres) simplifies the outline while
preserving topology; area_m2 and perimeter_m are those of the written geometry; mean_prob is
the mean gully probability (0..1) of the polygon's pixels, read from the probability raster in
bounded blocks. The CRS must be projected in metres.
"""

import math
import os
import uuid

import numpy as np
from osgeo import gdal, ogr, osr

from . import gdalio
from .errors import GullySegError
from .feedback import Feedback

FIELDS = (("area_m2", ogr.OFTReal), ("perimeter_m", ogr.OFTReal), ("mean_prob", ogr.OFTReal))
_BLOCK = 2048  # rows/cols of probability read at once for one polygon


def _gully_band_vrt(mask_path):
    """A VRT whose band is 1 on gully pixels only (0 and 255 -> 0), as the polygonize mask."""
    ds = gdal.Open(mask_path)
    w, h = ds.RasterXSize, ds.RasterYSize
    gt = ds.GetGeoTransform()
    crs = ds.GetProjection()
    ds = None
    path = f"/vsimem/gullyseg_gully_{uuid.uuid4().hex}.vrt"
    src = os.path.abspath(mask_path).replace("&", "&amp;").replace("<", "&lt;")
    xml = f"""<VRTDataset rasterXSize="{w}" rasterYSize="{h}">
  <SRS>{crs.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')}</SRS>
  <GeoTransform>{', '.join(repr(float(v)) for v in gt)}</GeoTransform>
  <VRTRasterBand dataType="Byte" band="1">
    <ComplexSource>
      <SourceFilename relativeToVRT="0">{src}</SourceFilename>
      <SourceBand>1</SourceBand>
      <LUT>0:0,1:1,2:0,255:0</LUT>
    </ComplexSource>
  </VRTRasterBand>
</VRTDataset>"""
    gdal.FileFromMemBuffer(path, xml.encode("utf-8"))
    return path


def _mean_prob(prob_ds, geom, gt, mem_layer):
    """Mean probability (0..1) of the pixels whose centres fall in ``geom`` (bounded blocks)."""
    minx, maxx, miny, maxy = geom.GetEnvelope()
    c0 = max(0, int(math.floor((minx - gt[0]) / gt[1] + 1e-6)))
    c1 = min(prob_ds.RasterXSize, int(math.ceil((maxx - gt[0]) / gt[1] - 1e-6)))
    r0 = max(0, int(math.floor((maxy - gt[3]) / gt[5] + 1e-6)))
    r1 = min(prob_ds.RasterYSize, int(math.ceil((miny - gt[3]) / gt[5] - 1e-6)))
    mem_layer.ResetReading()
    for f in mem_layer:
        mem_layer.DeleteFeature(f.GetFID())
    feat = ogr.Feature(mem_layer.GetLayerDefn())
    feat.SetGeometry(geom)
    mem_layer.CreateFeature(feat)
    band = prob_ds.GetRasterBand(1)
    total = 0.0
    count = 0
    for y in range(r0, r1, _BLOCK):
        for x in range(c0, c1, _BLOCK):
            w, h = min(_BLOCK, c1 - x), min(_BLOCK, r1 - y)
            mem = gdal.GetDriverByName("MEM").Create("", w, h, 1, gdal.GDT_Byte)
            mem.SetGeoTransform((gt[0] + x * gt[1], gt[1], 0.0, gt[3] + y * gt[5], 0.0, gt[5]))
            gdal.RasterizeLayer(mem, [1], mem_layer, burn_values=[1])
            inside = mem.GetRasterBand(1).ReadAsArray() > 0
            if not inside.any():
                continue
            values = band.ReadAsArray(x, y, w, h)[inside]
            values = values[values != 255]
            total += float(values.sum(dtype=np.float64))
            count += values.size
    return (total / count / 254.0) if count else None


def polygonize(mask_path, prob_path, out_path, min_area=0.0, simplify=0.0, layer_name=None, feedback=None):
    """Write the gully polygons of ``mask_path`` to a new GeoPackage ``out_path``; returns their count.

    ``out_path`` is written as is (callers pass the temporary name from ``gdalio.atomic_output``).
    ``prob_path`` (uint8 0..254, 255 nodata) gives mean_prob; None leaves it empty.
    """
    feedback = feedback or Feedback()
    mask_ds = gdalio.open_raster(mask_path, "OUTPUT_MASK")
    srs_wkt = mask_ds.GetProjection()
    gt = mask_ds.GetGeoTransform()
    srs = osr.SpatialReference()
    srs.ImportFromWkt(srs_wkt)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    gdalio.require_projected(srs, "OUTPUT_POLYGONS", mask_path)
    pixel_area = abs(gt[1] * gt[5])
    mask_ds = None
    layer_name = layer_name or os.path.splitext(os.path.basename(out_path))[0]

    vrt = _gully_band_vrt(mask_path)
    # raw polygons go to a temporary GeoPackage on disk (a whole scene's polygons may not fit in memory)
    raw_path = os.path.join(os.path.dirname(os.path.abspath(str(out_path))),
                            f".gullyseg-raw-{uuid.uuid4().hex[:8]}.gpkg")
    raw_ds = None
    try:
        gully = gdal.Open(vrt)
        band = gully.GetRasterBand(1)
        raw_ds = ogr.GetDriverByName("GPKG").CreateDataSource(raw_path)
        raw_layer = raw_ds.CreateLayer("raw", srs=srs, geom_type=ogr.wkbPolygon, options=["SPATIAL_INDEX=NO"])
        raw_layer.CreateField(ogr.FieldDefn("dn", ogr.OFTInteger))
        raw_layer.StartTransaction()

        def progress(frac, _msg, _data):
            feedback.progress(60.0 * frac)
            return 0 if feedback.is_cancelled() else 1

        err = gdal.Polygonize(band, band, raw_layer, 0, [], callback=progress)
        raw_layer.CommitTransaction()
        feedback.check_cancelled()
        if err != 0:
            raise GullySegError(f"OUTPUT_POLYGONS: polygonizing '{mask_path}' failed.")
        gully = None

        drv = ogr.GetDriverByName("GPKG")
        out_ds = drv.CreateDataSource(str(out_path))
        if out_ds is None:
            raise GullySegError(f"OUTPUT_POLYGONS: cannot create '{out_path}'.")
        layer = out_ds.CreateLayer(layer_name, srs=srs, geom_type=ogr.wkbPolygon, options=["FID=fid"])
        for name, kind in FIELDS:
            fd = ogr.FieldDefn(name, kind)
            layer.CreateField(fd)
        defn = layer.GetLayerDefn()
        prob_ds = gdal.Open(prob_path) if prob_path else None
        mem_ds = ogr.GetDriverByName("Memory").CreateDataSource("one")
        mem_layer = mem_ds.CreateLayer("one", srs=srs, geom_type=ogr.wkbPolygon)
        total = raw_layer.GetFeatureCount()
        written = dropped = 0
        layer.StartTransaction()
        for i, feat in enumerate(raw_layer):
            if i % 200 == 0:
                feedback.check_cancelled()
                feedback.progress(60.0 + 40.0 * i / max(1, total))
            geom = feat.GetGeometryRef()
            if geom is None:
                continue
            if geom.GetArea() + 1e-9 < min_area:
                dropped += 1
                continue
            geom = geom.Clone()
            mean = _mean_prob(prob_ds, geom, gt, mem_layer) if prob_ds is not None else None
            if simplify > 0:
                simple = geom.SimplifyPreserveTopology(float(simplify))
                if simple is not None and not simple.IsEmpty():
                    geom = simple
            out = ogr.Feature(defn)
            out.SetGeometry(geom)
            out.SetField("area_m2", float(geom.GetArea()))
            out.SetField("perimeter_m", float(geom.Boundary().Length()))
            if mean is not None:
                out.SetField("mean_prob", mean)
            layer.CreateFeature(out)
            written += 1
        layer.CommitTransaction()
        out_ds = None
        prob_ds = None
    finally:
        raw_ds = raw_layer = None
        gdal.Unlink(vrt)
        gdalio.remove_with_side_files(raw_path)
    feedback.info(
        f"{written} gully polygon(s) written" + (f", {dropped} smaller than {min_area:g} m2 dropped" if dropped else "")
        + (f", simplified with tolerance {simplify:g} m" if simplify > 0 else "") + f" (pixel area {pixel_area:g} m2)"
    )
    feedback.progress(100)
    return written


def polygonize_bounded(*args, cache_mb=256, **kwargs):
    """``polygonize`` with GDAL's block cache capped at ``cache_mb`` while it runs.

    gdal.Polygonize and the mean_prob reads go through GDAL's block cache, whose default size is
    5 % of the RAM: on a 31,000 x 31,000 scene it would fill up and peak memory would grow with
    the scene. The cap is process-wide while polygons are traced (it only evicts cached blocks,
    never changes results) and the previous size is restored afterwards.
    """
    previous = gdal.GetCacheMax()
    limit = int(cache_mb) * 1024 * 1024
    if previous > limit:
        gdal.SetCacheMax(limit)
    try:
        return polygonize(*args, **kwargs)
    finally:
        if previous > limit:
            gdal.SetCacheMax(previous)
