"""Gully mask -> polygons with area_m2, perimeter_m and mean_prob (GeoPackage), at GDAL's speed.

1. ``gdal.Polygonize`` traces the mask's gully pixels (value 1; 0 and the 255 nodata are left
   out, 4-connected, so each polygon is a set of edge-connected gully pixels) straight into the
   output layer, streaming line by line, in one transaction (GDAL builds the spatial index in bulk
   at the end of it, as for gdal_polygonize's output).
2. The polygons are burnt back (``gdal.Rasterize``, their fid as the value) into a scratch label
   raster, which is read in strips of rows with the probability raster: per fid, numpy counts the
   pixels (area = pixels x pixel area), the pixel edges on its outline (perimeter, holes
   included) and sums the probabilities (mean_prob, nodata left out). No per-polygon raster,
   no per-feature Python for these.
3. The attributes go in with one SQL transaction (SQLite's own ``executemany``); polygons smaller
   than MIN_AREA are deleted with one statement (when they are most of the layer, the per-row
   delete triggers are set aside and the R-tree is rebuilt from the kept polygons' envelopes).
4. SIMPLIFY (metres) simplifies the kept outlines preserving topology (a per-feature pass, only
   then), and area_m2 and perimeter_m become those of the written geometry.

The cost is about that of ``gdal_polygonize`` on the same mask (benchmarks/bench_polygonize.py
measures the ratio). The CRS must be projected in metres.
"""

import contextlib
import os
import sqlite3
import uuid

import numpy as np
from osgeo import gdal, ogr, osr

from . import gdalio
from .errors import GullySegError
from .feedback import Feedback

FIELDS = (("area_m2", ogr.OFTReal), ("perimeter_m", ogr.OFTReal), ("mean_prob", ogr.OFTReal))
_STRIP = 256  # rows of the label and probability rasters read at once


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


def _trace(mask_path, out_path, layer_name, srs, feedback):
    """gdal.Polygonize of the gully pixels into a new GeoPackage layer; returns the number of polygons."""
    vrt = _gully_band_vrt(mask_path)
    try:
        gully = gdal.Open(vrt)
        band = gully.GetRasterBand(1)
        out_ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(out_path))
        if out_ds is None:
            raise GullySegError(f"OUTPUT_POLYGONS: cannot create '{out_path}'.")
        layer = out_ds.CreateLayer(layer_name, srs=srs, geom_type=ogr.wkbPolygon, options=["FID=fid"])
        for name, kind in FIELDS:
            layer.CreateField(ogr.FieldDefn(name, kind))
        layer.StartTransaction()

        def progress(frac, _msg, _data):
            feedback.progress(55.0 * frac)
            return 0 if feedback.is_cancelled() else 1

        err = gdal.Polygonize(band, band, layer, -1, [], callback=progress)
        feedback.check_cancelled()
        if err != 0:
            raise GullySegError(f"OUTPUT_POLYGONS: polygonizing '{mask_path}' failed.")
        layer.CommitTransaction()
        count = layer.GetFeatureCount()
        out_ds = layer = None
        return count
    finally:
        gully = band = None
        gdal.Unlink(vrt)


