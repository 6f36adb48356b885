"""ui/deps.py: where QGIS's Python is, the pip command, the plugin's package folder (no QGIS needed).

The real installation (pip from the local index into a fresh folder, then inference from it) is
in tests/test_deps_dialog.py."""

import ntpath
import os

import pytest

from gullyseg.ui import deps

PY311 = (3, 11, 4, "final", 0)


def _exists_only(*paths):
    wanted = set(paths)
    return lambda path: path in wanted


def test_module_imports_no_qgis():
    import ast

    tree = ast.parse(open(deps.__file__, encoding="utf-8").read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"qgis", "PyQt5", "PyQt6"}


def test_packages_folder_is_per_python_version_inside_the_profile():
    folder = deps.packages_folder("/home/u/.local/share/QGIS/QGIS3/profiles/default", PY311)
    assert folder == "/home/u/.local/share/QGIS/QGIS3/profiles/default/python/gullyseg_packages/py3.11"


def test_find_python_linux_plain_interpreter():
    assert deps.find_python("/usr/bin/python3", "/usr", "linux", PY311, exists=_exists_only("/usr/bin/python3")) \
        == "/usr/bin/python3"


def test_find_python_linux_inside_qgis_binary():
    # QGIS's embedded Python: sys.executable is /usr/bin/qgis
    found = deps.find_python("/usr/bin/qgis", "/usr", "linux", PY311,
                             exists=_exists_only("/usr/bin/python3.11", "/usr/bin/python3"))
    assert found == "/usr/bin/python3.11"


def test_find_python_windows_osgeo4w_qgis_exe():
    executable = r"C:\OSGeo4W\bin\qgis-bin.exe"
    prefix = r"C:\OSGeo4W\apps\Python312"
    python = ntpath.join(prefix, "python.exe")
    found = deps.find_python(executable, prefix, "win32", (3, 12, 0), exists=_exists_only(python))
    assert found == r"C:\OSGeo4W\apps\Python312\python.exe"
    # sys.exec_prefix unhelpful: the apps\Python3x folder next to bin\ is found from the executable
    found = deps.find_python(executable, r"C:\OSGeo4W\bin", "win32", (3, 12, 0), exists=_exists_only(python))
    assert found == python
    assert r"C:\OSGeo4W\bin\qgis-bin.exe" not in deps.python_candidates(executable, prefix, "win32", (3, 12, 0))


def test_find_python_macos_app_bundle():
    executable = "/Applications/QGIS.app/Contents/MacOS/QGIS"
    prefix = "/Applications/QGIS.app/Contents/Frameworks/Python.framework/Versions/3.9"
    bundled = "/Applications/QGIS.app/Contents/MacOS/bin/python3"
    assert deps.find_python(executable, prefix, "darwin", (3, 9, 5), exists=_exists_only(bundled)) == bundled
    framework = prefix + "/bin/python3.9"
    assert deps.find_python(executable, prefix, "darwin", (3, 9, 5),
                            exists=_exists_only(bundled, framework)) == framework


def test_find_python_not_found_says_where_it_looked():
    with pytest.raises(deps.DependencyError, match=r"qgis-bin.*not found|not found.*python\.exe"):
        deps.find_python(r"C:\QGIS\bin\qgis-bin.exe", r"C:\QGIS\apps\Python312", "win32", (3, 12, 0),
                         exists=lambda p: False)


def test_install_command_targets_the_folder_with_constraints():
    cmd = deps.install_command("/usr/bin/python3", "/p/gullyseg_packages/py3.11", ["onnxruntime"], "/tmp/c.txt")
    assert cmd[:4] == ["/usr/bin/python3", "-m", "pip", "install"]
    assert cmd[cmd.index("--target") + 1] == "/p/gullyseg_packages/py3.11"
    assert cmd[cmd.index("--constraint") + 1] == "/tmp/c.txt"
    assert cmd[-1] == "onnxruntime"
    for forbidden in ("--user", "--break-system-packages", "--prefix", "--root", "sudo"):
        assert forbidden not in cmd


def test_requirements_and_constraints():
    assert deps.requirements(["inference"]) == ["onnxruntime"]
    assert deps.requirements(["inference", "training", "inference"]) == [
        "onnxruntime", "torch", "torchvision", "segmentation-models-pytorch"]
    with pytest.raises(deps.DependencyError):
        deps.requirements([])
    with pytest.raises(deps.DependencyError, match="unknown feature"):
        deps.requirements(["gpu"])
    assert deps.constraints_text({"numpy": "1.24.2"}) == "numpy==1.24.2\n"


