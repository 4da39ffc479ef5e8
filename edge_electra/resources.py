"""Where the project's data folders (targets/, calibration/) live: beside the package in a checkout,
or under <prefix>/share/edge-electra when installed from a wheel."""
from __future__ import annotations

import sys
from pathlib import Path

from edge_electra.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
INSTALLED = Path(sys.prefix) / "share" / "edge-electra"


def resource_dir(name: str) -> Path:
    for base in (ROOT, INSTALLED):
        if (base / name).is_dir():
            return base / name
    raise ConfigError(f"the {name}/ folder is neither beside the edge_electra package ({ROOT}) nor in {INSTALLED}; "
                      "reinstall edge-electra (pip install -e . from a checkout)")
