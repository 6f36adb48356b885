"""GullySeg's dock and its tabs (Qt widgets; .ui files are loaded at run time)."""
