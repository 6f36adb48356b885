"""GullySeg processing: the QGIS-free engine and the thin Processing wrappers.

Import nothing from QGIS here: ``processing.engine`` must stay importable without it.
"""