def _burn_labels(out_path, layer_name, mask_ds, label_path):
    """The polygons' fids burnt into an Int32 raster on the mask's grid (pixel-centre rule)."""
    w, h = mask_ds.RasterXSize, mask_ds.RasterYSize
    gt = mask_ds.GetGeoTransform()
    label = gdalio.create_raster(label_path, w, h, 1, gdal.GDT_Int32, gt, mask_ds.GetProjection(), None,
                                 ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=ZSTD", "ZSTD_LEVEL=1"])
    vds = ogr.Open(str(out_path))
    sql = vds.ExecuteSQL(f'SELECT fid * 1 AS fid_label, geom FROM "{layer_name}"')
    try:
        err = gdal.RasterizeLayer(label, [1], sql, options=["ATTRIBUTE=fid_label"])
    finally:
        vds.ReleaseResultSet(sql)
    vds = None
    label.FlushCache()
    label = None
    if err != 0:
        raise GullySegError(f"OUTPUT_POLYGONS: cannot rasterize the polygons of '{out_path}'.")


def _pixel_stats(label_path, prob_path, count, feedback):
    """Per fid (0..count): pixels, horizontal and vertical outline edges, probability sum and count."""
    n = count + 1
    pixels = np.zeros(n, np.int64)
    h_edges = np.zeros(n, np.int64)  # edges between vertically adjacent pixels (horizontal segments)
    v_edges = np.zeros(n, np.int64)  # edges between horizontally adjacent pixels (vertical segments)
    psum = np.zeros(n, np.float64)
    pcount = np.zeros(n, np.int64)
    lds = gdal.Open(label_path)
    band = lds.GetRasterBand(1)
    pds = gdal.Open(prob_path) if prob_path else None
    w, h = lds.RasterXSize, lds.RasterYSize
    above = np.zeros(w, np.int32)  # the row above the strip (nothing above the raster)
    for y in range(0, h, _STRIP):
        feedback.check_cancelled()
        rows = min(_STRIP, h - y)
        lab = band.ReadAsArray(0, y, w, min(rows + 1, h - y))  # one row more: the row below the strip
        below = lab[rows] if lab.shape[0] > rows else np.zeros(w, np.int32)
        lab = lab[:rows]
        if lab.any():
            flat = lab.ravel()
            pixels += np.bincount(flat, minlength=n)[:n]
            up = np.vstack([above[None], lab[:-1]])
            down = np.vstack([lab[1:], below[None]])
            vert = (lab != up).astype(np.int64) + (lab != down)
            h_edges += np.bincount(flat, weights=vert.ravel(), minlength=n)[:n].astype(np.int64)
            left = np.pad(lab[:, :-1], ((0, 0), (1, 0)))
            right = np.pad(lab[:, 1:], ((0, 0), (0, 1)))
            horiz = (lab != left).astype(np.int64) + (lab != right)
            v_edges += np.bincount(flat, weights=horiz.ravel(), minlength=n)[:n].astype(np.int64)
            if pds is not None:
                prob = pds.GetRasterBand(1).ReadAsArray(0, y, w, rows)
                ok = (lab > 0) & (prob != 255)
                psum += np.bincount(lab[ok], weights=prob[ok].astype(np.float64), minlength=n)[:n]
                pcount += np.bincount(lab[ok], minlength=n)[:n]
        above = lab[-1].copy()
        lds.FlushCache()
        feedback.progress(60.0 + 25.0 * (y + rows) / max(1, h))
    lds = pds = None
    return pixels, h_edges, v_edges, psum, pcount


def _not_here(_geom):
    raise sqlite3.OperationalError("a geometry changed while attributes were written")


def _delete(con, table, layer_name, fids, kept):
    """Delete the polygons ``fids``. When they are most of the layer, the R-tree is emptied and refilled
    with the kept polygons' envelopes (from the GeoPackage geometry headers): deleting one R-tree
    entry at a time (the trigger) costs more than the rest of the polygons' attributes together."""
    if not len(fids):
        return
    con.execute("CREATE TEMP TABLE drop_fid (fid INTEGER PRIMARY KEY)")
    con.executemany("INSERT INTO drop_fid VALUES (?)", ((f,) for f in fids.tolist()))
    rtree = '"' + f"rtree_{layer_name}_geom".replace('"', '""') + '"'
    has_rtree = con.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (f"rtree_{layer_name}_geom",)).fetchone()
    if not has_rtree or len(fids) < kept:
        con.execute(f"DELETE FROM {table} WHERE fid IN (SELECT fid FROM drop_fid)")
        return
    # the per-row delete triggers (R-tree entry, gpkg_ogr_contents count) are dropped for the bulk delete
    # and recreated from their own SQL in the same transaction; the count is then set once
    triggers = con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND lower(tbl_name) = "
                           "lower(?) AND sql LIKE '%AFTER DELETE%'", (layer_name,)).fetchall()
    for name, _ in triggers:
        con.execute('DROP TRIGGER "' + name.replace('"', '""') + '"')
    # an R-tree is emptied fastest by dropping it (DELETE takes it apart entry by entry): recreated from its own SQL
    rtree_sql = con.execute("SELECT sql FROM sqlite_master WHERE name = ?", (f"rtree_{layer_name}_geom",)).fetchone()[0]
    con.execute(f"DROP TABLE {rtree}")
    con.execute(rtree_sql)
    con.execute(f"DELETE FROM {table} WHERE fid IN (SELECT fid FROM drop_fid)")
    for _, sql in triggers:
        con.execute(sql)
    if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'gpkg_ogr_contents'").fetchone():
        con.execute(f"UPDATE gpkg_ogr_contents SET feature_count = (SELECT COUNT(*) FROM {table}) "
                    "WHERE lower(table_name) = lower(?)", (layer_name,))
    rows = con.execute(f"SELECT fid, substr(geom, 1, 40) FROM {table}").fetchall()
    if not rows:
        return
    heads = b"".join(h for _, h in rows if h is not None and len(h) == 40)
    if len(heads) != 40 * len(rows):
        raise GullySegError("OUTPUT_POLYGONS: a polygon without an envelope in its GeoPackage header.")
    head = np.frombuffer(heads, np.uint8).reshape(-1, 40)
    if not ((head[:, 0] == 0x47) & (head[:, 1] == 0x50) & ((head[:, 3] & 0x0F) == 0x03)).all():
        raise GullySegError("OUTPUT_POLYGONS: unexpected GeoPackage geometry headers.")
    env = np.ascontiguousarray(head[:, 8:40]).view("<f8")  # minx, maxx, miny, maxy (little-endian)
    con.executemany(f"INSERT INTO {rtree} VALUES (?, ?, ?, ?, ?)",
                    ((fid, *e) for (fid, _), e in zip(rows, env.tolist())))


