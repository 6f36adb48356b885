"""Layers from the Toolbox, batch runs and graphical models get the dock's styles and run names.

processing.runAndLoadResults is the Toolbox's path: the algorithm runs, then QGIS's
handleAlgorithmResults loads the outputs into the project and calls the post-processors."""

from pathlib import Path

import pytest
from qgis.core import QgsProject, QgsRasterLayer, QgsVectorLayer

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "resources" / "models" / "gullyseg_demo_unet.onnx"


@pytest.fixture
def project(qgis_new_project):
    yield QgsProject.instance()
    QgsProject.instance().clear()


def _layers_by_name(project):
    return {layer.name(): layer for layer in project.mapLayers().values()}


def test_segment_from_the_toolbox_is_styled_and_named(provider, project, scene_factory, tmp_path):
    from qgis import processing

    scene = scene_factory("styled", width=256, height=256, seed=2)
    layer = QgsRasterLayer(str(scene), "valley scene")
    assert project.addMapLayer(layer) is layer
    params = {"INPUT": layer.id(), "MODEL": str(DEMO_MODEL),
              "OUTPUT_PROBABILITY": str(tmp_path / "p.tif"), "OUTPUT_MASK": str(tmp_path / "m.tif"),
              "OUTPUT_POLYGONS": str(tmp_path / "g.gpkg")}
    processing.runAndLoadResults("gullyseg:segment", params)
    processing.runAndLoadResults("gullyseg:segment", dict(params, OUTPUT_PROBABILITY=str(tmp_path / "p2.tif"),
                                                          OUTPUT_MASK=str(tmp_path / "m2.tif"),
                                                          OUTPUT_POLYGONS=str(tmp_path / "g2.gpkg")))
    names = _layers_by_name(project)
    stem = "valley scene · gullyseg_demo_unet"
    for what in ("probability", "mask", "polygons"):
        assert f"{stem} · {what}" in names, sorted(names)
        assert f"{stem} · {what} (2)" in names, sorted(names)  # a counter when repeated
    mask = names[f"{stem} · mask"]
    assert mask.renderer().type() == "paletted"
    classes = {c.value: c for c in mask.renderer().classes()}
    assert classes[0].color.alpha() == 0  # background transparent: the map is not turned black
    probability = names[f"{stem} · probability"]
    assert probability.renderer().type() == "singlebandpseudocolor"
    items = probability.renderer().shader().rasterShaderFunction().colorRampItemList()
    assert items[0].label == "0" and items[-1].label in ("1", "1.0")
    polygons = names[f"{stem} · polygons"]
    reference = QgsVectorLayer(str(tmp_path / "g.gpkg"), "reference", "ogr")  # styled by hand, as the dock does
    reference.loadNamedStyle(str(ROOT / "resources" / "styles" / "gully_polygons.qml"))
    got, want = polygons.renderer().symbol(), reference.renderer().symbol()
    assert [lyr.properties() for lyr in got.symbolLayers()] == [lyr.properties() for lyr in want.symbolLayers()]
    default = QgsVectorLayer(str(tmp_path / "g.gpkg"), "unstyled", "ogr")
    assert [lyr.properties() for lyr in default.renderer().symbol().symbolLayers()] != \
        [lyr.properties() for lyr in want.symbolLayers()]  # the style is not QGIS's random default


def test_gridtiles_index_from_the_toolbox_is_styled_by_status(provider, project, scene_factory, tmp_path):
    from qgis import processing

    scene = scene_factory("styled_tiles", width=256, height=256, seed=2)
    processing.runAndLoadResults("gullyseg:gridtiles", {"INPUT": str(scene), "TILE_SIZE": 128,
                                                        "OUTPUT_DIR": str(tmp_path / "valley_ds")})
    index = [lyr for lyr in project.mapLayers().values() if lyr.source().split("|")[0].endswith("index.gpkg")]
    assert len(index) == 1
    assert index[0].renderer().type() == "categorizedSymbol"
    assert index[0].renderer().classAttribute() == "status"
    assert "valley_ds" in index[0].name()


def test_help_urls_and_placeholders(provider):
    import re

    from gullyseg.processing.algorithms.base import DOCS_BASE_URL

    for alg in provider.algorithms():
        if not hasattr(alg, "ALG_ID"):
            continue  # graphical models
        url = alg.helpUrl()
        assert url.startswith(DOCS_BASE_URL), alg.id()
        path, _, anchor = url[len(DOCS_BASE_URL):].partition("#")
        if not (ROOT / path).exists():
            continue  # another helper's docs page (training, scale) not in this branch yet
        if anchor:
            headings = [line.lstrip("#").strip() for line in (ROOT / path).read_text(encoding="utf-8").splitlines()
                        if line.startswith("#")]
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
            assert anchor in slugs, (alg.id(), anchor, sorted(slugs))
        text = alg.shortHelpString()
        assert not re.search(r"<(?!/?(b|i|br)\b)[^<>]*>", text), (alg.id(), text)
    gridtiles = [a for a in provider.algorithms() if a.name() == "gridtiles"][0]
    assert "&lt;dataset folder&gt;" in gridtiles.parameterDefinition("OUTPUT_INDEX").description() or \
        "&lt;" in gridtiles.shortHelpString()


def test_help_speaks_of_on_screen_labels(provider):
    import re

    for alg in provider.algorithms():
        if not hasattr(alg, "ALG_ID"):
            continue
        text = alg.shortHelpString()
        for key in re.findall(r"<b>([A-Z][A-Z0-9_]*)</b>", text):
            assert alg.parameterDefinition(key) is None and alg.outputDefinition(key) is None, (alg.id(), key)
    gridtiles = [a for a in provider.algorithms() if a.name() == "gridtiles"][0]
    label = gridtiles.parameterDefinition("OVERWRITE").description()
    assert f"<b>{label}</b> (OVERWRITE)" in gridtiles.shortHelpString()


@pytest.mark.slow
def test_graphical_model_outputs_are_styled_too(provider, project, scene_factory, tmp_path):
    """The model's tile index (a child's output) gets the status style when the model's results load."""
    from qgis import processing

    scene = scene_factory("styled_model", width=512, height=256, seed=21)
    gullies = str(scene).replace(".tif", "_gullies.gpkg")
    processing.runAndLoadResults("gullyseg:builddataset", {
        "scene": str(scene), "label_polygons": gullies, "ratios": "2:1:1", "seed": 5, "copies": 1,
        "grid:DATASET": str(tmp_path / "model_ds"), "grid:INDEX": str(tmp_path / "model_ds" / "index.gpkg")})
    index = [lyr for lyr in project.mapLayers().values() if lyr.source().split("|")[0].endswith("index.gpkg")]
    assert len(index) == 1
    assert index[0].renderer().type() == "categorizedSymbol" and index[0].renderer().classAttribute() == "status"
    assert "model_ds" in index[0].name()
