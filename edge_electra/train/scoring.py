"""Scores of a trained classifier on a labelled split: accuracy, macro-F1, OOS recall and in-scope accuracy,
slot span F1 for joint models; the score checkpoints are chosen on; the out-of-scope threshold."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from edge_electra import data as data_io
from edge_electra.atomic import atomic_file
from edge_electra.train import labelled, placement
from edge_electra.train.evaluate import classification_report, slot_f1
from edge_electra.train.model import Electra


@torch.inference_mode()
def predict(model: Electra, tensors: dict, dataset: data_io.Dataset, rt: placement.Runtime,
            batch_size: int = 128) -> tuple[np.ndarray, list | None, list | None]:
    """Intent probabilities (N, C), and for joint models each row's predicted and gold tags (one per word)."""
    was_training = model.training
    model.eval()
    probabilities, slot_predictions, slot_gold = [], [], []
    for start in range(0, len(dataset), batch_size):
        batch = labelled.take(tensors, slice(start, start + batch_size))
        with rt.autocast():
            out = model(*(batch[k].to(rt.device) for k in ("input_ids", "attention_mask", "token_type_ids")))
        intent, slots = out if isinstance(out, tuple) else (out, None)
        probabilities.append(intent.float().softmax(-1).cpu())
        if slots is not None:
            keep = batch["slot_labels"] != labelled.IGNORE
            tags = slots.argmax(-1).cpu()
            for row in range(len(tags)):
                slot_predictions.append([dataset.slot_labels[i] for i in tags[row][keep[row]].tolist()])
                slot_gold.append([dataset.slot_labels[i] for i in batch["slot_labels"][row][keep[row]].tolist()])
    model.train(was_training)
    return torch.cat(probabilities).numpy(), (slot_predictions or None), (slot_gold or None)


def decide(probabilities: np.ndarray, labels: list[str], threshold: float | None = None) -> np.ndarray:
    """Predicted label ids; below `threshold` the out-of-scope label (as the Predictor abstains)."""
    predicted = probabilities.argmax(-1)
    oos = data_io.oos_label(labels)
    if threshold is not None and oos is not None:
        predicted = np.where(probabilities.max(-1) < threshold, labels.index(oos), predicted)
    return predicted


def report(dataset: data_io.Dataset, predicted: tuple, threshold: float | None = None) -> dict:
    probabilities, slot_predictions, slot_gold = predicted
    result = classification_report(np.asarray(dataset.label_ids()), decide(probabilities, dataset.labels, threshold),
                                   dataset.labels)
    if slot_gold:
        result["slot_f1"] = slot_f1(slot_gold, slot_predictions)
    if threshold is not None:
        result["oos_threshold"] = threshold
    return result


def evaluate(model: Electra, tensors: dict, dataset: data_io.Dataset, rt: placement.Runtime,
             threshold: float | None = None) -> dict:
    return report(dataset, predict(model, tensors, dataset, rt), threshold)


def selection_score(result: dict) -> float:
    """What checkpoints are chosen on: accuracy, or for joint models the mean of accuracy and slot F1."""
    return (result["accuracy"] + result["slot_f1"]) / 2 if "slot_f1" in result else result["accuracy"]


def choose_oos_threshold(probabilities: np.ndarray, labels: list[str], gold: list[int],
                         max_in_scope_loss: float = 1.0) -> float | None:
    """The confidence below which to answer out-of-scope, chosen on this (validation) split: the one with the
    highest OOS recall among those that cost at most `max_in_scope_loss` points of in-scope accuracy against no
    threshold (the lowest such). None without an out-of-scope label or examples of it.

    A budget rather than the mean of in-scope accuracy and OOS recall: validation sets hold few OOS examples
    (CLINC150: 100 of 3 100), whose recall climbs in big steps, and the mean then trades away several points of
    in-scope accuracy for them (benchmarks/training.md §8)."""
    oos = data_io.oos_label(labels)
    gold = np.asarray(gold)
    if oos is None or not (gold == labels.index(oos)).any() or (gold == labels.index(oos)).all():
        return None
    is_oos = gold == labels.index(oos)
    confidence, predicted = probabilities.max(-1), probabilities.argmax(-1)
    floor = ((predicted == gold)[~is_oos]).mean() - max_in_scope_loss / 100 - 1e-12
    best, best_recall = 0.0, -1.0
    for threshold in np.round(np.arange(0.0, 1.0, 0.01), 2):
        abstain = confidence < threshold
        if ((predicted == gold) & ~abstain)[~is_oos].mean() < floor:
            break   # in-scope accuracy only falls as the threshold rises
        recall = ((predicted == gold) | abstain)[is_oos].mean()
        if recall > best_recall + 1e-12:
            best, best_recall = float(threshold), recall
    return best


def store_oos_threshold(checkpoint: Path, threshold: float) -> None:
    """Keep the chosen out-of-scope threshold in the checkpoint's config.json (edge_electra section), where
    compile finds it and writes it into the bundle as the Predictor's default (manifest runtime.oos_threshold)."""
    hf = json.loads((Path(checkpoint) / "config.json").read_text())
    hf.setdefault("edge_electra", {})["oos_threshold"] = threshold
    with atomic_file(Path(checkpoint) / "config.json") as tmp:
        tmp.write_text(json.dumps(hf, indent=2) + "\n")
