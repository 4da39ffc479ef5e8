"""The metrics live in the torch-free edge_electra.metrics (the gate and the bench use them too)."""
from edge_electra.metrics import classification_report, roc_auc, slot_f1, spans

__all__ = ["classification_report", "roc_auc", "slot_f1", "spans"]
