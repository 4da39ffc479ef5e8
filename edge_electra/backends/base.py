"""The one small interface every backend implements: compile → bundle files, load → runner."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from ..bundle import Bundle


class Runner(Protocol):
    """Runs a loaded model. Inputs and outputs are numpy arrays keyed by the manifest's tensor names."""

    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Backend(ABC):
    name: str = ""
    # Extra that installs this backend's runtime, named in errors when it is missing.
    extra: str = ""

    @abstractmethod
    def compile(self, request, workdir: Path):
        """Build this backend's model files from a compile request (see edge_electra.compile).

        Returns a CompiledModel: {bundle file name: path in workdir}, and manifest fields
        (precision, inputs, outputs, runtime options).
        """

    @abstractmethod
    def load(self, bundle: "Bundle", **options) -> Runner:
        """Open the bundle's model files for inference. Must not import torch."""

    def available(self) -> tuple[bool, str]:
        """Whether this machine can run the backend, and why not."""
        return True, ""