def _write_attributes(out_path, layer_name, stats, gt, min_area):
    """area_m2, perimeter_m, mean_prob in one SQLite transaction; polygons under MIN_AREA deleted.
    Returns (written, dropped)."""
    pixels, h_edges, v_edges, psum, pcount = stats
    pw, ph = abs(gt[1]), abs(gt[5])
    area = pixels * (pw * ph)
    perimeter = h_edges * pw + v_edges * ph
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(pcount > 0, psum / np.maximum(pcount, 1) / 254.0, np.nan)
    fids = np.nonzero(pixels[1:])[0] + 1  # 0: no polygon
    keep = fids[area[fids] + 1e-9 >= min_area]
    table = '"' + layer_name.replace('"', '""') + '"'
    con = sqlite3.connect(str(out_path))
    # the GeoPackage's R-tree triggers name GDAL's SQL functions: they fire only when a geometry changes
    # (never here), but SQLite needs the names to compile the statements; called, they would fail loudly
    for name in ("ST_IsEmpty", "ST_MinX", "ST_MaxX", "ST_MinY", "ST_MaxY"):
        con.create_function(name, 1, _not_here)
    # a temporary file until atomic_output renames it (an error or a kill leaves nothing in place)
    con.execute("PRAGMA synchronous = OFF")
    con.execute("PRAGMA journal_mode = MEMORY")
    con.execute("PRAGMA cache_size = -65536")  # 64 MB of pages
    try:
        with con:
            small = fids[area[fids] + 1e-9 < min_area]
            _delete(con, table, layer_name, small, len(keep))
            means = [None if m != m else m for m in mean[keep].tolist()]  # NaN (no valid probability): NULL
            con.executemany(f"UPDATE {table} SET area_m2 = ?, perimeter_m = ?, mean_prob = ? WHERE fid = ?",
                            zip(area[keep].tolist(), perimeter[keep].tolist(), means, keep.tolist()))
    finally:
        con.close()
    return len(keep), len(fids) - len(keep)


