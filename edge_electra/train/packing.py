"""Stream text into full fixed-length blocks: [CLS] a [SEP] [CLS] b [SEP] ... cut every `seq_len` tokens.

Nothing is padded: a segment that does not fit in a block continues in the next one. The stream
loops over the corpus forever (one pass = one epoch); `state()` says exactly where it stands, so a
resumed run sees the same blocks it would have seen without the interruption.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from edge_electra.data import read_text_lines
from edge_electra.errors import DataError
from edge_electra.runtime.tokenizer import Tokenizer

LINES_PER_CHUNK = 256


def token_ids(tokenizer: Tokenizer, lines: list[str]) -> list[int]:
    """The ids of `lines`, each framed as [CLS] ... [SEP], concatenated."""
    enc = tokenizer(lines, max_length=1 << 20)
    return enc.input_ids[enc.attention_mask.astype(bool)].tolist()


class Packer:
    def __init__(self, paths: list[str | Path], tokenizer: Tokenizer, seq_len: int, state: dict | None = None):
        self.paths = [Path(p) for p in paths]
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        state = state or {"epoch": 0, "line": 0, "buffer": []}
        self.epoch, self.line = state["epoch"], state["line"]
        self.buffer = list(state["buffer"])

    def state(self) -> dict:
        """Where the stream stands: the pass over the corpus, the next line, and tokens read but not yet yielded."""
        return {"epoch": self.epoch, "line": self.line, "buffer": torch.tensor(self.buffer, dtype=torch.int64)}

    def _chunks(self) -> Iterator[tuple[int, list[str]]]:
        """(index after the chunk, lines) from the current position to the end of the corpus."""
        chunk, index = [], -1
        for index, line in enumerate(read_text_lines(self.paths)):
            if index < self.line:
                continue
            chunk.append(line)
            if len(chunk) == LINES_PER_CHUNK:
                yield index + 1, chunk
                chunk = []
        if chunk:
            yield index + 1, chunk

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            read, from_start = 0, self.line == 0
            for next_line, lines in self._chunks():
                ids = token_ids(self.tokenizer, lines)
                read += len(ids)
                self.buffer.extend(ids)
                self.line = next_line
                while len(self.buffer) >= self.seq_len:
                    block, self.buffer = self.buffer[:self.seq_len], self.buffer[self.seq_len:]
                    yield np.asarray(block, dtype=np.int64)
            if not read and from_start:
                raise DataError(f"the corpus {[str(p) for p in self.paths]} holds no text")
            self.epoch, self.line = self.epoch + 1, 0


def batches(packer: Packer, batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[tuple[torch.Tensor, dict]]:
    """(this process's (batch, seq_len) ids, stream state after the global batch).

    Every process reads the same stream and keeps its own slice of each global batch.
    """
    blocks = []
    for block in packer:
        blocks.append(block)
        if len(blocks) == batch_size * world_size:
            mine = np.stack(blocks[rank * batch_size:(rank + 1) * batch_size])
            blocks = []
            yield torch.from_numpy(mine), packer.state()
