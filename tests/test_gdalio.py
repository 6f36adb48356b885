"""GDAL helpers: clear errors on bad rasters, CRS checks, atomic outputs."""

import os
from pathlib import Path

import numpy as np
import pytest
import rasters
from osgeo import gdal, osr

from gullyseg.processing.engine import gdalio
from gullyseg.processing.engine.errors import Cancelled, GullySegError


def _raster(path, epsg=32606, gt=rasters.GT, nodata=None, size=(64, 48)):
    data = np.arange(size[0] * size[1], dtype=np.uint16).reshape(size[1], size[0])
    return rasters.write_raster(path, np.stack([data + 1, data + 2]), gt=gt, epsg=epsg, nodata=nodata)


def test_open_checked_reads_crs_from_data(tmp_path):
    ds, info = gdalio.open_checked(_raster(tmp_path / "a.tif", epsg=32606))
    assert info.srs.GetAuthorityCode(None) == "32606"
    assert "32606" in info.crs_label and "UTM zone 6N" in info.crs_label
    assert info.pixel_size == (0.75, 0.75) and info.dtype == np.uint16 and info.bands == 2
    ds, info = gdalio.open_checked(_raster(tmp_path / "b.tif", epsg=32618))
    assert info.srs.GetAuthorityCode(None) == "32618"


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(epsg=4326, gt=(10.0, 0.0001, 0, 60.0, 0, -0.0001)), "geographic CRS"),
        (dict(gt=(420000.0, 0.75, 0.1, 7010000.0, 0.1, -0.75)), "rotated geotransform"),
        (dict(gt=None), "no geotransform"),
        (dict(epsg=None), "no CRS"),
    ],
)
def test_bad_georeferencing_is_refused(tmp_path, kwargs, needle):
    path = _raster(tmp_path / "bad.tif", **kwargs)
    with pytest.raises(GullySegError, match=needle) as err:
        gdalio.open_checked(path, what="INPUT")
    assert "INPUT" in str(err.value) and "bad.tif" in str(err.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(GullySegError, match="does not exist"):
        gdalio.open_raster(tmp_path / "nope.tif")
    junk = tmp_path / "junk.tif"
    junk.write_text("not a raster")
    with pytest.raises(GullySegError, match="junk.tif"):
        gdalio.open_raster(junk)


def test_valid_mask_uses_nodata_and_mask_band(tmp_path):
    path = _raster(tmp_path / "n.tif", nodata=5)  # pixel value 5 on band 2 is (0, 3)... compute
    ds = gdal.Open(path)
    arr = ds.ReadAsArray()
    valid = gdalio.valid_mask(ds, 0, 0, ds.RasterXSize, ds.RasterYSize)
    np.testing.assert_array_equal(valid, (arr[0] != 5) & (arr[1] != 5))
    assert (~valid).sum() == 2


def test_atomic_output_renames_on_success(tmp_path):
    target = tmp_path / "out.tif"
    with gdalio.atomic_output(target) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and tmp != str(target)
        ds = gdalio.create_raster(tmp, 8, 8, 1, gdal.GDT_Byte, crs_wkt=osr.SRS_WKT_WGS84_LAT_LONG)
        ds.GetRasterBand(1).Fill(3)
        ds.GetRasterBand(1).SetDescription("x")
        ds = None
        assert not target.exists()
    assert gdal.Open(str(target)).ReadAsArray().sum() == 3 * 64
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_atomic_output_cleans_up_on_error_and_cancel(tmp_path):
    target = tmp_path / "out.tif"
    for exc in (RuntimeError("boom"), Cancelled()):
        with pytest.raises(type(exc)):
            with gdalio.atomic_output(target) as tmp:
                gdalio.create_raster(tmp, 8, 8, 1, gdal.GDT_Byte).FlushCache()
                with open(tmp + ".aux.xml", "w") as fh:
                    fh.write("<PAMDataset/>")
                raise exc
        assert list(tmp_path.iterdir()) == []


def test_atomic_output_refuses_to_overwrite_unless_asked(tmp_path):
    target = tmp_path / "keep.tif"
    target.write_bytes(b"user data")
    with pytest.raises(GullySegError, match="already exists"):
        with gdalio.atomic_output(target):
            pass
    assert target.read_bytes() == b"user data"
    with gdalio.atomic_output(target, overwrite=True) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(b"new")
    assert target.read_bytes() == b"new"


def test_atomic_output_moves_side_files(tmp_path):
    target = tmp_path / "tile.jpg"
    with gdalio.atomic_output(target) as tmp:
        src = gdalio.create_raster("/vsimem/src.tif", 16, 16, 3, gdal.GDT_Byte,
                                   geotransform=(420000.0, 0.75, 0, 7010000.0, 0, -0.75),
                                   crs_wkt=gdalio.osr.SRS_WKT_WGS84_LAT_LONG)
        gdal.GetDriverByName("JPEG").CreateCopy(tmp, src, options=["WORLDFILE=YES"])
        src = None
        gdal.Unlink("/vsimem/src.tif")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names in (["tile.jpg", "tile.jpg.aux.xml", "tile.wld"], ["tile.jgw", "tile.jpg", "tile.jpg.aux.xml"])
    assert gdal.Open(str(target)).GetGeoTransform()[0] == 420000.0


def test_overwrite_leaves_sibling_files_of_other_formats(tmp_path):
    """Replacing x.tif must not touch x.jpg / x.jgw (a tile's JPEG twin), only x.tif's own files."""
    for name in ("x.jpg", "x.jgw", "x.jpg.aux.xml", "x.tif", "x.tif.aux.xml"):
        (tmp_path / name).write_text(name)
    with gdalio.atomic_output(tmp_path / "x.tif", overwrite=True) as tmp:
        with open(tmp, "w") as fh:
            fh.write("new tif")
    assert (tmp_path / "x.tif").read_text() == "new tif"
    assert not (tmp_path / "x.tif.aux.xml").exists()  # the old tif's stale side file went with it
    for name in ("x.jpg", "x.jgw", "x.jpg.aux.xml"):
        assert (tmp_path / name).read_text() == name


def test_first_jpeg_writes_from_several_threads_report_no_error():
    """GDAL builds the JPEG driver's creation option list lazily and without a lock; importing gdalio
    builds it once, so a fresh process whose first JPEGs are written by 8 threads at once (as the
    tile writers do) sees no parse error. Run in fresh interpreters: the race is on first use only."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import os, sys, tempfile, threading
        from osgeo import gdal
        sys.path.insert(0, sys.argv[1])
        import gullyseg_cli
        gullyseg_cli.register_package()
        import gullyseg.processing.engine.gdalio  # noqa: F401  (the warm-up happens at import)
        folder, errors = tempfile.mkdtemp(), []

        def write(i):
            def handler(err_class, err_no, message):
                if err_class >= gdal.CE_Failure:
                    errors.append(message)
            gdal.PushErrorHandler(handler)
            try:
                mem = gdal.GetDriverByName("MEM").Create("", 64, 64, 3, gdal.GDT_Byte)
                gdal.GetDriverByName("JPEG").CreateCopy(os.path.join(folder, f"{i}.jpg"), mem, 0, ["QUALITY=90"])
            finally:
                gdal.PopErrorHandler()

        threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(len(errors), errors[:1])
    """)
    tools = str(Path(__file__).resolve().parents[1] / "tools")
    for _ in range(15):
        out = subprocess.run([sys.executable, "-c", script, tools], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("0 "), out.stdout
