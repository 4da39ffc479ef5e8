"""Training on the GPU side: ELECTRA pre-training, distillation and fine-tuning. Each is one verb + one config."""
from edge_electra.train.distill import DistillConfig, distill, finetune
from edge_electra.train.pretrain import PretrainConfig, pretrain

__all__ = ["DistillConfig", "PretrainConfig", "distill", "finetune", "pretrain"]
