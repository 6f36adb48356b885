"""Every algorithm of the provider follows the same rules (ids, help, outputs, instances, runs)."""

import importlib.util
import re
from pathlib import Path

import pytest
from qgis.core import QgsProcessingDestinationParameter

from gullyseg.processing.provider import algorithm_classes

# Stable ids: saved models and scripts refer to them. Never rename one.
EXPECTED_IDS = {
    "gridtiles",
    "syntheticscene",
    "exportlabelme",
    "rasterizelabels",
    "splitdataset",
    "augment",
    "segment",
    "setmodelmetadata",
    "evaluate",
    "trainmodel",
    "comparemodels",
    "segmentmany",
    "screeningreport",
}

ALGORITHMS = [cls() for cls in algorithm_classes()]
IDS = [alg.name() for alg in ALGORITHMS]


def test_expected_algorithms_present():
    missing = EXPECTED_IDS - set(IDS)
    assert not missing, f"algorithms missing from the provider: {sorted(missing)}"


def test_provider_offers_every_algorithm(provider):
    offered = {alg.name() for alg in provider.algorithms()}
    assert set(IDS) <= offered


@pytest.mark.parametrize("alg", ALGORITHMS, ids=IDS)
def test_id_help_and_group(alg):
    assert re.fullmatch(r"[a-z][a-z0-9]*", alg.name()), alg.name()
    assert alg.displayName() and alg.displayName()[0].isupper()
    assert alg.group() and re.fullmatch(r"[a-z]+", alg.groupId())
    help_text = alg.shortHelpString()
    assert help_text and len(help_text) > 80, "every algorithm needs a real help text"


@pytest.mark.parametrize("alg", ALGORITHMS, ids=IDS)
def test_parameters_and_outputs(alg, qgis_app):
    alg.initAlgorithm({})
    keys = [p.name() for p in alg.parameterDefinitions()]
    assert keys and len(keys) == len(set(keys))
    for key in keys:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", key), f"parameter key {key} is not an upper-case constant"
        assert getattr(type(alg), key, None) == key, f"{key} is not a class constant of {type(alg).__name__}"
    outputs = {o.name() for o in alg.outputDefinitions()}
    for param in alg.parameterDefinitions():
        if isinstance(param, QgsProcessingDestinationParameter):
            assert param.name() in outputs, f"destination {param.name()} is not declared as an output"


@pytest.mark.parametrize("alg", ALGORITHMS, ids=IDS)
def test_create_instance_returns_new_object(alg):
    other = alg.createInstance()
    assert other is not alg and type(other) is type(alg)


def _example(alg_id):
    path = Path(__file__).parent / "compliance_examples" / f"{alg_id}.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"compliance_example_{alg_id}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("alg_id", IDS)
def test_runs_as_child_algorithm(alg_id, tmp_path, run_alg, scene_factory):
    """processing.run with is_child_algorithm=True, on real inputs, as a model would call it."""
    from qgis import processing
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback, QgsProject

    example = _example(alg_id)
    assert example is not None, f"tests/compliance_examples/{alg_id}.py is missing"
    params = example.parameters(tmp_path, scene_factory)
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    results = processing.run(
        f"gullyseg:{alg_id}", params, feedback=QgsProcessingFeedback(), context=context, is_child_algorithm=True
    )
    assert results
    if hasattr(example, "check"):
        example.check(results, tmp_path)


def test_readme_table_lists_every_algorithm():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for alg in ALGORITHMS:
        assert f"| `{alg.name()}` | {alg.displayName()} |" in readme, f"README's algorithm table lacks {alg.name()}"
