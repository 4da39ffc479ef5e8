"""Share of the hand-written paraphrases a bundle answers right, as the chatbot runs it (its OOS threshold on),
over all lines and over those not verbatim in the built-in data (some natural phrasings are in both).

    python benchmarks/demo_paraphrase_score.py build/bundles/x86-avx2-cpu [benchmarks/demo_paraphrases.jsonl]
"""
import json
import sys
from pathlib import Path

from edge_electra.runtime.predictor import Predictor
from edge_electra.tools import builtin_data

bundle = sys.argv[1]
path = Path(sys.argv[2] if len(sys.argv) > 2 else Path(__file__).with_name("demo_paraphrases.jsonl"))
rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
predictor = Predictor.load(bundle, threads=1)
predictions = predictor.predict_batch([r["text"] for r in rows])
wrong = [(r["text"], r["label"], p.label) for r, p in zip(rows, predictions) if p.label != r["label"]]
built_in = {e.text for e in builtin_data.examples()}
unseen = [r for r in rows if r["text"] not in built_in]
unseen_wrong = [w for w in wrong if w[0] not in built_in]
print(f"{bundle}: {len(rows) - len(wrong)}/{len(rows)} = {1 - len(wrong) / len(rows):.4f}; "
      f"not in the built-in data {len(unseen) - len(unseen_wrong)}/{len(unseen)} = "
      f"{1 - len(unseen_wrong) / len(unseen):.4f} (OOS threshold {predictor.oos_threshold})")
for text, gold, said in wrong:
    print(f"  {text!r}: {gold} -> {said}")
