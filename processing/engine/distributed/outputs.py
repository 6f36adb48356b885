"""segment_many's outputs over all scenes: mask mosaics, merged polygons, the summary."""

import csv
import glob
import hashlib
import math
import os
import uuid

from osgeo import gdal, ogr, osr

from .. import gdalio
from .plan import MASK, POLYGONS, SUMMARY_FIELDS
from .records import write_json_atomic


def _crs_tag(crs_wkt):
    srs = osr.SpatialReference()
    try:
        srs.ImportFromWkt(crs_wkt)
        srs.AutoIdentifyEPSG()
    except RuntimeError:
        pass
    auth, code = srs.GetAuthorityName(None), srs.GetAuthorityCode(None)
    if auth and code:
        return f"{auth}_{code}"
    return "crs_" + hashlib.sha1(crs_wkt.encode()).hexdigest()[:8]


def _write_mosaics(output_dir, rows, polygons, feedback):
    """mosaic VRT(s) over the masks and the merged polygons GeoPackage, one per CRS (see module doc)."""
    by_crs = {}
    for row in rows:
        if row["status"] in ("done", "skipped"):
            by_crs.setdefault(row["_crs"], []).append(row)
    outputs = {"mosaics": [], "polygons": None}
    for old in glob.glob(os.path.join(glob.escape(output_dir), "mosaic*.vrt")):
        os.remove(old)
    single = len(by_crs) == 1
    for crs_wkt, group in by_crs.items():
        name = "mosaic.vrt" if single else f"mosaic_{_crs_tag(crs_wkt)}.vrt"
        path = os.path.join(output_dir, name)
        masks = [os.path.join(output_dir, r["scene"], MASK) for r in group]
        with gdalio.atomic_output(path, True, "mosaic") as tmp:
            gdal.BuildVRT(tmp, masks, options=gdal.BuildVRTOptions(srcNodata=255, VRTNodata=255)).FlushCache()
            _relative_vrt(tmp, output_dir)
        outputs["mosaics"].append(path)
    if len(by_crs) > 1:
        feedback.info(f"Scenes in {len(by_crs)} CRSs: one mask mosaic per CRS "
                      f"({', '.join(map(os.path.basename, outputs['mosaics']))})")
    if polygons and by_crs:
        path = os.path.join(output_dir, POLYGONS)
        with gdalio.atomic_output(path, True, "OUTPUT_POLYGONS") as tmp:
            _merge_polygons(tmp, output_dir, by_crs, single)
        outputs["polygons"] = path
    return outputs


def _relative_vrt(vrt_path, output_dir):
    """Make the VRT's source paths relative, so the output folder can be moved."""
    with open(vrt_path, encoding="utf-8") as f:
        text = f.read()
    prefix = output_dir.rstrip(os.sep) + os.sep
    text = text.replace('relativeToVRT="0">' + prefix, 'relativeToVRT="1">')
    with open(vrt_path, "w", encoding="utf-8") as f:
        f.write(text)


def _merge_polygons(path, output_dir, by_crs, single):
    drv = ogr.GetDriverByName("GPKG")
    out = drv.CreateDataSource(path)
    for crs_wkt, group in by_crs.items():
        srs = osr.SpatialReference()
        srs.ImportFromWkt(crs_wkt)
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        layer = out.CreateLayer("gullies" if single else f"gullies_{_crs_tag(crs_wkt)}", srs=srs,
                                geom_type=ogr.wkbPolygon, options=["FID=fid"])
        layer.CreateField(ogr.FieldDefn("scene", ogr.OFTString))
        fields = None
        layer.StartTransaction()
        for row in group:
            src = ogr.Open(os.path.join(output_dir, row["scene"], POLYGONS))
            if src is None:
                continue
            src_layer = src.GetLayer(0)
            sdefn = src_layer.GetLayerDefn()
            if fields is None:  # names and types (a FieldDefn dies with its source)
                fields = [(sdefn.GetFieldDefn(i).GetName(), sdefn.GetFieldDefn(i).GetType())
                          for i in range(sdefn.GetFieldCount())]
                layer.CommitTransaction()
                for name, kind in fields:
                    layer.CreateField(ogr.FieldDefn(name, kind))
                layer.StartTransaction()
            defn = layer.GetLayerDefn()
            for feat in src_layer:
                o = ogr.Feature(defn)
                o.SetGeometry(feat.GetGeometryRef())
                o.SetField("scene", row["scene"])
                for name, _ in fields:
                    if feat.IsFieldSetAndNotNull(name):
                        o.SetField(name, feat.GetField(name))
                layer.CreateFeature(o)
            src = None
        layer.CommitTransaction()
    out = None


def _write_summary(output_dir, summary):
    rows = summary["scenes"]
    write_json_atomic(os.path.join(output_dir, "summary.json"), summary)
    path = os.path.join(output_dir, "summary.csv")
    tmp = os.path.join(output_dir, f".summary.csv.partial-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if row.get(k) is None else (round(row[k], 3) if isinstance(row[k], float) else row[k]))
                        for k in SUMMARY_FIELDS})
    os.replace(tmp, path)


def scenes_per_hour(pixels_per_second, scene_px=31000 * 31000) -> float:
    """Scenes of ``scene_px`` pixels per hour at a measured rate (docs/scale.md)."""
    return 3600.0 * pixels_per_second / float(scene_px) if pixels_per_second else math.nan
