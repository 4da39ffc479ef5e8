"""ElectraConfig: the model's shape, its task and its labels."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from edge_electra.errors import ConfigError

Task = Literal["discriminator", "generator", "sequence", "token", "joint"]
TASKS: tuple[str, ...] = ("discriminator", "generator", "sequence", "token", "joint")
# The encoder's feed-forward activations this model implements, by their Hugging Face names.
ACTIVATIONS: tuple[str, ...] = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
# What the intent head reads: the [CLS] state (ELECTRA's own choice) or the mean of the real tokens' states.
POOLINGS: tuple[str, ...] = ("cls", "mean")


@dataclass
class ElectraConfig:
    vocab_size: int = 30522
    embedding_size: int = 128
    hidden_size: int = 256
    num_layers: int = 12
    num_heads: int = 4
    intermediate_size: int = 1024
    max_position: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    attention_dropout: float = 0.1
    pad_token_id: int = 0
    hidden_act: str = "gelu"           # the feed-forward (and discriminator head) activation
    task: Task = "sequence"
    labels: list[str] = field(default_factory=list)  # intents, for sequence and joint heads
    slot_labels: list[str] = field(default_factory=list)  # BIO tags, for token and joint heads
    pooling: str = "cls"               # what the sequence (intent) head reads, one of POOLINGS

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}; choose one of {list(TASKS)}")
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not implemented; choose one of {list(ACTIVATIONS)}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {self.pooling!r}; choose one of {list(POOLINGS)}")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def replace(self, **changes) -> "ElectraConfig":
        return dataclasses.replace(self, **changes)

    def generator(self, width_ratio: float = 0.25) -> "ElectraConfig":
        """The masked-LM generator ELECTRA pairs with this discriminator: same depth, a fraction of the width."""
        hidden = max(self.num_heads, int(self.hidden_size * width_ratio))
        heads = max(1, int(self.num_heads * width_ratio))
        return self.replace(hidden_size=hidden, num_heads=heads,
                            intermediate_size=int(self.intermediate_size * width_ratio),
                            task="generator", labels=[], slot_labels=[])


PRESETS: dict[str, dict] = {
    "small": {},
    "base": dict(embedding_size=768, hidden_size=768, num_heads=12, intermediate_size=3072),
    # the shipped default encoder's shape (edge_electra/default_encoder): ≤ 4 MB of fp16 weights with 8k words
    "mini": dict(embedding_size=128, hidden_size=192, num_layers=3, num_heads=3, intermediate_size=384,
                 max_position=128),
    "tiny": dict(embedding_size=16, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                 max_position=128),
}


def preset(name: str = "small", **overrides) -> ElectraConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return ElectraConfig(**{**PRESETS[name], **overrides})
