"""Typed step results: dataclasses that still read like the dicts the steps used to return.

``result.mask_count`` is the typed way; ``result["mask_count"]`` and ``result.get(...)`` keep
working for callers written against the dicts.
"""

from dataclasses import fields
from typing import Any


class DictAccess:
    """Mixin for result dataclasses: read-only mapping access to their fields."""

    def __getitem__(self, key: str):
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default=None) -> Any:
        return getattr(self, key) if key in self.keys() else default

    def keys(self) -> list:
        return [f.name for f in fields(self)]

    def __contains__(self, key: object) -> bool:
        return key in self.keys()
