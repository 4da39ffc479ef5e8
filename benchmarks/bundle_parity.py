"""Each bundle's accuracy on a labelled file, and its top-1 agreement with a reference bundle (FP32 torch).

    .venv/bin/python benchmarks/bundle_parity.py DATA.jsonl REFERENCE_BUNDLE BUNDLE...

Every bundle runs `Predictor.predict_proba` on the whole file in batches of 32, one thread; argmax is the label
(no out-of-scope threshold).
"""
from __future__ import annotations

import sys
import time

import numpy as np

from edge_electra import Predictor
from edge_electra.data import load


def main(data_file: str, reference: str, bundles: list[str]) -> None:
    data = load(data_file, require_labels=True)
    texts = data.texts
    results = {}
    for bundle in [reference, *bundles]:
        predictor = Predictor.load(bundle, threads=1)
        started = time.time()
        probs = np.concatenate([predictor.predict_proba(texts[i:i + 32]) for i in range(0, len(texts), 32)])
        labels = [predictor.labels[i] for i in probs.argmax(-1)]
        results[bundle] = (probs, labels)
        acc = np.mean([label == e.label for label, e in zip(labels, data.examples)])
        print(f"{bundle}: accuracy {acc:.4f} on {len(texts)} ({time.time() - started:.0f} s)", flush=True)
    ref_probs, ref_labels = results[reference]
    for bundle in bundles:
        probs, labels = results[bundle]
        print(f"{bundle} vs {reference}: top-1 agreement {np.mean([a == b for a, b in zip(labels, ref_labels)]):.4f}, "
              f"max |prob delta| {np.abs(probs - ref_probs).max():.4f}")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
