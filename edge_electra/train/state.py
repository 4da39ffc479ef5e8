"""Training-state checkpoints: model(s), optimizer, scheduler, RNG states and data position in one file.

The file is replaced atomically, so a run killed at any moment leaves the previous complete state,
and resuming from it continues exactly where that state was taken. It holds one set of RNG states per
process (rank order): each process of a distributed run draws its own masks and dropout, and continues
its own stream after a resume.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch

from edge_electra.atomic import atomic_file
from edge_electra.errors import CheckpointError

STATE_FILE = "state.pt"

log = logging.getLogger(__name__)


def rng_states() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"python": random.getstate(), "torch": torch.get_rng_state(),
              "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                        "has_gauss": has_gauss, "gauss": gauss}}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_state(folder: str | Path, *, modules: dict[str, torch.nn.Module], optimizer, scheduler,
               step: int, data: dict, extra: dict | None = None, rng: list[dict] | None = None) -> Path:
    """Write folder/state.pt atomically and return its path. `rng`: every process's `rng_states()` in
    rank order (default: this process's alone); `scheduler` may be None."""
    path = Path(folder) / STATE_FILE
    state = {"step": step, "data": data, "extra": extra or {}, "rng": rng or [rng_states()],
             "modules": {name: m.state_dict() for name, m in modules.items()},
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler else None}
    with atomic_file(path) as tmp:
        torch.save(state, tmp)
    return path


def load_state(folder: str | Path) -> dict | None:
    """The saved state in `folder`, or None when there is none yet."""
    path = Path(folder) / STATE_FILE
    if not path.exists():
        return None
    try:  # weights_only: a state file must never run code
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} cannot be read ({e}); delete it to start the run over") from e


def restore(state: dict, *, modules: dict[str, torch.nn.Module], optimizer, scheduler,
            rank: int = 0, world_size: int = 1) -> None:
    """Put modules, optimizer, scheduler and this process's RNGs back as they were when `state` was saved."""
    try:
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        optimizer.load_state_dict(state["optimizer"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"the training state does not fit this run ({e}); resume with the settings it was "
                              f"saved with, or delete {STATE_FILE} (or pass --no-resume) to start over") from e
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    per_process = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]  # older files: one
    if len(per_process) == world_size:
        set_rng_states(per_process[rank])
    elif rank == 0:
        log.warning("the state was saved by %d process(es), this run has %d: the random streams (masks, "
                    "dropout) start afresh from the seed instead of continuing", len(per_process), world_size)
