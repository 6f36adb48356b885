"""Optional Python packages installed into a folder of the plugin's own (QGIS-free, unit-tested).

QGIS's Python is often not the user's to change: Debian marks it externally managed (PEP 668),
OSGeo4W's lives under Program Files, macOS's inside the signed QGIS.app. So GullySeg installs
onnxruntime (inference) and, on request, PyTorch with segmentation-models-pytorch (training) with
``pip install --target`` into ``<QGIS profile>/python/gullyseg_packages/py<major>.<minor>`` and never
into QGIS's site-packages. The plugin *appends* that folder to ``sys.path`` when it starts, so
QGIS's own packages (numpy, GDAL's bindings) always win over anything in it, and puts a finder in
front of ``sys.meta_path`` for the other top-level packages the folder holds that QGIS has not
imported yet (``FolderFirst``): those come from the folder, as pip resolved them together. Without
it Debian's older copies in /usr/lib/python3/dist-packages shadowed them: the folder's torch then
imported Debian's sympy 1.9 and failed (``cannot import name 'equal_valued'``), found by a real
install of the training group.

numpy is held to the version QGIS runs (GDAL's bindings are built against it): pip gets a
constraints file ``numpy==<that version>`` and the copy of numpy that ``--target`` puts into the
folder is removed afterwards.

This module imports neither qgis nor Qt: the dialog (ui/deps_dialog.py) runs the command it
builds in a QProcess.
"""

import ntpath
import os
import re
import shutil
import sys

FOLDER_NAME = "gullyseg_packages"

# what the dialog offers: feature -> (label, pip requirements, import names that prove it works)
FEATURES = {
    "inference": ("ONNX inference (onnxruntime, about 20 MB)", ("onnxruntime",), ("onnxruntime",)),
    "training": (
        "Training (PyTorch, torchvision, segmentation-models-pytorch; about 1 GB)",
        ("torch", "torchvision", "segmentation-models-pytorch"),
        ("torch", "torchvision", "segmentation_models_pytorch"),
    ),
}
# installed only as QGIS's own copy: never shadow them from the plugin's folder
HELD_BY_QGIS = ("numpy",)

_PYTHON_NAME = re.compile(r"^python(\d+(\.\d+)?)?w?(\.exe)?$", re.IGNORECASE)


class DependencyError(Exception):
    """A user-facing reason why packages cannot be installed."""


def packages_folder(profile_dir, version_info=None):
    """``<profile>/python/gullyseg_packages/py3.11``: one folder per Python version (compiled
    packages such as onnxruntime only work with the Python they were built for)."""
    version_info = version_info or sys.version_info
    return os.path.join(profile_dir, "python", FOLDER_NAME, f"py{version_info[0]}.{version_info[1]}")


def python_candidates(executable, exec_prefix, platform=None, version_info=None):
    """Where QGIS's Python interpreter may be, best first.

    Inside QGIS ``sys.executable`` is often QGIS itself (qgis.exe in OSGeo4W, QGIS.app/Contents/MacOS/QGIS,
    /usr/bin/qgis), so the interpreter is looked for beside it and under ``sys.exec_prefix``."""
    platform = platform or sys.platform
    version_info = version_info or sys.version_info
    short = f"{version_info[0]}.{version_info[1]}"
    found = []
    pathmod = ntpath if platform.startswith("win") else os.path
    if executable and _PYTHON_NAME.match(pathmod.basename(executable)):
        found.append(executable)
    here = pathmod.dirname(executable) if executable else ""
    if platform.startswith("win"):
        join = ntpath.join
        for folder in (exec_prefix, here):
            if folder:
                found += [join(folder, "python.exe"), join(folder, "python3.exe")]
        if here:  # OSGeo4W: <root>\bin\qgis-bin.exe and <root>\apps\Python3x\python.exe
            root = ntpath.dirname(here)
            found.append(join(root, "apps", f"Python{version_info[0]}{version_info[1]}", "python.exe"))
    else:
        join = os.path.join
        for folder in (exec_prefix, here):
            if folder:
                found += [join(folder, "bin", f"python{short}"), join(folder, "bin", "python3")]
        if platform == "darwin" and here:  # QGIS.app/Contents/MacOS/QGIS -> .../MacOS/bin/python3
            found += [join(here, f"python{short}"), join(here, "python3")]
        if platform.startswith("linux"):
            found += [f"/usr/bin/python{short}", "/usr/bin/python3"]
    unique = []
    for path in found:
        if path not in unique:
            unique.append(path)
    return unique


