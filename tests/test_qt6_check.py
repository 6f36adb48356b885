"""tools/qt6_check.py (the Qt6 / QGIS 4 readiness check of `make lint`): each rule on a small sample,
what it must not flag, and the plugin's own files (metadata.txt may say supportsQt6=True only when clean)."""

import importlib.util
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def qt6():
    spec = importlib.util.spec_from_file_location("qt6_check", ROOT / "tools" / "qt6_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _codes(qt6, tmp_path, source, name="sample.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return [(f.line, f.code) for f in qt6.check_paths([path])]


def test_each_rule_on_a_sample(qt6, tmp_path):
    found = _codes(qt6, tmp_path, """\
        from PyQt5.QtCore import QRegExp
        from qgis.core import QgsProcessing
        from qgis.PyQt.QtCore import QDateTime, QVariant, Qt, pyqtSignal
        from qgis.PyQt.QtGui import QPainter
        from qgis.PyQt.QtWidgets import QAction, QDialog, QDesktopWidget, qApp
        import resources_rc

        align = Qt.AlignLeft
        kind = QgsProcessing.TypeVectorPolygon
        result = QDialog().exec_()
        empty = QVariant()
        field = QVariant.Int
        qApp.processEvents()
        button = Qt.MidButton
        hint = QPainter.HighQualityAntialiasing
        combo.activated[str].connect(print)
        width = widget.fontMetrics().width("abc")
        menu.addAction(icon, "text", receiver, slot)
        stamp = QDateTime(2024, 1, 2, 3, 4, 5, 6, 0)
        screen = app.desktop()
        pattern = QRegExp("a+")

        def helper():
            changed = pyqtSignal(int)
            return changed
        """)
    expected = {(1, "QT607"), (1, "QT603"), (5, "QT605"), (5, "QT604"), (5, "QT608"), (6, "QT612"),
                (8, "QT601"), (9, "QT601"), (10, "QT602"), (11, "QT606"), (12, "QT606"), (13, "QT608"),
                (14, "QT609"), (15, "QT609"), (16, "QT610"), (17, "QT611"), (18, "QT613"), (19, "QT614"),
                (20, "QT604"), (21, "QT603"), (24, "QT615")}
    assert expected <= set(found), sorted(expected - set(found))
    assert set(found) <= expected, sorted(set(found) - expected)


def test_what_is_fine_on_qt5_and_qt6_is_not_flagged(qt6, tmp_path):
    assert _codes(qt6, tmp_path, """\
        from qgis.core import Qgis, QgsProcessing
        from qgis.PyQt.QtCore import QObject, Qt, pyqtSignal
        from qgis.PyQt.QtGui import QAction
        from qgis.PyQt.QtWidgets import QDialog, QDialogButtonBox

        class Worker(QObject):
            done = pyqtSignal(int)

        align = Qt.AlignmentFlag.AlignLeft
        level = Qgis.MessageLevel.Warning
        buttons = QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        code = QDialog.DialogCode.Accepted
        result = QDialog().exec()
        source = QgsProcessing.SourceType
        other = something.AlignLeft
        legacy = QDialog().exec_()  # noqa: QT602 (Qt5 fallback)
        """) == []


def test_ui_files(qt6, tmp_path):
    found = _codes(qt6, tmp_path, """\
        <?xml version="1.0" encoding="UTF-8"?>
        <ui version="4.0">
         <widget class="QWidget" name="Form">
          <property name="focusPolicy"><enum>Qt::NoFocus</enum></property>
          <property name="alignment"><set>Qt::AlignLeft|Qt::AlignVCenter</set></property>
          <property name="textFormat"><enum>Qt::TextFormat::RichText</enum></property>
          <property name="sizeAdjustPolicy"><enum>QComboBox::AdjustToMinimumContentsLength</enum></property>
          <property name="frameShape"><enum>QFrame::NoSuchShape</enum></property>
         </widget>
        </ui>
        """, name="form.ui")
    assert sorted(found) == [(6, "QT620"), (7, "QT620"), (8, "QT620")]


def test_the_plugin_is_clean_and_metadata_agrees(qt6):
    findings = qt6.check_paths([ROOT])
    metadata = (ROOT / "metadata.txt").read_text(encoding="utf-8")
    if "supportsQt6=True" in metadata:
        assert not findings, "supportsQt6=True but tools/qt6_check.py reports:\n" + "\n".join(map(str, findings))
