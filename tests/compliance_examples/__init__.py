"""One module per algorithm id: ``parameters(tmp_path, scene)`` returns valid parameters for a
small real run, and optional ``check(results, tmp_path)`` asserts on the outputs.

``scene`` is a callable ``scene(name="scene", **kwargs) -> path`` that writes a small synthetic
EPSG:32606 scene (see tests/conftest.py).
"""
