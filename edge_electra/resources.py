"""Where the project's data folders (targets/, calibration/) live: beside the package in a checkout."""
from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def resource_dir(name: str) -> Path:
    path = ROOT / name
    if not path.is_dir():
        raise ConfigError(f"the {name}/ folder is not beside the edge_electra package ({ROOT}); "
                          "install edge-electra from a checkout (pip install -e .)")
    return path
