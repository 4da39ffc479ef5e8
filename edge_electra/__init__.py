"""edge-electra: train, quantize, compile and run small ELECTRA NLU models on edge devices.

`from edge_electra import Predictor` is all a device needs; nothing here imports torch.
"""
from importlib import metadata

try:
    __version__ = metadata.version("edge-electra")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["Predictor", "Prediction", "__version__"]


def __getattr__(name):
    if name in ("Predictor", "Prediction"):
        from edge_electra.runtime import predictor
        return getattr(predictor, name)
    raise AttributeError(f"module 'edge_electra' has no attribute {name!r}")
