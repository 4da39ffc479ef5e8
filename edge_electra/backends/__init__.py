"""Backends plug in here. Each module registers its class with @register; the rest of the package asks this
registry for a backend's facts instead of naming backends.

    from edge_electra.backends import get_backend
    backend = get_backend("onnx-mobile")

Adding a backend: write its module and add one line to BUILTIN below (or call @register from anywhere
before use). Backend modules are imported on first use, and import their heavy libraries lazily.
"""
from __future__ import annotations

import importlib

from edge_electra.errors import ConfigError
from edge_electra.backends.base import Backend, Runner

_REGISTRY: dict[str, type[Backend]] = {}
# Backend name → the module that registers it; imported on first use only.
BUILTIN = {
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
        if name not in BUILTIN:
            raise ConfigError(f"unknown backend {name!r}; choose one of {backend_names()}")
        importlib.import_module(BUILTIN[name])
    return _REGISTRY[name]()


def backend_names() -> list[str]:
    return sorted(set(BUILTIN) | set(_REGISTRY))


def backend_library(name: str) -> str | None:
    """The distribution a backend's model files depend on; None for an unknown backend."""
    return get_backend(name).library or None if name in backend_names() else None


__all__ = ["Backend", "Runner", "register", "get_backend", "backend_names", "backend_library"]
