"""gullyseg:rasterizelabels - Rasterize labels to tile masks (step 4): Labelme JSON and/or polygons."""

from qgis.core import (
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorLayer,
)

from ... import compat
from ..engine import labelme, rasterize
from ..engine.errors import GullySegError
from .base import GROUP_DATASET, GullySegAlgorithm, features_in_crs
from .exportlabelme import index_crs, index_path


class RasterizeLabelsAlgorithm(GullySegAlgorithm):
    ALG_ID = "rasterizelabels"
    DISPLAY_NAME = "Rasterize labels to tile masks"
    GROUP = GROUP_DATASET
    HELP = (
        "Step 4 of the GullySeg workflow: burns Labelme annotations and/or polygons into one mask per tile, "
        "with GDAL, on each tile's exact grid: masks/&lt;tile_id&gt;.tif are uint8, one band, with the tile's "
        "size, geotransform and CRS; 0 background, 1.. classes, IGNORE_VALUE (255, also the nodata value) "
        "for __ignore__. The index gets gully_frac (share of gully pixels among labelled pixels) and the mask "
        "path; the dataset card records the class map, ignore value and burn rule.<br><br>"
        "<b>TILES</b>: the tile index. <b>LABELME_DIR</b>: Labelme JSON files (default &lt;dataset&gt;/labelme), "
        "matched to tiles by file name or imagePath. Every Labelme shape type is burnt: polygon, rectangle, "
        "circle, line and linestrip (LINE_WIDTH pixels wide), point (a disc of POINT_RADIUS pixels) and mask "
        "(its PNG pixels). Coordinates are pixel-corner based; shapes burn in file order, later over earlier, "
        "as in Labelme. <b>VECTOR</b>: optional polygons in any CRS (reprojected to the tiles' CRS), with an "
        "optional <b>CLASS_FIELD</b> (label names looked up in CLASSES, or integer values); without it every "
        "polygon is the first class. With VECTOR every tile gets a mask (only kept tiles once any tile is "
        "marked keep), because tiles without gullies are negative samples. Polygons burn first, Labelme "
        "shapes over them.<br><br>"
        "<b>CLASSES</b>: label=value pairs, default gully=1 (e.g. gully=1,dam_land=2,cloud=ignore), or the "
        "path of a Labelme labels.txt (its ids, as labelme2voc.py). _background_ is 0 and __ignore__ is "
        "IGNORE_VALUE. <b>UNKNOWN_LABELS</b>: a label not in CLASSES is an error listing the labels and "
        "files, or (skip) a warning and the shape is left out. <b>ALL_TOUCHED</b>: false = GDAL's pixel-centre "
        "rule, as gdal_rasterize; true = every touched pixel. <b>IGNORE_NODATA</b>: pixels where the tile's "
        "image has no data become IGNORE_VALUE.<br><br>"
        "Problems (invalid JSON, a file with no tile, an image size that differs from the tile, a polygon "
        "with fewer than 3 points, unknown labels or shape types, points outside the tile: clipped, warning) "
        "are listed with file and shape index in the log and in OUTPUT_REPORT (CSV, or JSON by extension). "
        "<b>STRICT</b> (default): any error stops the run before a mask is written; otherwise the bad files "
        "are skipped and the rest done. Existing masks are replaced only with <b>OVERWRITE</b>."
    )

    TILES = "TILES"
    LABELME_DIR = "LABELME_DIR"
    VECTOR = "VECTOR"
    CLASS_FIELD = "CLASS_FIELD"
    CLASSES = "CLASSES"
    IGNORE_VALUE = "IGNORE_VALUE"
    UNKNOWN_LABELS = "UNKNOWN_LABELS"
    ALL_TOUCHED = "ALL_TOUCHED"
    LINE_WIDTH = "LINE_WIDTH"
    POINT_RADIUS = "POINT_RADIUS"
    STRICT = "STRICT"
    IGNORE_NODATA = "IGNORE_NODATA"
    OVERWRITE = "OVERWRITE"
    OUTPUT_DIR = "OUTPUT_DIR"
    OUTPUT_REPORT = "OUTPUT_REPORT"
    MASK_COUNT = "MASK_COUNT"
    PROBLEM_COUNT = "PROBLEM_COUNT"
    ERROR_COUNT = "ERROR_COUNT"
    SKIPPED_FILES = "SKIPPED_FILES"

    UNKNOWN_OPTIONS = ["error", "skip"]

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterVectorLayer(
            self.TILES, self.tr("Tile index (index.gpkg of a dataset folder)"), [compat.TYPE_VECTOR_POLYGON]))
        self.addParameter(QgsProcessingParameterFile(
            self.LABELME_DIR, self.tr("Labelme folder (default <dataset>/labelme)"), behavior=compat.FILE_FOLDER,
            optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.VECTOR, self.tr("Label polygons (any CRS)"), [compat.TYPE_VECTOR_POLYGON], optional=True))
        self.addParameter(QgsProcessingParameterField(
            self.CLASS_FIELD, self.tr("Class field of the polygons"), parentLayerParameterName=self.VECTOR,
            optional=True))
        self.addParameter(QgsProcessingParameterString(
            self.CLASSES, self.tr("Classes (label=value, ... or a labels.txt path)"), defaultValue="gully=1"))
        self.addParameter(QgsProcessingParameterNumber(
            self.IGNORE_VALUE, self.tr("Ignore value"), compat.NUMBER_INTEGER,
            defaultValue=labelme.DEFAULT_IGNORE_VALUE, minValue=0, maxValue=255))
        self.addParameter(QgsProcessingParameterEnum(
            self.UNKNOWN_LABELS, self.tr("Labels not in the class map"), options=self.UNKNOWN_OPTIONS,
            defaultValue=0))
        self.addParameter(QgsProcessingParameterBoolean(
            self.ALL_TOUCHED, self.tr("Burn every touched pixel (ALL_TOUCHED)"), defaultValue=False))
        self.addParameter(QgsProcessingParameterNumber(
            self.LINE_WIDTH, self.tr("Line width for line/linestrip shapes (pixels)"), compat.NUMBER_DOUBLE,
            defaultValue=10.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.POINT_RADIUS, self.tr("Radius of point shapes (pixels)"), compat.NUMBER_DOUBLE,
            defaultValue=5.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterBoolean(
            self.STRICT, self.tr("Strict: stop before writing if any file has an error"), defaultValue=True))
        nodata = QgsProcessingParameterBoolean(
            self.IGNORE_NODATA, self.tr("Image nodata pixels burn the ignore value"), defaultValue=True)
        nodata.setFlags(nodata.flags() | compat.FLAG_ADVANCED)
        self.addParameter(nodata)
        self.addParameter(QgsProcessingParameterBoolean(
            self.OVERWRITE, self.tr("Overwrite existing masks"), defaultValue=False))
        out = QgsProcessingParameterFolderDestination(
            self.OUTPUT_DIR, self.tr("Mask folder (default <dataset>/masks)"), optional=True, createByDefault=False)
        out.setFlags(out.flags() | compat.FLAG_ADVANCED)
        self.addParameter(out)
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT_REPORT, self.tr("Problem report"), fileFilter="CSV (*.csv);;JSON (*.json)", optional=True))
        self.addOutput(QgsProcessingOutputNumber(self.MASK_COUNT, self.tr("Masks written")))
        self.addOutput(QgsProcessingOutputNumber(self.PROBLEM_COUNT, self.tr("Problems (errors and warnings)")))
        self.addOutput(QgsProcessingOutputNumber(self.ERROR_COUNT, self.tr("Errors")))
        self.addOutput(QgsProcessingOutputNumber(self.SKIPPED_FILES, self.tr("Labelme files skipped")))

    def execute(self, parameters, context, feedback):
        path = index_path(self, parameters, context, self.TILES)
        classes = labelme.parse_class_map(
            self.parameterAsString(parameters, self.CLASSES, context),
            self.parameterAsInt(parameters, self.IGNORE_VALUE, context))
        vector = None
        if parameters.get(self.VECTOR) not in (None, ""):
            source = self.parameterAsSource(parameters, self.VECTOR, context)
            if source is None:
                raise GullySegError(f"VECTOR: cannot load '{parameters.get(self.VECTOR)}'.")
            field = self.parameterAsString(parameters, self.CLASS_FIELD, context) or None
            if field and source.fields().indexOf(field) < 0:
                raise GullySegError(f"CLASS_FIELD: the layer has no field '{field}'.")
            crs, _ = index_crs(path)
            vector = list(features_in_crs(source, crs, context, self.VECTOR, field))
            if not field:
                default = classes.first_class()[0]
                vector = [(wkt, default) for wkt, _ in vector]
                feedback.pushInfo(f"VECTOR: no CLASS_FIELD; every polygon is '{default}'.")
        output_dir = self.parameterAsString(parameters, self.OUTPUT_DIR, context) or None
        report = self.parameterAsFileOutput(parameters, self.OUTPUT_REPORT, context) or None
        result = rasterize.rasterize_labels(
            path,
            labelme_dir=self.parameterAsFile(parameters, self.LABELME_DIR, context) or None,
            vector=vector,
            classes=classes,
            all_touched=self.parameterAsBoolean(parameters, self.ALL_TOUCHED, context),
            line_width=self.parameterAsDouble(parameters, self.LINE_WIDTH, context),
            point_radius=self.parameterAsDouble(parameters, self.POINT_RADIUS, context),
            output_dir=self.output_folder(output_dir),
            strict=self.parameterAsBoolean(parameters, self.STRICT, context),
            unknown_labels=self.UNKNOWN_OPTIONS[self.parameterAsEnum(parameters, self.UNKNOWN_LABELS, context)],
            ignore_nodata=self.parameterAsBoolean(parameters, self.IGNORE_NODATA, context),
            overwrite=self.parameterAsBoolean(parameters, self.OVERWRITE, context),
            report_path=report,
            feedback=self.engine_feedback(feedback),
        )
        return {
            self.OUTPUT_DIR: result.output_dir,
            self.OUTPUT_REPORT: result.report,
            self.MASK_COUNT: result.mask_count,
            self.PROBLEM_COUNT: result.problem_count,
            self.ERROR_COUNT: result.error_count,
            self.SKIPPED_FILES: result.skipped_files,
        }
