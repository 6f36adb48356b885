#!/usr/bin/env python3
"""Static Qt6 / QGIS 4 readiness check for GullySeg's Python and Qt Designer files (run by `make lint`).

It looks for what stops PyQt5 code from running under PyQt6 (QGIS 4), the same kinds of problems that
QGIS's own PyQt5-to-PyQt6 migration script (scripts/pyqt5_to_pyqt6 in QGIS's repository) reports or
rewrites, with rules written for this project (AST-based, nothing rewritten):

  QT601  ``Class.Member`` of an enum accessed without its enum's name (``Qt.AlignLeft``,
         ``QgsProcessing.TypeVectorPolygon``): PyQt6 has only the scoped ``Qt.AlignmentFlag.AlignLeft``.
         Which names are enum members is read from the running PyQt5/QGIS (import the module, look
         the attribute up), so the check needs the QGIS Python bindings (as `make lint` has them).
  QT602  ``exec_()`` (called or defined): PyQt6 has ``exec()`` only.
  QT603  ``QRegExp``: removed in Qt6, use ``QRegularExpression``.
  QT604  ``QDesktopWidget`` or ``QApplication.desktop()``: removed in Qt6, use ``QScreen``.
  QT605  ``QAction``, ``QActionGroup``, ``QShortcut``, ``QUndoCommand``/``QUndoStack``,
         ``QFileSystemModel`` imported from ``QtWidgets``: they live in ``QtGui`` in Qt6 (and QGIS 4's
         ``qgis.PyQt.QtWidgets`` is plain PyQt6's); import them through compat.py.
  QT606  ``QVariant`` types (``QVariant.Int``...) or ``QVariant()``: PyQt6 has neither; use
         ``QMetaType.Type`` (QGIS >= 3.38; compat.field_type) and ``qgis.core.NULL``.
  QT607  ``PyQt5`` imported directly, or ``qgis.PyQt.Qt``: use ``qgis.PyQt.QtCore`` and friends.
  QT608  ``qApp``: removed, use ``QApplication.instance()``.
  QT609  enum values renamed in Qt6 (``Qt.MidButton``, ``Qt.TextColorRole``, ``Qt.BackgroundColorRole``,
         ``QPainter.HighQualityAntialiasing``).
  QT610  ``signal[str]`` overloads (``activated[str]``, ``currentIndexChanged[str]``): removed in Qt6.
  QT611  ``fontMetrics().width(...)`` / ``QFontMetrics(...).width``: removed, use ``horizontalAdvance``.
  QT612  ``resources_rc`` (compiled Qt resources): unsupported in Qt6; load files by path.
  QT613  ``addAction`` with four or more arguments (the Qt5-only overloads): build the QAction first.
  QT614  ``QDateTime`` from 8 numbers or from a bare ``QDate``: build it from ``QDate`` and ``QTime``.
  QT615  ``pyqtSignal`` created outside a class body (it must be a class attribute to be a signal).
  QT620  Designer files: an ``<enum>``/``<set>`` value that PyQt5 cannot resolve, or written with the
         enum's name (``Qt::FocusPolicy::NoFocus``), which PyQt5's uic cannot compile; PyQt6's uic
         translates the Qt5 spelling ``Qt::NoFocus`` itself, so ``Class::Member`` is the portable form.

A line can opt out with ``# noqa: QT6xx`` (say why next to it), e.g. a Qt5 fallback in compat.py.
Usage: qt6_check.py [paths...] (default: the checkout); exit 1 when anything is found.
"""

import argparse
import ast
import enum
import importlib
import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXCLUDE_DIRS = {".venv", ".git", "build", "dist", "demo_output", ".qgis-settings", "__pycache__", ".pytest_cache",
                ".ruff_cache", "node_modules"}
QT_MODULES = ("qgis.PyQt.QtCore", "qgis.PyQt.QtGui", "qgis.PyQt.QtWidgets", "qgis.PyQt.QtNetwork",
              "qgis.PyQt.QtXml", "qgis.PyQt.QtSvg", "qgis.PyQt.QtTest")
ENUM_MODULES = QT_MODULES + ("qgis.core", "qgis.gui", "qgis.analysis")
MOVED_TO_QTGUI = {"QAction", "QActionGroup", "QShortcut", "QUndoCommand", "QUndoGroup", "QUndoStack",
                  "QFileSystemModel"}
