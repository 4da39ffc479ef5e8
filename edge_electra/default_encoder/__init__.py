"""The encoder shipped with the package: a small English ELECTRA discriminator made by `edge-electra pretrain`.

Its weights (fp16), vocabulary and config live in this folder as package data; PROVENANCE.md says how it was
made. `finetune`, `distill` and the demo start from it when no `--init`, `--preset` or `--tokenizer` is given.
"""
from __future__ import annotations

from pathlib import Path

from edge_electra.errors import CheckpointError

FOLDER = Path(__file__).resolve().parent
FILES = ("config.json", "model.safetensors", "vocab.txt")  # vocab.txt alone: tokenizer.json would add 172 kB


def folder() -> Path:
    """The shipped encoder's checkpoint folder (Hugging Face layout), checked to be complete."""
    missing = [name for name in FILES if not (FOLDER / name).is_file()]
    if missing:
        raise CheckpointError(f"the shipped encoder in {FOLDER} lacks {', '.join(missing)}; reinstall edge-electra "
                              "or pass --init (a checkpoint folder or hub id) or --preset (from scratch)")
    return FOLDER


def default_init(init: str | None, preset: str | None, tokenizer: str | None) -> str | None:
    """The checkpoint a training run starts from: `init` if given; the shipped encoder unless a fresh model was
    asked for (a preset, or a tokenizer of its own); None for a fresh model."""
    if init or preset or tokenizer:
        return init
    return str(folder())
