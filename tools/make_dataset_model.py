#!/usr/bin/env python3
"""Write resources/models/gullyseg_dataset.model3, the graphical model that chains
gridtiles -> rasterizelabels -> splitdataset -> augment (workflow steps 1, 4, 6, 5).

    .venv/bin/python tools/make_dataset_model.py [--out resources/models/gullyseg_dataset.model3]

The model is built with PyQGIS's QgsProcessingModelAlgorithm API (headless) and validated
against the provider's algorithms, so the XML is what the Graphical Modeler itself writes. Open
it in the Modeler to change it; re-run this script to regenerate the shipped version.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gullyseg_cli import ROOT, register_package

MODEL_PATH = ROOT / "resources" / "models" / "gullyseg_dataset.model3"
MODEL_NAME = "builddataset"  # stable: the algorithm id is gullyseg:builddataset
HELP = (
    "Builds a training dataset from a scene and label polygons in one run: GullySeg's grid division "
    "(gridtiles: 256 x 256 tiles and the tile index), label rasterisation (rasterizelabels: the polygons "
    "and/or Labelme files of the dataset folder become one mask per tile on the tile's exact grid), a "
    "leak-free split (splitdataset: train/val/test by source tile, stratified by gully share) and "
    "augmentation of the train split (augment). Screening is a person's job in the GullySeg dock: run the "
    "steps one by one when tiles are screened; this model keeps every tile (the tiles without gully are the "
    "negative samples a model needs). The dataset folder is the model's output (on the command line its "
    "key is grid:DATASET; grid:INDEX is the tile index, by default &lt;dataset folder&gt;/index.gpkg)."
)


def build(path):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    register_package()
    from qgis.core import (
        QgsApplication,
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildDependency,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterFile,
        QgsProcessingParameterNumber,
        QgsProcessingParameterRasterLayer,
        QgsProcessingParameterString,
        QgsProcessingParameterVectorLayer,
    )
    from qgis.PyQt.QtCore import QPointF

    from gullyseg import compat
    from gullyseg.processing.provider import GullySegProvider

    app = QgsApplication.instance()
    if app is None:
        QgsApplication.setPrefixPath("/usr", True)
        app = QgsApplication([], False)
        app.initQgis()
    provider = GullySegProvider()
    QgsApplication.processingRegistry().addProvider(provider)

    model = QgsProcessingModelAlgorithm(MODEL_NAME, "GullySeg")
    model.setName(MODEL_NAME)
    model.setGroup("Workflow")
    model.setHelpContent({"ALG_DESC": HELP, "ALG_CREATOR": "GullySeg", "ALG_VERSION": "1"})

    src = QgsProcessingModelChildParameterSource
    y = 60.0

    def param(definition, x, y):
        comp = QgsProcessingModelParameter(definition.name())
        comp.setPosition(QPointF(x, y))
        model.addModelParameter(definition, comp)

    param(QgsProcessingParameterRasterLayer("scene", "Scene (raster)"), 120, y)
    param(QgsProcessingParameterVectorLayer(
        "label_polygons", "Gully polygons (labels, any CRS; optional when the dataset has Labelme files)",
        [compat.TYPE_VECTOR_POLYGON], optional=True), 360, y)
    param(QgsProcessingParameterFile("labelme_folder", "Labelme folder (optional; default <dataset>/labelme)",
                                     behavior=compat.FILE_FOLDER, optional=True), 600, y)
    param(QgsProcessingParameterNumber("tile_size", "Tile size (pixels)", compat.NUMBER_INTEGER, 256, False, 16),
          840, y)
    param(QgsProcessingParameterString("ratios", "Split ratios train:val:test", "6:2:2"), 120, y + 60)
    param(QgsProcessingParameterNumber("seed", "Random seed (split and augmentation)", compat.NUMBER_INTEGER, 42,
                                       False, 0), 360, y + 60)
    param(QgsProcessingParameterNumber("copies", "Augmented variants per train tile", compat.NUMBER_INTEGER, 4,
                                       False, 0), 600, y + 60)

    def output(name, description, child_id, child_output, y):
        out = QgsProcessingModelOutput(name, description)
        out.setChildId(child_id)
        out.setChildOutputName(child_output)
        out.setDescription(description)
        out.setPosition(QPointF(560, y))
        return out

    def child(alg_id, child_id, description, y, sources, depends=(), outputs=None):
        alg = QgsProcessingModelChildAlgorithm(alg_id)
        alg.setChildId(child_id)
        alg.setDescription(description)
        alg.setPosition(QPointF(300, y))
        for name, source in sources.items():
            alg.addParameterSources(name, [source])
        if depends:
            alg.setDependencies([QgsProcessingModelChildDependency(d) for d in depends])
        if outputs:
            alg.setModelOutputs(outputs)
        model.addChildAlgorithm(alg)

    # The tile index is a model output too: a temporary index (what the Modeler gives a linked
    # destination that is not an output) would leave the dataset folder without its index.
    index_text = "Tile index (default <dataset folder>/index.gpkg)"
    child("gullyseg:gridtiles", "grid", "1 Split raster into tiles", 240,
          {"INPUT": src.fromModelParameter("scene"), "TILE_SIZE": src.fromModelParameter("tile_size")},
          outputs={"DATASET": output("DATASET", "Dataset folder", "grid", "OUTPUT_DIR", 240),
                   "INDEX": output("INDEX", index_text, "grid", "OUTPUT_INDEX", 290)})
    child("gullyseg:rasterizelabels", "labels", "2 Rasterize labels to tile masks", 340,
          {"TILES": src.fromChildOutput("grid", "OUTPUT_INDEX"), "VECTOR": src.fromModelParameter("label_polygons"),
           "LABELME_DIR": src.fromModelParameter("labelme_folder")})
    child("gullyseg:splitdataset", "split", "3 Split dataset into train/val/test", 440,
          {"DATASET": src.fromChildOutput("grid", "OUTPUT_DIR"), "RATIOS": src.fromModelParameter("ratios"),
           "SEED": src.fromModelParameter("seed")}, depends=["labels"])
    child("gullyseg:augment", "augment", "4 Augment image/mask pairs (train split)", 540,
          {"DATASET": src.fromChildOutput("split", "OUTPUT_DIR"), "COPIES": src.fromModelParameter("copies"),
           "SEED": src.fromModelParameter("seed")})

    # Mandatory parameters that the chain does not feed get their algorithm's default, as the
    # Modeler does when a child is added.
    registry = QgsApplication.processingRegistry()
    for child in model.childAlgorithms().values():
        alg = registry.algorithmById(child.algorithmId())
        if alg is None:
            raise SystemExit(f"algorithm {child.algorithmId()} is not available")
        for definition in alg.parameterDefinitions():
            if definition.isDestination() or definition.name() in child.parameterSources():
                continue
            if definition.flags() & compat.FLAG_OPTIONAL:
                continue
            child.addParameterSources(definition.name(), [src.fromStaticValue(definition.defaultValue())])
        model.setChildAlgorithm(child)
    model.updateDestinationParameters()
    # the dialog lists inputs in workflow order (scene first), not alphabetically
    model.setParameterOrder(["scene", "tile_size", "label_polygons", "labelme_folder", "ratios", "seed", "copies"])
    ok, problems = model.validate()
    if not ok:
        raise SystemExit("the model does not validate:\n" + "\n".join(problems))
    if not model.toFile(str(path)):
        raise SystemExit(f"could not write {path}")
    QgsApplication.processingRegistry().removeProvider(provider)
    return str(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(MODEL_PATH))
    args = ap.parse_args(argv)
    print(build(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
