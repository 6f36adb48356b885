"""gullyseg:gridtiles - Split raster into tiles (step 1): the dataset folder and its tile index."""

import os

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsVectorLayer,
)

from ... import compat
from ..engine import tiling, windows
from ..engine.errors import GullySegError
from .base import GROUP_DATASET, GullySegAlgorithm, features_in_crs


class GridTilesAlgorithm(GullySegAlgorithm):
    ALG_ID = "gridtiles"
    DISPLAY_NAME = "Split raster into tiles"
    GROUP = GROUP_DATASET
    HELP = (
        "Step 1 of the GullySeg workflow: cuts a scene into a regular grid of georeferenced tiles "
        "(256x256 pixels by default) and creates the dataset folder that every later step uses: "
        "images/&lt;tile_id&gt;.tif (exact copies of the scene's pixels, data type, nodata and CRS, as "
        "gdal_translate -srcwin would write them) and/or images/&lt;tile_id&gt;.jpg (8-bit quick-looks "
        "with a .jgw world file and .aux.xml CRS, stretched once for the whole scene), the tile index "
        "index.gpkg (one footprint polygon per tile with tile_id, row, col, pixel offsets, nodata_frac, "
        "status, split and image paths) and the dataset card dataset.json.<br><br>"
        "<b>TILE_SIZE</b>: tile width and height in pixels. <b>STRIDE</b>: pixels between tile origins, "
        "0 = TILE_SIZE (no overlap), smaller values give overlapping tiles. <b>EDGE</b>: pad partial tiles "
        "with nodata (the grid stays regular), skip them, or shift the last row/column inward. "
        "<b>MAX_NODATA</b>: tiles with a larger share of nodata (nodata value, mask band, padding) are not "
        "written. <b>AOI</b>: optional polygons in any CRS; only tiles intersecting them are written. "
        "<b>JPEG_BANDS</b>: bands for the JPEG's red, green and blue, e.g. 3,2,1 (default: by colour "
        "interpretation, 3,2,1 for 4-band BGRN scenes, else 1,2,3). <b>OVERWRITE</b>: replace the tiles, "
        "index and card of an earlier run in the same folder (masks and Labelme files are kept). "
        "Tile ids are &lt;scene&gt;_r0007_c0012 and sort in grid order. The scene must be north-up in a "
        "projected CRS (metres)."
    )

    INPUT = "INPUT"
    TILE_SIZE = "TILE_SIZE"
    STRIDE = "STRIDE"
    EDGE = "EDGE"
    MAX_NODATA = "MAX_NODATA"
    AOI = "AOI"
    FORMAT = "FORMAT"
    JPEG_BANDS = "JPEG_BANDS"
    OVERWRITE = "OVERWRITE"
    OUTPUT_DIR = "OUTPUT_DIR"
    OUTPUT_INDEX = "OUTPUT_INDEX"
    TILE_COUNT = "TILE_COUNT"
    SKIPPED_COUNT = "SKIPPED_COUNT"

    EDGE_OPTIONS = ["Pad with nodata (regular grid)", "Skip partial tiles", "Shift last row/column inward"]
    FORMAT_OPTIONS = ["GeoTIFF", "JPEG", "GeoTIFF and JPEG"]

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Input scene")))
        self.addParameter(QgsProcessingParameterNumber(
            self.TILE_SIZE, self.tr("Tile size (pixels)"), compat.NUMBER_INTEGER,
            defaultValue=tiling.DEFAULT_TILE_SIZE, minValue=1))
        self.addParameter(QgsProcessingParameterNumber(
            self.STRIDE, self.tr("Stride (pixels, 0 = tile size)"), compat.NUMBER_INTEGER,
            defaultValue=0, minValue=0))
        self.addParameter(QgsProcessingParameterEnum(
            self.EDGE, self.tr("Partial tiles at the scene edge"), options=self.EDGE_OPTIONS,
            defaultValue=windows.EDGE_PAD))
        self.addParameter(QgsProcessingParameterNumber(
            self.MAX_NODATA, self.tr("Maximum nodata fraction of a written tile"), compat.NUMBER_DOUBLE,
            defaultValue=tiling.DEFAULT_MAX_NODATA, minValue=0.0, maxValue=1.0))
        aoi = QgsProcessingParameterFeatureSource(
            self.AOI, self.tr("Area of interest (polygons)"), [compat.TYPE_VECTOR_POLYGON], optional=True)
        self.addParameter(aoi)
        self.addParameter(QgsProcessingParameterEnum(
            self.FORMAT, self.tr("Tile format"), options=self.FORMAT_OPTIONS, defaultValue=tiling.FORMAT_BOTH))
        bands = QgsProcessingParameterString(
            self.JPEG_BANDS, self.tr("JPEG bands (R,G,B, e.g. 3,2,1; empty = automatic)"), optional=True)
        bands.setFlags(bands.flags() | compat.FLAG_ADVANCED)
        self.addParameter(bands)
        self.addParameter(QgsProcessingParameterBoolean(
            self.OVERWRITE, self.tr("Overwrite an earlier run in the dataset folder"), defaultValue=False))
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_DIR, self.tr("Dataset folder")))
        index = QgsProcessingParameterFileDestination(
            self.OUTPUT_INDEX, self.tr("Tile index (default <dataset folder>/index.gpkg)"),
            fileFilter="GeoPackage (*.gpkg)", optional=True, createByDefault=False)
        index.setFlags(index.flags() | compat.FLAG_ADVANCED)
        self.addParameter(index)
        self.addOutput(QgsProcessingOutputNumber(self.TILE_COUNT, self.tr("Tiles written")))
        self.addOutput(QgsProcessingOutputNumber(self.SKIPPED_COUNT, self.tr("Tiles skipped (nodata or outside AOI)")))

    def execute(self, parameters, context, feedback):
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise GullySegError(f"INPUT: cannot load the raster '{parameters.get(self.INPUT)}'.")
        source = self.raster_path(layer, self.INPUT)
        aoi = self._aoi_wkt(parameters, context, layer.crs())
        output_dir = self.output_folder(self.parameterAsFileOutput(parameters, self.OUTPUT_DIR, context))
        index = self.parameterAsFileOutput(parameters, self.OUTPUT_INDEX, context) or None
        if index and _is_temporary_output(index, output_dir):
            # A graphical model hands out a temporary file when OUTPUT_INDEX feeds a later step; the
            # index must stay in the dataset folder (its image paths are relative to it).
            index = None
        result = tiling.grid_tiles(
            source,
            output_dir,
            tile_size=self.parameterAsInt(parameters, self.TILE_SIZE, context),
            stride=self.parameterAsInt(parameters, self.STRIDE, context),
            edge=self.parameterAsEnum(parameters, self.EDGE, context),
            max_nodata=self.parameterAsDouble(parameters, self.MAX_NODATA, context),
            aoi=aoi,
            fmt=self.parameterAsEnum(parameters, self.FORMAT, context),
            jpeg_bands=self.parameterAsString(parameters, self.JPEG_BANDS, context) or None,
            output_index=index,
            overwrite=self.parameterAsBoolean(parameters, self.OVERWRITE, context),
            feedback=self.engine_feedback(feedback),
        )
        if context.project() is not None and not context.willLoadLayerOnCompletion(result.index_path):
            # the index is what screening works on: offer it as a layer in the GUI
            details = QgsProcessingContext.LayerDetails(
                f"Tiles {os.path.basename(result.output_dir)}", context.project(), self.OUTPUT_INDEX)
            if QgsVectorLayer(result.index_path, "tiles", "ogr").isValid():
                context.addLayerToLoadOnCompletion(result.index_path, details)
        return {
            self.OUTPUT_DIR: result.output_dir,
            self.OUTPUT_INDEX: result.index_path,
            self.TILE_COUNT: result.tile_count,
            self.SKIPPED_COUNT: result.skipped_count,
        }

    def _aoi_wkt(self, parameters, context, scene_crs):
        """AOI polygons as WKT in the scene CRS, or None."""
        if parameters.get(self.AOI) in (None, ""):
            return None
        source = self.parameterAsSource(parameters, self.AOI, context)
        if source is None:
            return None
        wkts = [wkt for wkt, _ in features_in_crs(source, scene_crs, context, self.AOI)]
        if not wkts:
            raise GullySegError("AOI: the layer has no polygons; give polygons or leave AOI empty.")
        return wkts


def _is_temporary_output(path, output_dir):
    """True for a Processing temporary file outside the dataset folder."""
    from qgis.core import QgsProcessingUtils

    path = os.path.abspath(path)
    temp = os.path.abspath(QgsProcessingUtils.tempFolder())
    inside = lambda folder: os.path.commonpath([path, folder]) == folder  # noqa: E731
    return inside(temp) and not inside(os.path.abspath(output_dir))