RENAMED_ENUMS = {("Qt", "MidButton"): "Qt.MouseButton.MiddleButton",
                 ("Qt", "TextColorRole"): "Qt.ItemDataRole.ForegroundRole",
                 ("Qt", "BackgroundColorRole"): "Qt.ItemDataRole.BackgroundRole",
                 ("QPainter", "HighQualityAntialiasing"): "QPainter.RenderHint.Antialiasing"}
REMOVED_UI_ENUMS = {"QComboBox::AdjustToMinimumContentsLength": "QComboBox::AdjustToMinimumContentsLengthWithIcon",
                    "Qt::MidButton": "Qt::MiddleButton"}
NOQA = re.compile(r"#\s*noqa\b(?::\s*(?P<codes>[A-Z0-9, ]+))?", re.IGNORECASE)


class Finding:
    def __init__(self, path, line, col, code, message):
        self.path, self.line, self.col, self.code, self.message = path, line, col, code, message

    def __str__(self):
        path = os.path.relpath(self.path) if os.path.isabs(self.path) else self.path
        return f"{path}:{self.line}:{self.col + 1}: {self.code} {self.message}"


# --- enums, looked up in the running bindings ----------------------------------------------------------

class EnumLookup:
    """Answers 'is ``owner.name`` an enum member, and what is its enum called?' from the real bindings."""

    def __init__(self, modules=ENUM_MODULES):
        self.modules = {}
        self.missing = []
        for name in modules:
            try:
                self.modules[name] = importlib.import_module(name)
            except Exception:  # noqa: BLE001 (any import failure means: not available here)
                self.missing.append(name)

    @property
    def available(self):
        return "qgis.PyQt.QtCore" in self.modules

    def resolve(self, module, name):
        mod = self.modules.get(module)
        return getattr(mod, name, None) if mod is not None else None

    @staticmethod
    def enum_name(owner, attr):
        """The enum type's name when ``owner.attr`` is an enum member reached without it, else None."""
        try:
            value = getattr(owner, attr)
        except Exception:  # noqa: BLE001
            return None
        if isinstance(value, type):
            return None
        kind = type(value)
        is_sip_enum = type(kind).__name__ == "enumtype"  # PyQt5's sip enums
        if not (is_sip_enum or isinstance(value, enum.Enum)):
            return None
        if kind.__name__ == attr:
            return None
        # reached through its own enum class already (e.g. Qgis.MessageLevel.Info is looked up on the enum)
        if isinstance(owner, type) and issubclass(owner, kind):
            return None
        return kind.__name__


# --- Python files -------------------------------------------------------------------------------------

