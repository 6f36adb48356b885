"""The one place that reads the plugin's name and version (from metadata.txt)."""

import configparser
import os

_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metadata.txt")


def _read():
    parser = configparser.ConfigParser(interpolation=None)
    with open(_PATH, encoding="utf-8") as handle:
        parser.read_file(handle)
    return parser["general"]


_GENERAL = _read()
NAME = _GENERAL["name"]
VERSION = _GENERAL["version"]
PLUGIN_DIR = os.path.dirname(_PATH)


def resource_path(*parts):
    """Absolute path of a file under resources/."""
    return os.path.join(PLUGIN_DIR, "resources", *parts)
