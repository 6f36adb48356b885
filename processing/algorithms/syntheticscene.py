"""gullyseg:syntheticscene - Create synthetic gully scene (demo and test data)."""

import os
import shutil
import tempfile

from osgeo import gdal
from qgis.core import (
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterVectorDestination,
)

from ... import compat
from ..engine import synthetic
from ..engine.errors import GullySegError
from .base import GROUP_DEMO, GullySegAlgorithm


class SyntheticSceneAlgorithm(GullySegAlgorithm):
    ALG_ID = "syntheticscene"
    DISPLAY_NAME = "Create synthetic gully scene"
    GROUP = GROUP_DEMO
    HELP = (
        "Creates a synthetic satellite scene of loess hills with gullies and check dams, with its ground "
        "truth, so GullySeg can be tried before real imagery arrives (and for tests and benchmarks). "
        "The scene is a GeoTIFF in WGS 84 / UTM zone 6N (EPSG:32606) at 0.75 m, tiled and compressed, "
        "written window by window so even 31,000 x 31,000 pixels need little memory.<br><br>"
        "Content: rolling terrain with texture, terraced fields, vegetation, roads and tracks, hill "
        "shading; dendritic gully networks with shaded walls and lighter floors; check dams (short "
        "embankments) with flat, brighter silted dam land upstream. The class <i>gully</i> covers the "
        "channels and their dam land; the dam embankments are background.<br><br>"
        "<b>WIDTH</b>, <b>HEIGHT</b>: size in pixels (16 to 100,000). <b>SEED</b>: the same seed gives the "
        "same bytes. <b>BANDS</b>: RGB uint8 (3 bands), or BGRN uint16 (blue, green, red, near infrared, "
        "about 10-bit values as a pan-sharpened PMS sensor gives). <b>NODATA_EDGE</b>: a rotated scene "
        "edge leaves nodata wedges at the corners (pixel value 0 on every band), so edge tiles are "
        "partly empty.<br><br>"
        "Outputs: <b>OUTPUT</b> the scene; <b>OUTPUT_GULLIES</b> the gully polygons (layer 'gullies', "
        "field label = 'gully'); <b>OUTPUT_MASK</b> a uint8 mask on the scene grid (1 gully, 0 "
        "background, 255 outside the footprint) which is exactly GDAL's pixel-centre rasterisation of "
        "the polygons."
    )

    WIDTH = "WIDTH"
    HEIGHT = "HEIGHT"
    SEED = "SEED"
    BANDS = "BANDS"
    NODATA_EDGE = "NODATA_EDGE"
    OUTPUT = "OUTPUT"
    OUTPUT_GULLIES = "OUTPUT_GULLIES"
    OUTPUT_MASK = "OUTPUT_MASK"
    GULLY_FRACTION = "GULLY_FRACTION"
    GULLY_COUNT = "GULLY_COUNT"

    BAND_OPTIONS = ["RGB uint8", "BGRN uint16"]
    BAND_KEYS = ["rgb", "bgrn"]

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterNumber(
            self.WIDTH, self.tr("Width (pixels)"), compat.NUMBER_INTEGER, defaultValue=2048,
            minValue=synthetic.MIN_SIZE, maxValue=synthetic.MAX_SIZE))
        self.addParameter(QgsProcessingParameterNumber(
            self.HEIGHT, self.tr("Height (pixels)"), compat.NUMBER_INTEGER, defaultValue=2048,
            minValue=synthetic.MIN_SIZE, maxValue=synthetic.MAX_SIZE))
        self.addParameter(QgsProcessingParameterNumber(
            self.SEED, self.tr("Random seed"), compat.NUMBER_INTEGER, defaultValue=1, minValue=0))
        self.addParameter(QgsProcessingParameterEnum(
            self.BANDS, self.tr("Bands"), options=self.BAND_OPTIONS, defaultValue=0))
        self.addParameter(QgsProcessingParameterBoolean(
            self.NODATA_EDGE, self.tr("Rotated scene edge (nodata corners)"), defaultValue=False))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Synthetic scene")))
        self.addParameter(QgsProcessingParameterVectorDestination(
            self.OUTPUT_GULLIES, self.tr("Gully polygons (ground truth)"), compat.TYPE_VECTOR_POLYGON))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT_MASK, self.tr("Gully mask (ground truth)")))
        self.addOutput(QgsProcessingOutputNumber(self.GULLY_FRACTION, self.tr("Gully share of valid pixels")))
        self.addOutput(QgsProcessingOutputNumber(self.GULLY_COUNT, self.tr("Gully networks")))

    def execute(self, parameters, context, feedback):
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        mask = self.parameterAsOutputLayer(parameters, self.OUTPUT_MASK, context)
        gullies = self.parameterAsOutputLayer(parameters, self.OUTPUT_GULLIES, context)
        for key, path in ((self.OUTPUT, output), (self.OUTPUT_MASK, mask)):
            if not str(path).lower().endswith((".tif", ".tiff")):
                raise GullySegError(f"{key}: '{path}' must be a GeoTIFF (.tif).")
        # Processing destinations are replaced when they exist (as every Processing algorithm does).
        vector_target = tmpdir = None
        if not str(gullies).lower().endswith(".gpkg"):
            vector_target = gullies
            tmpdir = tempfile.mkdtemp(prefix="gullyseg_")
            gullies = os.path.join(tmpdir, "gullies.gpkg")
        result = synthetic.make_scene(
            output,
            width=self.parameterAsInt(parameters, self.WIDTH, context),
            height=self.parameterAsInt(parameters, self.HEIGHT, context),
            seed=self.parameterAsInt(parameters, self.SEED, context),
            bands=self.BAND_KEYS[self.parameterAsEnum(parameters, self.BANDS, context)],
            nodata_edge=self.parameterAsBoolean(parameters, self.NODATA_EDGE, context),
            mask_path=mask,
            gullies_path=gullies,
            overwrite=True,
            feedback=self.engine_feedback(feedback),
        )
        if vector_target is not None:
            # another vector format was chosen (Shapefile, GeoJSON ...): convert the GeoPackage
            try:
                gdal.VectorTranslate(vector_target, gullies)
            except RuntimeError as exc:
                raise GullySegError(f"OUTPUT_GULLIES: cannot write '{vector_target}': {exc}") from None
            finally:
                shutil.rmtree(tmpdir, ignore_errors=True)
            gullies = vector_target
        return {
            self.OUTPUT: output,
            self.OUTPUT_MASK: mask,
            self.OUTPUT_GULLIES: gullies,
            self.GULLY_FRACTION: result.gully_fraction,
            self.GULLY_COUNT: result.gully_count,
        }
