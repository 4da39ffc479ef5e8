"""Training on the GPU side: ELECTRA pre-training, distillation and fine-tuning. Each is one verb + one config."""
from .distill import DistillConfig, distill, finetune
from .pretrain import PretrainConfig, pretrain

__all__ = ["DistillConfig", "PretrainConfig", "distill", "finetune", "pretrain"]