def test_environment_drops_what_breaks_target_installs():
    env = deps.environment({"PIP_USER": "1", "VIRTUAL_ENV": "/v", "PIP_REQUIRE_VIRTUALENV": "true",
                            "PYTHONHOME": r"C:\OSGeo4W\apps\Python312", "PIP_INDEX_URL": "file:///x"})
    assert "PIP_USER" not in env and "VIRTUAL_ENV" not in env and "PIP_REQUIRE_VIRTUALENV" not in env
    assert env["PYTHONHOME"] == r"C:\OSGeo4W\apps\Python312"  # OSGeo4W's python.exe needs it
    assert env["PIP_INDEX_URL"] == "file:///x"  # the user's index settings are kept
    assert env["PYTHONNOUSERSITE"] == "1"


def test_remove_held_keeps_everything_else(tmp_path):
    for name in ("numpy", "numpy.libs", "numpy-1.24.2.dist-info", "onnxruntime", "onnxruntime-1.20.dist-info",
                 "numpyro", "bin"):
        (tmp_path / name).mkdir()
    (tmp_path / "bin" / "f2py").write_text("#!")
    (tmp_path / "bin" / "onnxruntime_test").write_text("#!")
    removed = deps.remove_held(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["bin", "numpyro", "onnxruntime", "onnxruntime-1.20.dist-info"]
    assert os.listdir(tmp_path / "bin") == ["onnxruntime_test"]
    assert "numpy" in removed and "numpy.libs" in removed


def test_add_to_sys_path_appends_after_qgis_folders(tmp_path):
    path_list = ["/usr/share/qgis/python", "/usr/lib/python3/dist-packages"]
    assert not deps.add_to_sys_path(str(tmp_path / "absent"), path_list)
    assert deps.add_to_sys_path(str(tmp_path), path_list)
    assert path_list[-1] == str(tmp_path)
    assert not deps.add_to_sys_path(str(tmp_path), path_list)  # once
    assert path_list.count(str(tmp_path)) == 1


def test_missing_features():
    present = {"onnxruntime"}
    find_spec = lambda name: object() if name in present else None  # noqa: E731
    assert deps.missing_features(find_spec) == ["training"]
    present = set()
    assert deps.missing_features(find_spec) == ["inference", "training"]


def test_result_summary():
    assert deps.result_summary(0, False, "", ["numpy"]) == (True, "Installed (QGIS's own numpy is used).")
    ok, text = deps.result_summary(1, False, "ERROR: No matching distribution found for onnxruntime")
    assert not ok and "exit code 1" in text and "no build" in text
    ok, text = deps.result_summary(1, False, "/usr/bin/python3: No module named pip")
    assert not ok and "python3-pip" in text
    ok, text = deps.result_summary(9, True, "")
    assert not ok and text.startswith("Cancelled")


def test_folder_packages_come_first_unless_qgis_holds_or_loaded_them(tmp_path):
    """A package in the plugin's folder wins over an older copy elsewhere on sys.path (Debian's
    sympy shadowed the folder's, so the folder's torch failed); numpy, pip's tooling, the standard
    library and modules already imported never come from the folder."""
    import subprocess
    import sys

    system, folder = tmp_path / "dist-packages", tmp_path / "gullyseg_packages"
    for where, version in ((system, "old"), (folder, "new")):
        for name in ("gsdemo_sym", "gsdemo_loaded"):
            (where / name).mkdir(parents=True)
            (where / name / "__init__.py").write_text(f"VERSION = {version!r}\n")
        (where / "gsdemo_sym" / "core.py").write_text(f"WHERE = {version!r}\n")
    (folder / "numpy").mkdir()
    (folder / "numpy" / "__init__.py").write_text("raise ImportError('the folder numpy must never load')\n")
    (folder / "json").mkdir()  # a standard-library name
    (folder / "json" / "__init__.py").write_text("raise ImportError('the folder json must never load')\n")
    (folder / "gsdemo_ns" / "part").mkdir(parents=True)  # a namespace package: merged across sys.path, not taken
    (folder / "only_here.py").write_text("VERSION = 'new'\n")
    (folder / "gsdemo_sym-1.14.dist-info").mkdir()
    assert deps.folder_modules(str(folder)) == {"gsdemo_sym", "gsdemo_loaded", "numpy", "json", "only_here"}
    code = f"""
import sys
sys.path.insert(0, {str(system)!r})
import importlib.util
spec = importlib.util.spec_from_file_location("deps", {deps.__file__!r})
deps = importlib.util.module_from_spec(spec); spec.loader.exec_module(deps)
import gsdemo_loaded  # imported before the plugin starts: stays the system's
assert deps.add_to_sys_path({str(folder)!r})
assert sys.path[-1] == {str(folder)!r}
import gsdemo_sym, gsdemo_sym.core, only_here, numpy, json
print(gsdemo_sym.VERSION, gsdemo_sym.core.WHERE, only_here.VERSION, gsdemo_loaded.VERSION,
      numpy.__file__.startswith({str(folder)!r}), json.__file__.startswith({str(folder)!r}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["new", "new", "new", "old", "False", "False"]
