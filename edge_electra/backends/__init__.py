"""Backends plug in here. Each module registers itself with @register; heavy libraries load lazily.

    from edge_electra.backends import get_backend
    backend = get_backend("onnx-mobile")
"""
from __future__ import annotations

import importlib

from edge_electra.errors import ConfigError
from edge_electra.backends.base import Backend, Runner

_REGISTRY: dict[str, type[Backend]] = {}
# Backend name → module that registers it; imported on first use only.
_MODULES = {
    "onnx-mobile": "edge_electra.backends.onnx_mobile",
    "openvino": "edge_electra.backends.openvino",
    "tensorrt": "edge_electra.backends.tensorrt",
    "torch": "edge_electra.backends.torch_ref",
}


def register(name: str):
    def decorate(cls: type[Backend]) -> type[Backend]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return decorate


def get_backend(name: str) -> Backend:
    if name not in _REGISTRY:
        if name not in _MODULES:
            raise ConfigError(f"unknown backend {name!r}; available: {sorted(_MODULES)}")
        importlib.import_module(_MODULES[name])
    return _REGISTRY[name]()


def backend_names() -> list[str]:
    return sorted(_MODULES)


__all__ = ["Backend", "Runner", "register", "get_backend", "backend_names"]
