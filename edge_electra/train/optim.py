"""AdamW with BERT's no-decay groups and the linear warm-up then linear decay schedule."""
from __future__ import annotations

import torch


def adamw(model: torch.nn.Module, lr: float, weight_decay: float, eps: float = 1e-6,
          betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """Biases and LayerNorm weights get no weight decay; fused kernels on CUDA."""
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim < 2 else decay).append(p)
    on_cuda = next(model.parameters()).is_cuda
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=betas, eps=eps, fused=on_cuda)


def warmup_linear(optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate rises linearly for `warmup_steps`, then falls linearly to 0 at `total_steps`."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
