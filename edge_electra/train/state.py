"""Training-state checkpoints: model(s), optimizer, scheduler, RNG states and data position in one file.

The file is replaced atomically, so a run killed at any moment leaves the previous complete state,
and resuming from it continues exactly where that state was taken.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from edge_electra.atomic import atomic_file
from edge_electra.errors import CheckpointError

STATE_FILE = "state.pt"


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
               step: int, data: dict, extra: dict | None = None) -> Path:
    """Write folder/state.pt atomically and return its path."""
    path = Path(folder) / STATE_FILE
    state = {"step": step, "data": data, "extra": extra or {}, "rng": rng_states(),
             "modules": {name: m.state_dict() for name, m in modules.items()},
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
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


def restore(state: dict, *, modules: dict[str, torch.nn.Module], optimizer, scheduler) -> None:
    """Put modules, optimizer, scheduler and RNGs back as they were when `state` was saved."""
    for name, module in modules.items():
        module.load_state_dict(state["modules"][name])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_states(state["rng"])
