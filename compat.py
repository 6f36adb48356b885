"""QGIS 3.22 -> 3.40 -> 4.x and Qt5/Qt6 API shims. The rest of the code imports from here.

QGIS moved many enums from their classes into ``Qgis`` (3.26-3.38) and Qt6 drops unscoped
enum access and ``QVariant`` field types. Each name below resolves to whatever the running
QGIS offers, newest first.
"""

from qgis.core import (
    Qgis,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QT_VERSION_STR

QT6 = QT_VERSION_STR.startswith("6")

try:  # QAction is in QtGui in Qt6 (QGIS 4), in QtWidgets in Qt5
    from qgis.PyQt.QtGui import QAction
except ImportError:
    from qgis.PyQt.QtWidgets import QAction  # noqa: F401, QT605 (Qt5 fallback)


def _pick(new_owner, new_path, old_owner, old_name):
    """``new_owner.<new_path>`` if it exists (dotted), else ``old_owner.<old_name>``."""
    obj = new_owner
    try:
        for part in new_path.split("."):
            obj = getattr(obj, part)
        return obj
    except AttributeError:
        return getattr(old_owner, old_name)


# Processing source (layer) types
TYPE_VECTOR_POLYGON = _pick(Qgis, "ProcessingSourceType.VectorPolygon", QgsProcessing, "TypeVectorPolygon")
TYPE_VECTOR_ANY = _pick(Qgis, "ProcessingSourceType.VectorAnyGeometry", QgsProcessing, "TypeVectorAnyGeometry")
TYPE_VECTOR_LINE = _pick(Qgis, "ProcessingSourceType.VectorLine", QgsProcessing, "TypeVectorLine")
TYPE_RASTER = _pick(Qgis, "ProcessingSourceType.Raster", QgsProcessing, "TypeRaster")
TYPE_FILE = _pick(Qgis, "ProcessingSourceType.File", QgsProcessing, "TypeFile")

# Parameter details
NUMBER_INTEGER = _pick(Qgis, "ProcessingNumberParameterType.Integer", QgsProcessingParameterNumber, "Integer")
NUMBER_DOUBLE = _pick(Qgis, "ProcessingNumberParameterType.Double", QgsProcessingParameterNumber, "Double")
FILE_FILE = _pick(Qgis, "ProcessingFileParameterBehavior.File", QgsProcessingParameterFile, "File")
FILE_FOLDER = _pick(Qgis, "ProcessingFileParameterBehavior.Folder", QgsProcessingParameterFile, "Folder")
FLAG_ADVANCED = _pick(Qgis, "ProcessingParameterFlag.Advanced", QgsProcessingParameterDefinition, "FlagAdvanced")
FLAG_OPTIONAL = _pick(Qgis, "ProcessingParameterFlag.Optional", QgsProcessingParameterDefinition, "FlagOptional")
ALG_FLAG_NO_THREADING = _pick(Qgis, "ProcessingAlgorithmFlag.NoThreading", QgsProcessingAlgorithm, "FlagNoThreading")

# Geometry
GEOMETRY_POLYGON = _pick(Qgis, "GeometryType.Polygon", QgsWkbTypes, "PolygonGeometry")
WKB_MULTIPOLYGON = _pick(Qgis, "WkbType.MultiPolygon", QgsWkbTypes, "MultiPolygon")
WKB_POLYGON = _pick(Qgis, "WkbType.Polygon", QgsWkbTypes, "Polygon")

# Message levels (Qgis.MessageLevel exists in 3.22 already)
MSG_INFO = _pick(Qgis, "MessageLevel.Info", Qgis, "Info")
MSG_WARNING = _pick(Qgis, "MessageLevel.Warning", Qgis, "Warning")
MSG_CRITICAL = _pick(Qgis, "MessageLevel.Critical", Qgis, "Critical")
MSG_SUCCESS = _pick(Qgis, "MessageLevel.Success", Qgis, "Success")


def field_type(kind):
    """QgsField type for 'string', 'int', 'double', 'bool' (QMetaType on 3.38+/Qt6, QVariant before)."""
    from qgis.PyQt.QtCore import QMetaType

    if Qgis.QGIS_VERSION_INT >= 33800 or QT6:
        names = {"string": "QString", "int": "Int", "double": "Double", "bool": "Bool", "int64": "LongLong"}
        return getattr(QMetaType.Type, names[kind])
    from qgis.PyQt.QtCore import QVariant

    names = {"string": "String", "int": "Int", "double": "Double", "bool": "Bool", "int64": "LongLong"}
    return getattr(QVariant, names[kind])


def make_field(name, kind, length=0, precision=0):
    """A QgsField built without the QVariant/QMetaType split showing at call sites."""
    from qgis.core import QgsField

    return QgsField(name, field_type(kind), "", length, precision)


def exec_dialog(dialog):
    """``exec_()`` on Qt5, ``exec()`` on Qt6."""
    return dialog.exec() if hasattr(dialog, "exec") else dialog.exec_()  # noqa: QGS107, QT602 (Qt5 fallback)


# Layer filters for QgsMapLayerComboBox (Qgis.LayerFilter from 3.34; QgsMapLayerProxyModel before)
def _layer_filter(name):
    from qgis.core import QgsMapLayerProxyModel

    return _pick(Qgis, f"LayerFilter.{name}", QgsMapLayerProxyModel, name)


LAYER_FILTER_POLYGON = _layer_filter("PolygonLayer")
LAYER_FILTER_RASTER = _layer_filter("RasterLayer")
