"""Batch-1 latency of the usual alternatives, beside our bundles, on the same utterances and cores.

    peers   HF transformers eager FP32 (ElectraForSequenceClassification.from_pretrained)
            Hugging Face optimum's ONNX Runtime export, optimized at O3 (its best CPU level)
    ours    any bundles given with --bundle, through the Predictor

All are timed end-to-end (tokenize + infer + argmax), one utterance per call, interleaved
round-robin with the edge-electra harness so drift hits all alike. Each also reports its top-1
agreement with eager on the first 200 utterances and, when the file is labelled, its accuracy on
--accuracy-items of them (every k-th; labels compared by name). optimum-onnx pins transformers < 4.58,
so it runs in its own environment that borrows everything else from .venv:

    python3 -m venv build/venv-peers
    echo 'import site; site.addsitedir("'$PWD'/.venv/lib/python3.11/site-packages")' \
        > build/venv-peers/lib/python3.11/site-packages/main-venv.pth
    build/venv-peers/bin/pip install 'optimum-onnx[onnxruntime]'   # the `bench` extra of pyproject.toml
    build/venv-peers/bin/python benchmarks/peers.py CHECKPOINT --data ../shared/data/clinc150/test.jsonl \
        --threads 1 --bundle build/bundle --out build/peers.json
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_electra.tools.bench.harness import BenchConfig, interleaved, summarize
from edge_electra.tools.bench.report import write_json
from edge_electra.tools.bench.sysinfo import system_info
from edge_electra.data import load


def transformers_eager(checkpoint: Path, threads: int):
    import torch
    from transformers import AutoTokenizer, ElectraForSequenceClassification
    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = ElectraForSequenceClassification.from_pretrained(checkpoint).eval()  # FP32 as saved

    def predict(text: str) -> str:
        with torch.inference_mode():
            return model.config.id2label[int(model(**tokenizer(text, return_tensors="pt")).logits.argmax(-1))]
    return predict


def optimum_ort(checkpoint: Path, threads: int, workdir: Path):
    import onnxruntime as ort
    from optimum.onnxruntime import AutoOptimizationConfig, ORTModelForSequenceClassification, ORTOptimizer
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    exported = ORTModelForSequenceClassification.from_pretrained(checkpoint, export=True)
    ORTOptimizer.from_pretrained(exported).optimize(save_dir=workdir, optimization_config=AutoOptimizationConfig.O3())
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    model = ORTModelForSequenceClassification.from_pretrained(workdir, file_name="model_optimized.onnx",
                                                              session_options=options)

    def predict(text: str) -> str:
        return model.config.id2label[int(np.argmax(model(**tokenizer(text, return_tensors="np")).logits))]
    return predict


def ours(bundle: Path, threads: int):
    from edge_electra import Predictor
    predictor = Predictor.load(bundle, threads=threads)
    return lambda text: predictor(text).label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="Hugging Face layout folder (config.json, weights, vocab)")
    parser.add_argument("--data", type=Path, required=True, help="Utterances to replay at their real lengths")
    parser.add_argument("--bundle", type=Path, action="append", default=[], help="Our bundle(s) to time alongside")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("build/peers.json"))
    parser.add_argument("--accuracy-items", type=int, default=1100,
                        help="Accuracy on about this many labelled utterances, spread over the file (0: skip)")
    args = parser.parse_args()

    data = load(args.data, require_labels=False)
    texts = data.texts
    labelled = [e for e in data.examples if e.label is not None]
    if args.accuracy_items and labelled:
        labelled = labelled[::max(1, len(labelled) // args.accuracy_items)][:args.accuracy_items]
    else:
        labelled = []
    with tempfile.TemporaryDirectory(prefix="peers-optimum.") as tmp:
        candidates = {"transformers-eager-fp32": transformers_eager(args.checkpoint, args.threads),
                      "optimum-ort-O3": optimum_ort(args.checkpoint, args.threads, Path(tmp))}
        candidates |= {f"edge-electra:{b.name}": ours(b, args.threads) for b in args.bundle}
        agreement = {name: [predict(t) for t in texts[:200]] for name, predict in candidates.items()}
        accuracy = {name: (float(np.mean([predict(e.text) == e.label for e in labelled])) if labelled else None)
                    for name, predict in candidates.items()}
        calls = {name: [lambda p=predict, t=t: p(t) for t in texts[:args.runs]] for name, predict in candidates.items()}
        started = time.perf_counter()
        samples = interleaved(calls, BenchConfig(runs=args.runs, warmup=args.warmup, threads=args.threads))
    reference = agreement["transformers-eager-fp32"]
    rows = []
    for name, ns in samples.items():
        stats = summarize(ns, batch=1)
        same = np.mean([a == b for a, b in zip(agreement[name], reference)])
        rows.append({"name": name, "agreement_with_eager": float(same), "accuracy": accuracy[name],
                     "accuracy_items": len(labelled), **stats})
        acc = "" if accuracy[name] is None else f"  accuracy {accuracy[name]:.4f} (n={len(labelled)})"
        print(f"{name:<32} p50 {stats['p50_ms']:7.3f} ms  p90 {stats['p90_ms']:7.3f}  p99 {stats['p99_ms']:7.3f}  "
              f"mean {stats['mean_ms']:.3f}±{stats['std_ms']:.3f}  agrees {same:.3f}{acc}")
    write_json({"checkpoint": str(args.checkpoint), "data": str(args.data), "threads": args.threads,
                "seconds": time.perf_counter() - started, "system": system_info(args.threads), "peers": rows},
               args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
