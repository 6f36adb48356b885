"""GullySeg: map gullies and check-dam land from sub-metre imagery, inside QGIS.

This file must stay free of QGIS imports at module level so that the QGIS-free
engine (``processing/engine``) can be imported by plain Python tools.
"""


def classFactory(iface):  # noqa: N802 (QGIS API name)
    """QGIS entry point. ``iface`` is None under qgis_process."""
    from .plugin import GullySegPlugin

    return GullySegPlugin(iface)
