"""GullySeg's numerical engine.

Rules for every module in this package:
- import numpy, GDAL (osgeo) and onnxruntime only; never ``qgis``;
- read and write rasters by windows (``windows.iter_windows``), never a whole scene;
- report through a ``feedback.Feedback`` and raise ``errors.GullySegError`` with a
  message that names the file or parameter and what is wrong;
- write outputs through ``gdalio.atomic_output`` so nothing half-written is left.
"""

from osgeo import gdal, ogr, osr

gdal.UseExceptions()
ogr.UseExceptions()
osr.UseExceptions()
