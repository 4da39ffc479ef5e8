"""Intermediate-layer distillation: hidden states (TinyBERT) and self-attention distributions (MiniLM,
TinyBERT) of the student's layers against the teacher's layers they are mapped to.

Layer mapping: student layer i of n learns from teacher layer round((i+1)·m/n) of m, the layer
`select_layers(..., "even")` keeps when it cuts the teacher to n layers (every other layer for 3 of 6),
so a student cut from the teacher starts where its targets are. The embedding output maps to the teacher's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edge_electra.errors import ConfigError
from edge_electra.train.model import Electra, SelfAttention


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """For each student layer, the (1-based) teacher layer it learns from."""
    return [round((i + 1) * teacher_layers / student_layers) for i in range(student_layers)]


def attention_probs(attn: SelfAttention, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, heads, S, S): the attention distribution of `attn` on its input `x` (what the layer computes inside
    scaled_dot_product_attention, which does not return it)."""
    batch, seq, hidden = x.shape
    def heads(t):
        return t.view(batch, seq, attn.num_heads, hidden // attn.num_heads).transpose(1, 2)
    scores = heads(attn.q(x)) @ heads(attn.k(x)).transpose(-1, -2) / (hidden // attn.num_heads) ** 0.5
    return scores.float().masked_fill(attention_mask[:, None, None, :] == 0, float("-inf")).softmax(-1)


class Intermediate(nn.Module):
    """The student's hidden-state and attention losses against a teacher's, with learned projections where
    the widths differ (none when the student was cut from the teacher)."""

    def __init__(self, student: Electra, teacher: Electra, attention: bool):
        super().__init__()
        s, t = student.config, teacher.config
        if attention and s.num_heads != t.num_heads:
            raise ConfigError(f"attention distillation needs as many heads in the student ({s.num_heads}) as in "
                              f"the teacher ({t.num_heads}); set the attention weight to 0")
        self.mapping = [0] + layer_map(s.num_layers, t.num_layers)
        self.project = nn.ModuleList(nn.Linear(s.hidden_size, t.hidden_size) for _ in self.mapping) \
            if s.hidden_size != t.hidden_size else None
        self.attention = attention

    def teacher_targets(self, teacher: Electra, hidden: list[torch.Tensor], mask) -> dict[str, list]:
        targets = {"hidden": [hidden[j] for j in self.mapping]}
        if self.attention:
            targets["attention"] = [attention_probs(teacher.encoder.layers[j - 1].attn, hidden[j - 1], mask)
                                    for j in self.mapping[1:]]
        return targets

    def forward(self, student: Electra, hidden: list[torch.Tensor], mask, targets: dict) -> dict[str, torch.Tensor]:
        keep = mask.bool()
        terms = {}
        pairs = zip(hidden, targets["hidden"], self.project or [None] * len(hidden))
        terms["hidden"] = torch.stack([F.mse_loss((p(h) if p else h).float()[keep], t.float()[keep])
                                       for h, t, p in pairs]).mean()
        if self.attention:
            losses = []
            for layer, x, target in zip(student.encoder.layers, hidden, targets["attention"]):
                log_probs = attention_probs(layer.attn, x, mask).clamp_min(1e-12).log()
                rows = (target * (target.clamp_min(1e-12).log() - log_probs)).sum(-1)   # KL per query
                losses.append(rows.mean(1)[keep].mean())
            terms["attention"] = torch.stack(losses).mean()
        return terms
