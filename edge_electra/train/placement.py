"""Where training runs: device, mixed precision, and DistributedDataParallel under torchrun."""
from __future__ import annotations

import contextlib
import logging
import os
import typing
from dataclasses import dataclass
from typing import Literal

import torch

from edge_electra.cli_options import option_field
from edge_electra.errors import ConfigError

log = logging.getLogger("edge_electra.train")

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16"]
DEVICES: tuple[str, ...] = typing.get_args(Device)
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)


@dataclass(kw_only=True)
class RunSettings:
    """Where and how a training workflow runs; every workflow's config includes these (and their flags)."""
    seed: int = option_field(0, help="Seed of the weights and the data order (each process adds its rank).")
    device: Device = option_field("auto", help="auto: CUDA when torch sees a GPU.")
    precision: Precision = option_field("auto", help="auto: bf16 on a bf16-capable GPU, else fp32.")
    compile: bool = option_field(False, help="torch.compile the model.")
    threads: int = option_field(0, help="CPU threads (0: torch's default).")
    resume: bool = option_field(True, help="Continue from OUT/state.pt if present.")
    plot: bool = option_field(True, help="Write curves.png at the end.")


@dataclass
class Runtime:
    device: torch.device
    precision: str
    rank: int = 0
    world_size: int = 1
    owns_group: bool = False           # this Runtime joined the process group, so it leaves it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def log(self, message: str) -> None:
        """Progress for a person (logged at INFO), from the main process only."""
        if self.is_main:
            log.info(message)

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to train: DDP-wrapped when several processes train together."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def all_mean(self, value: float) -> float:
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.item() / self.world_size

    def all_gather(self, value) -> list:
        """`value` from every process, in rank order (any picklable object)."""
        if not self.distributed:
            return [value]
        gathered = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def setup(device: str = "auto", precision: str = "auto", threads: int = 0) -> Runtime:
    """Pick the device and precision; join the process group when started by torchrun (WORLD_SIZE > 1).

    `auto` precision is bf16 on a CUDA GPU that supports it and fp32 elsewhere.
    """
    if device not in DEVICES:
        raise ConfigError(f"device must be one of {list(DEVICES)}, got {device!r}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu")
    if threads:
        torch.set_num_threads(threads)
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    joins = world > 1 and not torch.distributed.is_initialized()
    if joins:
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    if precision == "auto":
        precision = "bf16" if use_cuda and torch.cuda.is_bf16_supported() else "fp32"
    return Runtime(dev, precision, rank, world, owns_group=joins)


@contextlib.contextmanager
def session(device: str = "auto", precision: str = "auto", threads: int = 0):
    """`setup`, and leave the process group however the training ends."""
    rt = setup(device, precision, threads)
    try:
        yield rt
    finally:
        rt.close()