def find_python(executable=None, exec_prefix=None, platform=None, version_info=None, exists=os.path.isfile):
    """QGIS's Python interpreter (a path), or DependencyError saying where it was looked for."""
    executable = sys.executable if executable is None else executable
    exec_prefix = sys.exec_prefix if exec_prefix is None else exec_prefix
    candidates = python_candidates(executable, exec_prefix, platform, version_info)
    for path in candidates:
        if exists(path):
            return path
    raise DependencyError(
        "QGIS's Python interpreter was not found (looked for " + ", ".join(candidates) + "). "
        "Install the packages from a terminal instead (see docs/dock.md)."
    )


def constraints_text(held_versions):
    """A pip constraints file holding QGIS's own packages at their versions: {'numpy': '1.24.2'}."""
    return "".join(f"{name}=={version}\n" for name, version in sorted(held_versions.items()) if version)


def requirements(features):
    """pip requirements for a list of feature names (``FEATURES`` keys), in order, without repeats."""
    wanted = []
    for feature in features:
        if feature not in FEATURES:
            raise DependencyError(f"unknown feature {feature!r}; one of {', '.join(FEATURES)}")
        for requirement in FEATURES[feature][1]:
            if requirement not in wanted:
                wanted.append(requirement)
    if not wanted:
        raise DependencyError("Tick at least one group of packages to install.")
    return wanted


def install_command(python, target, packages, constraints_path=None, extra_args=()):
    """The pip command line (a list) that installs ``packages`` into ``target``.

    ``--target`` never writes to the interpreter's site-packages and is exempt from PEP 668's
    externally-managed check; no root is needed."""
    command = [
        python, "-m", "pip", "install",
        "--target", target,
        "--upgrade",  # replace what an earlier install left in the folder
        "--no-input",
        "--disable-pip-version-check",
        "--no-warn-script-location",
        "--progress-bar", "off",  # a line-oriented log for the dialog
    ]
    if constraints_path:
        command += ["--constraint", constraints_path]
    command += list(extra_args)
    command += list(packages)
    return command


def environment(base_env, platform=None):
    """The environment pip runs in: the user's, less what would send pip elsewhere or fail it.

    PIP_USER/--user cannot be combined with --target; PIP_REQUIRE_VIRTUALENV would refuse;
    PYTHONUSERBASE/user site packages must not satisfy requirements that belong in the folder;
    QGIS's PYTHONHOME (OSGeo4W) is kept, the interpreter needs it."""
    env = dict(base_env)
    for name in ("PIP_USER", "PIP_REQUIRE_VIRTUALENV", "PIP_TARGET", "PIP_PREFIX", "PIP_ROOT", "VIRTUAL_ENV",
                 "PYTHONSTARTUP"):
        env.pop(name, None)
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"  # the log streams line by line
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def remove_held(target, held=HELD_BY_QGIS):
    """Delete the copies of QGIS's own packages that ``pip --target`` put into ``target``
    (numpy and its ``.libs``, ``.dist-info``, scripts). Returns the removed names."""
    removed = []
    if not os.path.isdir(target):
        return removed
    for entry in sorted(os.listdir(target)):
        base = entry.lower()
        for name in held:
            if base == name or base.startswith(name + "-") or base == name + ".libs":
                path = os.path.join(target, entry)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.remove(path)
                removed.append(entry)
                break
    bin_dir = os.path.join(target, "bin")  # numpy's f2py script
    for script in ("f2py", "f2py3", f"f2py{sys.version_info[0]}.{sys.version_info[1]}"):
        path = os.path.join(bin_dir, script)
        if os.path.isfile(path):
            os.remove(path)
            removed.append(os.path.join("bin", script))
    return removed