class PythonChecker(ast.NodeVisitor):
    def __init__(self, path, source, enums):
        self.path = path
        self.lines = source.splitlines()
        self.enums = enums
        self.findings = []
        self.names = {}  # local name -> (module, imported name) for Qt/QGIS imports
        self.class_depth = 0
        self.function_depth = 0
        self.tree = ast.parse(source, filename=str(path))

    def run(self):
        for node in ast.walk(self.tree):  # imports first: a name can be used above a later import
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    self.names[alias.asname or alias.name] = (node.module, alias.name)
        self.visit(self.tree)
        return [f for f in self.findings if not self._suppressed(f)]

    def _suppressed(self, finding):
        if finding.line - 1 >= len(self.lines):
            return False
        match = NOQA.search(self.lines[finding.line - 1])
        if not match:
            return False
        codes = match.group("codes")
        return codes is None or finding.code in {c.strip().upper() for c in codes.split(",")}

    def report(self, node, code, message):
        self.findings.append(Finding(self.path, node.lineno, node.col_offset, code, message))

    def _qt_name(self, name):
        """(module, name) when ``name`` was imported from a Qt/QGIS module in this file."""
        origin = self.names.get(name)
        if origin and (origin[0].startswith("qgis") or origin[0].startswith("PyQt")):
            return origin
        return None

    # imports
    def visit_ImportFrom(self, node):
        module = node.module or ""
        names = {a.name for a in node.names}
        if module.split(".")[0] in ("PyQt5", "PyQt6"):
            self.report(node, "QT607", f"'from {module} import': import from qgis.PyQt instead")
        if module == "qgis.PyQt.Qt":
            self.report(node, "QT607", "qgis.PyQt.Qt is gone in QGIS 4: import from qgis.PyQt.QtCore/QtGui/QtWidgets")
        if module.endswith("QtWidgets"):
            for moved in sorted(names & MOVED_TO_QTGUI):
                self.report(node, "QT605", f"{moved} is in QtGui in Qt6 (QGIS 4's qgis.PyQt.QtWidgets lacks it): "
                                           "import it through compat.py")
        for name in sorted(names):
            if name == "QRegExp":
                self.report(node, "QT603", "QRegExp is removed in Qt6: use QRegularExpression")
            elif name == "QDesktopWidget":
                self.report(node, "QT604", "QDesktopWidget is removed in Qt6: use QScreen")
            elif name == "qApp":
                self.report(node, "QT608", "qApp is removed in Qt6: use QApplication.instance()")
            elif name == "resources_rc" or module.endswith("resources_rc"):
                self.report(node, "QT612", "compiled resources (resources_rc) are unsupported in Qt6: load by path")
        self.generic_visit(node)

    def visit_Import(self, node):
        for alias in node.names:
            if alias.name.split(".")[0] in ("PyQt5", "PyQt6"):
                self.report(node, "QT607", f"'import {alias.name}': import from qgis.PyQt instead")
            if alias.name.endswith("resources_rc"):
                self.report(node, "QT612", "compiled resources (resources_rc) are unsupported in Qt6: load by path")
        self.generic_visit(node)

    # scopes
    def visit_ClassDef(self, node):
        outer = self.function_depth
        self.class_depth += 1
        self.function_depth = 0
        self.generic_visit(node)
        self.class_depth -= 1
        self.function_depth = outer

    def visit_FunctionDef(self, node):
        if node.name == "exec_":
            self.report(node, "QT602", "a method named exec_: Qt6 calls exec()")
        self.function_depth += 1
        self.generic_visit(node)
        self.function_depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    # names and attributes
    def visit_Name(self, node):
        if node.id == "qApp" and self._qt_name("qApp"):
            self.report(node, "QT608", "qApp is removed in Qt6: use QApplication.instance()")
        elif node.id == "QRegExp" and isinstance(node.ctx, ast.Load) and self._qt_name("QRegExp"):
            self.report(node, "QT603", "QRegExp is removed in Qt6: use QRegularExpression")

    def visit_Attribute(self, node):
        if isinstance(node.value, ast.Name):
            owner = node.value.id
            origin = self._qt_name(owner)
            if (owner, node.attr) in RENAMED_ENUMS:
                self.report(node, "QT609", f"{owner}.{node.attr} is gone in Qt6: use {RENAMED_ENUMS[owner, node.attr]}")
            elif owner == "QVariant" and origin:
                if node.attr == "Type":
                    self.report(node, "QT606", "QVariant.Type is gone in PyQt6: use QMetaType.Type (compat.field_type)")
                elif node.attr[:1].isupper():
                    self.report(node, "QT606", f"QVariant.{node.attr} is gone in PyQt6: use QMetaType.Type "
                                               "(QGIS >= 3.38; compat.field_type)")
            elif origin and self.enums.available:
                cls = self.enums.resolve(*origin)
                if cls is not None:
                    enum_name = self.enums.enum_name(cls, node.attr)
                    if enum_name:
                        self.report(node, "QT601", f"unscoped enum {owner}.{node.attr}: PyQt6 needs "
                                                   f"{owner}.{enum_name}.{node.attr}")
        self.generic_visit(node)

    def visit_Subscript(self, node):
        target = node.value
        index = node.slice
        if isinstance(target, ast.Attribute) and isinstance(index, ast.Name) and index.id == "str":
            self.report(node, "QT610", f"{target.attr}[str]: signal overloads by type are gone in Qt6")
        self.generic_visit(node)

    def visit_Call(self, node):
        func = node.func
        if isinstance(func, ast.Attribute):
            if func.attr == "exec_":
                self.report(node, "QT602", "exec_() is gone in PyQt6: use exec() (compat.exec_dialog)")
            elif func.attr == "desktop" and not node.args:
                self.report(node, "QT604", "QApplication.desktop() is removed in Qt6: use QScreen")
            elif func.attr == "addAction" and len(node.args) >= 4:
                self.report(node, "QT613", "addAction with 4+ arguments: create the QAction, then addAction(action)")
            elif func.attr == "width" and isinstance(func.value, ast.Call) and (
                    (isinstance(func.value.func, ast.Attribute) and func.value.func.attr == "fontMetrics")
                    or (isinstance(func.value.func, ast.Name) and func.value.func.id in ("QFontMetrics",
                                                                                         "QFontMetricsF"))):
                self.report(node, "QT611", "QFontMetrics.width() is gone in Qt6: use horizontalAdvance()")
        elif isinstance(func, ast.Name):
            if func.id == "QVariant" and self._qt_name("QVariant") and (
                    not node.args or (isinstance(node.args[0], ast.Attribute)
                                      and isinstance(node.args[0].value, ast.Name)
                                      and node.args[0].value.id == "QVariant")):
                self.report(node, "QT606", "QVariant() as a null value: use qgis.core.NULL")
            elif func.id == "QDateTime" and (len(node.args) == 8 or (
                    len(node.args) == 1 and isinstance(node.args[0], ast.Call)
                    and isinstance(node.args[0].func, ast.Name) and node.args[0].func.id == "QDate")):
                self.report(node, "QT614", "QDateTime(...) form gone in Qt6: use QDateTime(QDate(...), QTime(...))")
            elif func.id == "pyqtSignal" and (self.class_depth == 0 or self.function_depth > 0):
                self.report(node, "QT615", "pyqtSignal outside a class body is not a signal")
        self.generic_visit(node)


