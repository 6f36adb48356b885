"""The graphical model as the Toolbox shows it: "Build a training dataset", inputs in workflow order
(scene first), no Advanced box with nothing useful in it."""

from gullyseg import compat


def test_model_name_order_and_no_advanced_box(provider):
    alg = provider.algorithm("builddataset")
    assert alg.id() == "gullyseg:builddataset"  # the id scripts use is unchanged
    instance = alg.create()  # what the Toolbox dialog runs
    for model in (alg, instance):
        assert model.displayName() == "Build a training dataset"
    inputs = [p.parameterName() for p in instance.orderedParameters()]
    assert inputs == ["scene", "tile_size", "label_polygons", "labelme_folder", "ratios", "seed", "copies"]
    advanced = [p.name() for p in instance.parameterDefinitions() if p.flags() & compat.FLAG_ADVANCED]
    assert advanced == [], advanced  # no Advanced box (it held only the tile index's path)
    ok, problems = instance.validate()
    assert ok, problems
