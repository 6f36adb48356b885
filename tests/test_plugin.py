"""Plugin life cycle with the stub iface, and with iface=None as qgis_process loads it."""

import pytest
from qgis.core import QgsApplication

import gullyseg


class RecordingIface:
    """Wraps pytest-qgis's stub iface and records what the plugin adds and removes."""

    def __init__(self, iface):
        self._iface = iface
        self.menus, self.toolbar, self.docks = [], [], []

    def __getattr__(self, name):
        return getattr(self._iface, name)

    def addPluginToMenu(self, menu, action):  # noqa: N802 (Plugins > <menu> > action: one level deep)
        self.menus.append((menu, action))

    def removePluginMenu(self, menu, action):  # noqa: N802
        self.menus.remove((menu, action))

    def addToolBarIcon(self, action):  # noqa: N802 (the Plugins toolbar, visible in a default profile)
        self.toolbar.append(action)

    def removeToolBarIcon(self, action):  # noqa: N802
        self.toolbar.remove(action)

    def addDockWidget(self, area, dock):  # noqa: N802
        self.docks.append(dock)

    def removeDockWidget(self, dock):  # noqa: N802
        self.docks.remove(dock)


def _provider_registered():
    return QgsApplication.processingRegistry().providerById("gullyseg") is not None


@pytest.fixture(autouse=True)
def no_provider_registered(qgis_processing):
    """These tests register and remove the provider themselves: start without one (other tests'
    fixture registers it again when they need it)."""
    registry = QgsApplication.processingRegistry()
    if registry.providerById("gullyseg") is not None:
        registry.removeProvider("gullyseg")
    yield


def test_load_and_unload_with_stub_iface(qgis_iface, qgis_processing):
    iface = RecordingIface(qgis_iface)
    plugin = gullyseg.classFactory(iface)
    assert not _provider_registered()
    plugin.initGui()
    try:
        assert _provider_registered()
        assert len(iface.toolbar) == 1 and len(iface.docks) == 1
        assert [(menu, action.text()) for menu, action in iface.menus] == [
            ("&GullySeg", "GullySeg"), ("&GullySeg", "Install dependencies…")]
        dialog = plugin.show_dependencies_dialog()
        assert dialog.isVisible() and plugin.show_dependencies_dialog() is dialog
        # a successful install makes the inference tab read its model again
        plugin.dock.inference.installDepsButton.show()
        dialog.finishedInstall.emit(True, "Installed.")
        assert plugin.dock.inference.installDepsButton.isHidden()
        assert plugin.dock.inference.wait_for_model_info()
        dock = iface.docks[0]
        assert dock.windowTitle() == "GullySeg"
        action = iface.toolbar[0]
        action.setChecked(True)
        assert dock.isVisibleTo(dock.parentWidget()) or not dock.isHidden()
        action.setChecked(False)
        assert dock.isHidden()
        algs = QgsApplication.processingRegistry().providerById("gullyseg").algorithms()
        assert algs, "the provider registered no algorithm"
    finally:
        plugin.unload()
    assert not _provider_registered()
    assert iface.menus == [] and iface.toolbar == [] and iface.docks == []
    assert plugin.dock is None and plugin.action is None and plugin.provider is None


def test_loads_without_iface(qgis_processing):
    plugin = gullyseg.classFactory(None)
    plugin.initGui()  # qgis_process calls initProcessing(); initGui must cope too
    try:
        assert _provider_registered()
        assert plugin.dock is None
    finally:
        plugin.unload()
    assert not _provider_registered()


def test_failed_registration_is_reported(qgis_processing):

    first = gullyseg.classFactory(None)
    assert first.initProcessing()
    messages = []

    def on_message(message, tag, level):
        messages.append((tag, message))

    QgsApplication.messageLog().messageReceived.connect(on_message)
    try:
        second = gullyseg.classFactory(None)
        assert second.initProcessing() is False  # same id twice: refused and reported
        assert second.provider is None
        assert any(tag == "GullySeg" and "could not be registered" in msg for tag, msg in messages)
    finally:
        QgsApplication.messageLog().messageReceived.disconnect(on_message)
        first.unload()


def test_name_and_version_come_from_metadata():
    import configparser

    from gullyseg import metadata

    parser = configparser.ConfigParser(interpolation=None)
    parser.read(metadata._PATH)
    assert metadata.NAME == parser["general"]["name"] == "GullySeg"
    assert metadata.VERSION == parser["general"]["version"]
    for key in ("description", "about", "version", "author", "email", "repository", "tracker", "homepage",
                "icon", "tags", "category", "changelog", "experimental", "qgisMinimumVersion",
                "qgisMaximumVersion", "hasProcessingProvider", "supportsQt6"):
        assert parser["general"].get(key), f"metadata.txt lacks {key}"
    assert parser["general"]["hasProcessingProvider"] == "yes"
    assert parser["general"]["category"] == "Raster"