# --- Designer files -----------------------------------------------------------------------------------

def check_ui(path, enums):
    findings = []
    try:
        tree = ET.parse(path)
    except ET.ParseError as exc:
        return [Finding(path, exc.position[0], exc.position[1], "QT620", f"not a valid .ui file: {exc}")]
    source_lines = Path(path).read_text(encoding="utf-8").splitlines()

    def line_of(text):
        for number, line in enumerate(source_lines, 1):
            if text in line:
                return number
        return 1

    for element in tree.iter():
        if element.tag not in ("enum", "set") or not (element.text or "").strip():
            continue
        for value in element.text.strip().split("|"):
            value = value.strip()
            parts = value.split("::")
            where = line_of(value)
            if value in REMOVED_UI_ENUMS:
                findings.append(Finding(path, where, 0, "QT620",
                                        f"{value} is gone in Qt6: use {REMOVED_UI_ENUMS[value]}"))
            elif len(parts) != 2:
                findings.append(Finding(path, where, 0, "QT620",
                                        f"{value}: write Qt5's Class::Member (PyQt5's uic cannot compile the "
                                        "scoped form; PyQt6's uic maps Class::Member itself)"))
            elif enums.available:
                owner = None
                for module in QT_MODULES:
                    owner = enums.resolve(module, parts[0])
                    if owner is not None:
                        break
                if owner is None or enums.enum_name(owner, parts[1]) is None:
                    findings.append(Finding(path, where, 0, "QT620", f"{value} is not an enum member in Qt"))
    return findings


# --- driver -------------------------------------------------------------------------------------------

def iter_files(paths):
    for path in paths:
        path = Path(path)
        if path.is_file():
            yield path
            continue
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDE_DIRS and not d.startswith("."))
            for filename in sorted(filenames):
                if filename.endswith((".py", ".ui")):
                    yield Path(dirpath) / filename


def check_paths(paths, enums=None):
    enums = enums or EnumLookup()
    findings = []
    for path in iter_files(paths):
        if path.suffix == ".ui":
            findings.extend(check_ui(path, enums))
        else:
            source = path.read_text(encoding="utf-8")
            try:
                findings.extend(PythonChecker(path, source, enums).run())
            except SyntaxError as exc:
                findings.append(Finding(path, exc.lineno or 1, 0, "QT600", f"syntax error: {exc.msg}"))
    return findings


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", default=[str(ROOT)])
    args = parser.parse_args(argv)
    enums = EnumLookup()
    if not enums.available:
        print("qt6_check: the QGIS Python bindings are not importable: run it with .venv/bin/python "
              "(`make lint`); enum checks need them", file=sys.stderr)
        return 2
    findings = check_paths(args.paths, enums)
    for finding in findings:
        print(finding)
    files = sum(1 for _ in iter_files(args.paths))
    print(f"qt6_check: {len(findings)} finding(s) in {files} files", file=sys.stderr)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
