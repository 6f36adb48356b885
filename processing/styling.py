"""Styles and names for the layers GullySeg's algorithms produce, from every entry point (QGIS side).

The dock styles its own layers; layers that the Toolbox, a batch run or a graphical model load
are styled the same way through ``QgsProcessingLayerPostProcessorInterface``: after an algorithm
ran, ``attach(algorithm, results, context)`` (called from GullySegAlgorithm.postProcessAlgorithm)
finds each styled output among the context's layers to load on completion (by its path, so a
graphical model's outputs are found too) and gives it a post-processor that loads the style from
resources/styles/ and names the layer after the run ("scene · model · mask", with a counter when
the project already holds that name). qgis_process loads no layers: there is nothing to style.
"""

import os

from qgis.core import QgsProcessingLayerPostProcessorInterface, QgsProject

from ..metadata import resource_path

# (algorithm name, output key) -> (style file, what the layer is)
STYLED_OUTPUTS = {
    ("segment", "OUTPUT_PROBABILITY"): ("probability.qml", "probability"),
    ("segment", "OUTPUT_MASK"): ("mask.qml", "mask"),
    ("segment", "OUTPUT_POLYGONS"): ("gully_polygons.qml", "polygons"),
    ("gridtiles", "OUTPUT_INDEX"): ("tiles_status.qml", "tiles"),
    ("syntheticscene", "OUTPUT_MASK"): ("mask.qml", "truth mask"),
    ("syntheticscene", "OUTPUT_GULLIES"): ("gully_polygons.qml", "truth polygons"),
}

_ALIVE = []  # QGIS does not own Python post-processors: keep them alive until they ran


def style_path(algorithm_name, output_key):
    entry = STYLED_OUTPUTS.get((algorithm_name, output_key))
    return resource_path("styles", entry[0]) if entry else None


def unique_layer_name(name, project=None):
    """``name``, or ``name (2)``, ``name (3)`` … when the project already has a layer or group of that name."""
    project = project or QgsProject.instance()
    taken = {layer.name() for layer in project.mapLayers().values()}
    root = project.layerTreeRoot()
    taken |= {group.name() for group in root.findGroups(True)} if hasattr(root, "findGroups") else set()
    if name not in taken:
        return name
    n = 2
    while f"{name} ({n})" in taken:
        n += 1
    return f"{name} ({n})"


def run_label(*parts):
    """'scene · model': the names of what made a layer, without file extensions, empty parts dropped."""
    names = []
    for part in parts:
        if not part:
            continue
        text = str(part)
        if os.path.sep in text or text.lower().endswith((".onnx", ".tif", ".tiff", ".gpkg", ".vrt")):
            text = os.path.splitext(os.path.basename(text))[0]
        names.append(text)
    return " · ".join(names)


class StylePostProcessor(QgsProcessingLayerPostProcessorInterface):
    """Loads a .qml style and sets the layer's name once the layer is in the project."""

    def __init__(self, style, name=None):
        super().__init__()
        self.style = style
        self.name = name

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 (QGIS API name)
        if layer is None or not layer.isValid():
            return
        if self.style and os.path.exists(self.style):
            _message, ok = layer.loadNamedStyle(self.style)
            if not ok and feedback is not None:
                feedback.pushWarning(f"The style {os.path.basename(self.style)} could not be applied to {layer.name()}")
            layer.triggerRepaint()
        if self.name:
            project = context.project() if context is not None and context.project() else QgsProject.instance()
            layer.setName(unique_layer_name(self.name, project) if layer.name() != self.name else self.name)

    @classmethod
    def create(cls, style, name=None):
        instance = cls(style, name)
        _ALIVE.append(instance)
        del _ALIVE[:-64]  # a bounded keep-alive list (the newest 64)
        return instance


def _same_file(a, b):
    try:
        return os.path.normcase(os.path.abspath(str(a))) == os.path.normcase(os.path.abspath(str(b)))
    except (TypeError, ValueError):
        return False


def attach(algorithm_name, results, context, label=""):
    """Give the styled outputs in ``results`` a post-processor in ``context``. Returns the keys styled."""
    if context is None or not results:
        return []
    pending = context.layersToLoadOnCompletion()
    done = []
    for key, value in results.items():
        entry = STYLED_OUTPUTS.get((algorithm_name, key))
        if entry is None or not value or not isinstance(value, str):
            continue
        style, what = resource_path("styles", entry[0]), entry[1]
        for layer_ref in pending:
            if layer_ref == value or _same_file(layer_ref.split("|")[0], value.split("|")[0]):
                details = context.layerToLoadOnCompletionDetails(layer_ref)
                name = f"{label} · {what}" if label else None
                details.setPostProcessor(StylePostProcessor.create(style, name))
                done.append(key)
                break
    return done


def label_for(algorithm, parameters, context):
    """What made the run, for layer names: the input layer's name and the model's file name (segment),
    the dataset folder's name (gridtiles), '' when nothing says more than the output's own name."""
    if not parameters:
        return ""
    parts = []
    if algorithm.parameterDefinition("INPUT") is not None and parameters.get("INPUT") is not None:
        try:
            layer = algorithm.parameterAsLayer(parameters, "INPUT", context)
        except Exception:  # noqa: BLE001
            layer = None
        parts.append(layer.name() if layer is not None else parameters.get("INPUT"))
    if algorithm.parameterDefinition("MODEL") is not None:
        parts.append(parameters.get("MODEL"))
    if algorithm.ALG_ID == "gridtiles":
        folder = parameters.get("OUTPUT_DIR")
        parts.append(os.path.basename(os.path.normpath(str(folder))) if folder else "")
    if algorithm.ALG_ID == "syntheticscene":
        parts.append(f"synthetic scene (seed {parameters.get('SEED', '?')})")
    return run_label(*parts)
