"""The PyTorch reference: eager FP32 from the Hugging Face-layout checkpoint stored in the bundle.

Every benchmark compares against it. The only runner allowed to import torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_electra.errors import BundleError, ConfigError
from edge_electra.backends import register
from edge_electra.backends.base import Backend, CompiledModel, check_feeds
from edge_electra.runtime.io_spec import INPUTS

FILES = ("config.json", "model.safetensors")


@dataclass
class TorchOptions:
    """A profile's [runtime] table for the torch reference."""
    # "cpu", "cuda", "cuda:1"...; CUDA falls back to the CPU when torch sees no GPU.
    device: str = "cpu"


class TorchRunner:
    def __init__(self, folder: Path, device: str, threads: int):
        import torch
        from edge_electra.train.checkpoint import load_pretrained
        if device.startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"
        if threads:
            torch.set_num_threads(threads)
        self.device = device
        self.model, _ = load_pretrained(folder)
        self.model.eval().to(device)
        self.input_names = list(INPUTS)
        self.output_names = list(self.model.output_names)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch
        check_feeds(self.input_names, feeds)
        with torch.inference_mode():
            outputs = self.model(*(torch.as_tensor(feeds[n], dtype=torch.long, device=self.device)
                                   for n in self.input_names))
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return {n: o.float().cpu().numpy() for n, o in zip(self.output_names, outputs)}


@register("torch")
class TorchBackend(Backend):
    precisions = ("fp32",)
    options = TorchOptions
    library = "torch"
    extra = "train"
    requires = ("torch", "safetensors")

    def compile(self, request, workdir: Path) -> CompiledModel:
        from edge_electra.train.checkpoint import save_pretrained
        if request.precision != "fp32":
            raise ConfigError(f"the torch reference runs fp32 only, not {request.precision}")
        folder = save_pretrained(request.model, workdir / "checkpoint")
        runtime = {"device": request.target.options.device, "threads": request.target.threads}
        return CompiledModel(files={name: folder / name for name in FILES}, precision="fp32", runtime=runtime)

    def load(self, bundle, threads: int | None = None, device: str | None = None, **_) -> TorchRunner:
        for name in FILES:
            bundle.file(name)
        options: TorchOptions = self.bundle_options(bundle)
        try:
            return TorchRunner(bundle.path, device or options.device,
                               bundle.manifest.runtime.get("threads", 0) if threads is None else threads)
        except ImportError as e:
            raise BundleError(f"{bundle.path} needs torch to run: pip install 'edge-electra[train]'") from e

    def runs_on(self, options: TorchOptions) -> str:
        return options.device
