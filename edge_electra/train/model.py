"""ELECTRA in plain PyTorch: embeddings, encoder and the task heads."""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from edge_electra.runtime import io_spec
from edge_electra.train.config import ElectraConfig

# Hugging Face's names: gelu is exact, gelu_new and gelu_pytorch_tanh are the tanh approximation.
ACTIVATION_FUNCTIONS = {
    "gelu": F.gelu,
    "gelu_new": partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
}


class Embeddings(nn.Module):
    def __init__(self, cfg: ElectraConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.embedding_size, padding_idx=cfg.pad_token_id)
        self.position = nn.Embedding(cfg.max_position, cfg.embedding_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.embedding_size)
        self.norm = nn.LayerNorm(cfg.embedding_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids, token_type_ids):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word(input_ids) + self.position(positions)[None] + self.token_type(token_type_ids)
        return self.dropout(self.norm(x))


class SelfAttention(nn.Module):
    def __init__(self, cfg: ElectraConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.q = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.k = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.v = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout = cfg.attention_dropout

    def forward(self, x, additive_mask):
        batch, seq, hidden = x.shape
        def heads(t):
            return t.view(batch, seq, self.num_heads, hidden // self.num_heads).transpose(1, 2)
        context = F.scaled_dot_product_attention(
            heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), attn_mask=additive_mask,
            dropout_p=self.dropout if self.training else 0.0)
        return self.out(context.transpose(1, 2).reshape(batch, seq, hidden))


class Layer(nn.Module):
    """Post-LayerNorm transformer block, as in BERT and ELECTRA."""

    def __init__(self, cfg: ElectraConfig):
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.ffn_out = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.act = ACTIVATION_FUNCTIONS[cfg.hidden_act]

    def forward(self, x, additive_mask):
        x = self.attn_norm(x + self.dropout(self.attn(x, additive_mask)))
        return self.ffn_norm(x + self.dropout(self.ffn_out(self.act(self.ffn_in(x)))))


class Encoder(nn.Module):
    """Embeddings, the embedding→hidden projection (when sizes differ) and the transformer layers."""

    def __init__(self, cfg: ElectraConfig):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.project = (nn.Linear(cfg.embedding_size, cfg.hidden_size)
                        if cfg.embedding_size != cfg.hidden_size else nn.Identity())
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=False):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.project(self.embeddings(input_ids, token_type_ids))
        # Additive mask: 0 where attended, the dtype's minimum on padding keys.
        keep = attention_mask[:, None, None, :].to(x.dtype)
        additive_mask = (1.0 - keep) * torch.finfo(x.dtype).min
        hidden_states = [x]
        for layer in self.layers:
            x = layer(x, additive_mask)
            hidden_states.append(x)
        return (x, hidden_states) if output_hidden_states else x


class DiscriminatorHead(nn.Module):
    """Replaced-token detection: one logit per token, >0 meaning 'replaced'. Like Hugging Face's, it uses
    hidden_act; the other heads use gelu whatever the config says."""

    def __init__(self, cfg: ElectraConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, 1)
        self.act = ACTIVATION_FUNCTIONS[cfg.hidden_act]

    def forward(self, h, mask=None):
        return self.out(self.act(self.dense(h))).squeeze(-1)


class GeneratorHead(nn.Module):
    """Masked-LM head; its decoder weight is tied to the word embeddings."""

    def __init__(self, cfg: ElectraConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.embedding_size)
        self.norm = nn.LayerNorm(cfg.embedding_size, eps=cfg.layer_norm_eps)
        self.word_embeddings = word_embeddings
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h, mask=None):
        return F.linear(self.norm(F.gelu(self.dense(h))), self.word_embeddings.weight, self.bias)


def mean_pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's mean over its real tokens (mask 1)."""
    weights = mask[..., None].to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class SequenceHead(nn.Module):
    """Classifies the [CLS] token's state, or (pooling "mean") the mean of the real tokens' states."""

    def __init__(self, cfg: ElectraConfig, num_labels: int):
        super().__init__()
        self.mean = cfg.pooling == "mean"
        self.dropout = nn.Dropout(cfg.dropout)
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, num_labels)

    def forward(self, h, mask=None):
        if self.mean:
            pooled = mean_pooled(h, torch.ones(h.shape[:2], device=h.device) if mask is None else mask)
        else:
            pooled = h[:, 0]
        return self.out(self.dropout(F.gelu(self.dense(self.dropout(pooled)))))


class TokenHead(nn.Module):
    def __init__(self, cfg: ElectraConfig, num_labels: int):
        super().__init__()
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.hidden_size, num_labels)

    def forward(self, h, mask=None):
        return self.out(self.dropout(h))


class JointHead(nn.Module):
    """An intent for the utterance and one slot tag per token, trained together."""

    def __init__(self, cfg: ElectraConfig):
        super().__init__()
        self.intent = SequenceHead(cfg, cfg.num_labels)
        self.slots = TokenHead(cfg, len(cfg.slot_labels))

    def forward(self, h, mask=None):
        return self.intent(h, mask), self.slots(h)


# Every head takes the last hidden states and the attention mask; only a mean-pooling sequence head reads it.
HEADS = {
    "discriminator": lambda cfg, encoder: DiscriminatorHead(cfg),
    "generator": lambda cfg, encoder: GeneratorHead(cfg, encoder.embeddings.word),
    "sequence": lambda cfg, encoder: SequenceHead(cfg, cfg.num_labels),
    "token": lambda cfg, encoder: TokenHead(cfg, len(cfg.slot_labels)),
    "joint": lambda cfg, encoder: JointHead(cfg),
}

class Electra(nn.Module):
    """An ELECTRA encoder with the head its config's task asks for.

    forward returns the head's logits (a tuple of intent and slot logits for `joint`);
    with output_hidden_states it returns (logits, hidden_states).
    """

    def __init__(self, cfg: ElectraConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.head = HEADS[cfg.task](cfg, self.encoder)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=False):
        out = self.encoder(input_ids, attention_mask, token_type_ids, output_hidden_states)
        if output_hidden_states:
            hidden, states = out
            return self.head(hidden, attention_mask), states
        return self.head(out, attention_mask)

    @property
    def output_names(self) -> list[str]:
        return io_spec.output_names(self.config.task)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