# never taken from the plugin's folder even when it holds a copy: QGIS's own, and pip's tooling
NOT_FROM_FOLDER = HELD_BY_QGIS + ("pip", "setuptools", "pkg_resources", "_distutils_hack", "wheel")


def folder_modules(folder):
    """The top-level import names ``folder`` provides as regular packages or modules."""
    names = set()
    for entry in os.listdir(folder):
        path = os.path.join(folder, entry)
        if entry.startswith((".", "__")) or entry.endswith((".dist-info", ".egg-info", ".libs")):
            continue
        if os.path.isdir(path):
            # regular packages only: a namespace folder (google, nvidia) merges with the other
            # copies on sys.path as usual, so the folder must not take it over
            if entry.isidentifier() and os.path.isfile(os.path.join(path, "__init__.py")):
                names.add(entry)
        elif entry.endswith((".py", ".so", ".pyd")):
            names.add(entry.split(".")[0])
    return names


class FolderFirst:
    """A meta path finder: the top-level modules ``names`` are looked up in ``folder`` first (their
    submodules follow through the package's own path)."""

    def __init__(self, folder, names):
        self.folder = folder
        self.names = frozenset(names)

    def find_spec(self, fullname, path=None, target=None):
        if "." in fullname or fullname not in self.names:
            return None
        import importlib.machinery

        return importlib.machinery.PathFinder.find_spec(fullname, [self.folder])

    def invalidate_caches(self):
        pass


def add_to_sys_path(folder, path_list=None, meta_path=None, loaded=None):
    """Append ``folder`` to ``sys.path`` (after QGIS's own folders) when it exists, and put a
    ``FolderFirst`` finder for its other packages in front of ``sys.meta_path`` (not for numpy,
    pip's tooling, the standard library or modules already imported: ``loaded``, default
    ``sys.modules``). Returns True if added."""
    path_list = sys.path if path_list is None else path_list
    meta_path = sys.meta_path if meta_path is None else meta_path
    loaded = sys.modules if loaded is None else loaded
    if not folder or not os.path.isdir(folder) or folder in path_list:
        return False
    path_list.append(folder)
    stdlib = getattr(sys, "stdlib_module_names", frozenset())
    names = {n for n in folder_modules(folder)
             if n not in NOT_FROM_FOLDER and n not in stdlib and n not in loaded}
    if names and not any(isinstance(f, FolderFirst) and f.folder == folder for f in meta_path):
        meta_path.insert(0, FolderFirst(folder, names))
    return True


def missing_modules(modules, find_spec=None):
    """The names in ``modules`` that cannot be imported (without importing them)."""
    if find_spec is None:
        import importlib.util

        find_spec = importlib.util.find_spec
    missing = []
    for name in modules:
        try:
            if find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):
            missing.append(name)
    return missing


def missing_features(find_spec=None):
    """Feature names whose modules are not importable, e.g. ['inference', 'training']."""
    return [name for name, (_, _, modules) in FEATURES.items() if missing_modules(modules, find_spec)]


def result_summary(exit_code, cancelled, log_tail, removed=()):
    """(ok, message) for the dialog's result line."""
    if cancelled:
        return False, "Cancelled: pip was stopped; nothing in QGIS's own Python was changed."
    if exit_code != 0:
        hint = ""
        if "No matching distribution" in log_tail or "Could not find a version" in log_tail:
            hint = (" pip found no build of a package for this Python and numpy (is pip reaching the package "
                    "index? is this Python version supported?).")
        elif "No module named pip" in log_tail:
            hint = (" This Python has no pip: on Debian/Ubuntu install the python3-pip package "
                    "(sudo apt install python3-pip), then try again.")
        return False, f"pip failed (exit code {exit_code}).{hint} See the log above."
    note = f" (QGIS's own {', '.join(sorted({r.split('-')[0] for r in removed}))} is used)" if removed else ""
    return True, "Installed" + note + "."
