"""Command-line configs (a TOML/JSON file, then the flags on top), and the tokenizer a run learns."""
from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from edge_electra import dataclass_io
from edge_electra.atomic import atomic_dir
from edge_electra.runtime.tokenizer import Tokenizer

TRAINED_TOKENIZER = "trained-tokenizer"

T = TypeVar("T")


def config_from_cli(cls: type[T], config_file: str | None, flags: dict) -> T:
    """Flags left unset (None, or an empty tuple for repeatable ones) keep the file's or the default value."""
    base = dataclass_io.to_dict(dataclass_io.load(cls, config_file)) if config_file else {}
    given = {k: list(v) if isinstance(v, tuple) else v for k, v in flags.items() if v not in (None, ())}
    return dataclass_io.from_dict(cls, {**base, **given}, source=config_file or "command line")


def trained_tokenizer(texts, vocab_size: int, run_dir: str | Path, resume: bool, rt=None) -> Tokenizer:
    """A WordPiece vocabulary learnt from `texts`, kept in the run folder. `tokenizers`' trainer breaks ties
    differently in every process, so a resumed run must reuse the vocabulary its checkpoint was trained with,
    and in a distributed run (`rt`, a placement.Runtime) the main process learns it and the others read it."""
    folder = Path(run_dir) / TRAINED_TOKENIZER
    if rt is not None and not rt.is_main:
        rt.barrier()
        return Tokenizer.from_pretrained(folder)
    if resume and (folder / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_pretrained(folder)
    else:
        tokenizer = Tokenizer.train(texts, vocab_size=vocab_size)
        with atomic_dir(folder) as tmp:
            tokenizer.save_pretrained(tmp)
    if rt is not None:
        rt.barrier()
    return tokenizer