def _simplify(out_path, layer_name, tolerance, feedback):
    """Simplify every outline (topology preserved); area_m2 and perimeter_m of the written geometry."""
    ds = ogr.Open(str(out_path), 1)
    layer = ds.GetLayerByName(layer_name)
    total = max(1, layer.GetFeatureCount())
    layer.StartTransaction()
    for i, feat in enumerate(layer):
        if i % 500 == 0:
            feedback.check_cancelled()
            feedback.progress(85.0 + 10.0 * i / total)
        geom = feat.GetGeometryRef()
        simple = geom.SimplifyPreserveTopology(float(tolerance)) if geom is not None else None
        if simple is None or simple.IsEmpty():
            continue
        feat.SetGeometry(simple)
        feat.SetField("area_m2", float(simple.GetArea()))
        feat.SetField("perimeter_m", float(simple.Boundary().Length()))
        layer.SetFeature(feat)
    layer.CommitTransaction()
    ds = layer = None


def polygonize(mask_path, prob_path, out_path, min_area=0.0, simplify=0.0, layer_name=None, feedback=None) -> int:
    """Write the gully polygons of ``mask_path`` to a new GeoPackage ``out_path``; returns their count.

    ``out_path`` is written as is (callers pass the temporary name from ``gdalio.atomic_output``).
    ``prob_path`` (uint8 0..254, 255 nodata) gives mean_prob; None leaves it empty. MIN_AREA (m2)
    is measured on the pixel polygon, before simplification.
    """
    feedback = feedback or Feedback()
    mask_ds = gdalio.open_raster(mask_path, "OUTPUT_MASK")
    srs = osr.SpatialReference()
    srs.ImportFromWkt(mask_ds.GetProjection())
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    gdalio.require_projected(srs, "OUTPUT_POLYGONS", mask_path)
    gt = mask_ds.GetGeoTransform()
    layer_name = layer_name or os.path.splitext(os.path.basename(out_path))[0]
    folder = os.path.dirname(os.path.abspath(str(out_path)))
    label_path = os.path.join(folder, f".gullyseg-labels-{uuid.uuid4().hex[:8]}.tif")
    try:
        count = _trace(mask_path, out_path, layer_name, srs, feedback)
        written = dropped = 0
        if count:
            _burn_labels(out_path, layer_name, mask_ds, label_path)
            feedback.check_cancelled()
            stats = _pixel_stats(label_path, prob_path, count, feedback)
            written, dropped = _write_attributes(out_path, layer_name, stats, gt, float(min_area))
            if simplify > 0 and written:
                _simplify(out_path, layer_name, simplify, feedback)
    finally:
        mask_ds = None
        with contextlib.suppress(OSError):
            gdalio.remove_with_side_files(label_path)
    feedback.info(
        f"{written} gully polygon(s) written" + (f", {dropped} smaller than {min_area:g} m2 dropped" if dropped else "")
        + (f", simplified with tolerance {simplify:g} m" if simplify > 0 else "")
        + f" (pixel area {abs(gt[1] * gt[5]):g} m2)"
    )
    feedback.progress(100)
    return written


def polygonize_bounded(*args, cache_mb=256, **kwargs) -> int:
    """``polygonize`` with GDAL's block cache capped at ``cache_mb`` while it runs.

    gdal.Polygonize and the strip reads go through GDAL's block cache, whose default size is 5 %
    of the RAM: on a 31,000 x 31,000 scene it would fill up and peak memory would grow with the
    scene. The cap is process-wide while polygons are traced (it only evicts cached blocks, never
    changes results) and the previous size is restored afterwards.
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
