"""gullyseg:exportlabelme - Export tiles for Labelme (step 3): JSON + JPEG per tile, labels.txt."""

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorLayer,
)

from ... import compat
from ..engine import dataset, rasterize
from ..engine.errors import GullySegError
from .base import GROUP_DATASET, GullySegAlgorithm, features_in_crs


def index_path(alg, parameters, context, key="TILES"):
    """File path of the tile index given as a layer or a path ('...gpkg|layername=tiles' -> '...gpkg')."""
    layer = alg.parameterAsVectorLayer(parameters, key, context)
    if layer is None:
        raise GullySegError(f"{key}: cannot load the tile index '{parameters.get(key)}'.")
    if layer.providerType() != "ogr":
        raise GullySegError(f"{key}: layer '{layer.name()}' is not a file (provider {layer.providerType()}); "
                            "give the index.gpkg of a dataset folder.")
    return layer.source().split("|")[0]


def index_crs(path):
    """The tile index's CRS as a QgsCoordinateReferenceSystem (read with the engine, QGIS-free)."""
    _, wkt = dataset.read_index(path)
    crs = QgsCoordinateReferenceSystem.fromWkt(wkt) if wkt else QgsCoordinateReferenceSystem()
    if not crs.isValid():
        raise GullySegError(f"TILES: the tile index '{path}' has no valid CRS.")
    return crs, wkt


class ExportLabelmeAlgorithm(GullySegAlgorithm):
    ALG_ID = "exportlabelme"
    DISPLAY_NAME = "Export tiles for Labelme"
    GROUP = GROUP_DATASET
    HELP = (
        "Step 3 of the GullySeg workflow: prepares the kept tiles of a dataset folder for annotation in "
        "Labelme. For every tile it writes &lt;dataset&gt;/labelme/&lt;tile_id&gt;.json next to the tile's "
        "JPEG (a hard link to images/&lt;tile_id&gt;.jpg, or a JPEG made from the GeoTIFF), with "
        "imagePath relative, imageWidth/imageHeight set and imageData null, plus a labels.txt in Labelme's "
        "convention (__ignore__, _background_, then the class). Annotate with: "
        "labelme &lt;dataset&gt;/labelme --labels &lt;dataset&gt;/labelme/labels.txt --nodata --autosave<br><br>"
        "<b>TILES</b>: the tile index (index.gpkg) of a dataset folder made by 'Split raster into tiles'. "
        "<b>ONLY_KEPT</b>: only tiles whose status is keep (all tiles while nothing is screened yet). "
        "<b>PREFILL</b>: optional polygons in any CRS (earlier digitising, a model's output); they are "
        "reprojected, clipped to each tile and written as Labelme polygons in pixel coordinates, so "
        "annotators correct instead of starting from nothing. Labelme has no holes: a hole is written as a "
        "_background_ polygon after its polygon, which 'Rasterize labels to tile masks' burns as 0. "
        "<b>LABEL</b>: the class label of the prefilled polygons (default gully).<br><br>"
        "Existing JSON files are never overwritten (they are annotators' work): they are counted in "
        "SKIPPED_COUNT and left as they are."
    )

    TILES = "TILES"
    ONLY_KEPT = "ONLY_KEPT"
    PREFILL = "PREFILL"
    LABEL = "LABEL"
    OUTPUT_DIR = "OUTPUT_DIR"
    JSON_COUNT = "JSON_COUNT"
    SKIPPED_COUNT = "SKIPPED_COUNT"
    SHAPE_COUNT = "SHAPE_COUNT"
    LABELS_FILE = "LABELS_FILE"

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterVectorLayer(
            self.TILES, self.tr("Tile index (index.gpkg of a dataset folder)"), [compat.TYPE_VECTOR_POLYGON]))
        self.addParameter(QgsProcessingParameterBoolean(
            self.ONLY_KEPT, self.tr("Only tiles marked keep (all while nothing is screened)"), defaultValue=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.PREFILL, self.tr("Prefill with polygons (any CRS)"), [compat.TYPE_VECTOR_POLYGON], optional=True))
        self.addParameter(QgsProcessingParameterString(
            self.LABEL, self.tr("Label of the prefilled polygons"), defaultValue="gully"))
        out = QgsProcessingParameterFolderDestination(
            self.OUTPUT_DIR, self.tr("Labelme folder (default <dataset>/labelme)"), optional=True,
            createByDefault=False)
        out.setFlags(out.flags() | compat.FLAG_ADVANCED)
        self.addParameter(out)
        self.addOutput(QgsProcessingOutputNumber(self.JSON_COUNT, self.tr("Labelme files written")))
        self.addOutput(QgsProcessingOutputNumber(self.SKIPPED_COUNT, self.tr("Existing Labelme files kept")))
        self.addOutput(QgsProcessingOutputNumber(self.SHAPE_COUNT, self.tr("Prefilled shapes")))
        self.addOutput(QgsProcessingOutputFile(self.LABELS_FILE, self.tr("labels.txt")))

    def execute(self, parameters, context, feedback):
        path = index_path(self, parameters, context, self.TILES)
        prefill = None
        if parameters.get(self.PREFILL) not in (None, ""):
            source = self.parameterAsSource(parameters, self.PREFILL, context)
            if source is None:
                raise GullySegError(f"PREFILL: cannot load '{parameters.get(self.PREFILL)}'.")
            crs, _ = index_crs(path)
            prefill = [wkt for wkt, _ in features_in_crs(source, crs, context, self.PREFILL)]
        output_dir = self.parameterAsString(parameters, self.OUTPUT_DIR, context) or None
        result = rasterize.export_labelme(
            path,
            only_kept=self.parameterAsBoolean(parameters, self.ONLY_KEPT, context),
            prefill=prefill,
            label=self.parameterAsString(parameters, self.LABEL, context),
            output_dir=self.output_folder(output_dir),
            feedback=self.engine_feedback(feedback),
        )
        return {
            self.OUTPUT_DIR: result.output_dir,
            self.JSON_COUNT: result.json_count,
            self.SKIPPED_COUNT: result.skipped_count,
            self.SHAPE_COUNT: result.shape_count,
            self.LABELS_FILE: result.labels_file,
        }
