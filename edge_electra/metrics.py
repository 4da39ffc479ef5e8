"""Metrics computed with numpy only: accuracy, macro-F1, per-class report, OOS recall, slot span F1, AUC.

Torch-free, so that training, the accuracy gate and the bench (which runs on devices) share one definition.
"""
from __future__ import annotations

import numpy as np

from edge_electra.data import oos_label


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve from ranks (Mann-Whitney U); ties share their mean rank. NaN if one class is absent."""
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel().astype(bool)
    positives, negatives = labels.sum(), (~labels).sum()
    if not positives or not negatives:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    _, tie_group, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mean_rank = np.bincount(tie_group, weights=ranks) / counts
    ranks = mean_rank[tie_group]
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def classification_report(gold: np.ndarray, pred: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, macro-F1 (over classes present in gold or pred), per-class P/R/F1/support, and OOS recall."""
    gold, pred = np.asarray(gold), np.asarray(pred)
    per_class, f1s = {}, []
    for i, name in enumerate(labels):
        tp = int(((pred == i) & (gold == i)).sum())
        predicted, support = int((pred == i).sum()), int((gold == i).sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
        if support or predicted:
            f1s.append(f1)
    report = {"accuracy": float((gold == pred).mean()) if len(gold) else 0.0,
              "macro_f1": float(np.mean(f1s)) if f1s else 0.0, "per_class": per_class}
    oos = oos_label(labels)
    if oos is not None and per_class[oos]["support"]:
        report["oos_recall"] = per_class[oos]["recall"]
        in_scope = gold != labels.index(oos)
        report["in_scope_accuracy"] = float((gold[in_scope] == pred[in_scope]).mean()) if in_scope.any() else 0.0
    return report


def spans(tags: list[str | None]) -> set[tuple[str, int, int]]:
    """(type, start, end) of each BIO span, as seqeval counts them in its default (CoNLL) mode.

    A span ends at O, at B-, or at an I- of another type; an I- tag without a matching B- starts a
    span. None (a word the model never saw, e.g. cut off by truncation) counts as O.
    """
    found, start, kind = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, name = (tag or "O").partition("-")
        if start is not None and (prefix != "I" or name != kind):
            found.add((kind, start, i))
            start = None
        if prefix == "B" or (prefix == "I" and start is None):
            start, kind = i, name
    return found


def slot_f1(gold: list[list[str]], pred: list[list[str]]) -> float:
    """Micro F1 over exact-match slot spans, summed over all sentences (seqeval's f1_score)."""
    tp = n_gold = n_pred = 0
    for g, p in zip(gold, pred):
        gs, ps = spans(g), spans(p)
        tp, n_gold, n_pred = tp + len(gs & ps), n_gold + len(gs), n_pred + len(ps)
    if not tp:
        return 0.0
    precision, recall = tp / n_pred, tp / n_gold
    return 2 * precision * recall / (precision + recall)
