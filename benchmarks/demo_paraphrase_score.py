"""Share of the hand-written paraphrases a bundle answers right, as the chatbot runs it (its OOS threshold on).

    python benchmarks/demo_paraphrase_score.py build/bundles/x86-avx2-cpu [benchmarks/demo_paraphrases.jsonl]
"""
import json
import sys
from pathlib import Path

from edge_electra.runtime.predictor import Predictor

bundle = sys.argv[1]
path = Path(sys.argv[2] if len(sys.argv) > 2 else Path(__file__).with_name("demo_paraphrases.jsonl"))
rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
predictor = Predictor.load(bundle, threads=1)
predictions = predictor.predict_batch([r["text"] for r in rows])
wrong = [(r["text"], r["label"], p.label) for r, p in zip(rows, predictions) if p.label != r["label"]]
print(f"{bundle}: {len(rows) - len(wrong)}/{len(rows)} = {1 - len(wrong) / len(rows):.4f} "
      f"(OOS threshold {predictor.oos_threshold})")
for text, gold, said in wrong:
    print(f"  {text!r}: {gold} -> {said}")
