#!/usr/bin/env bash
# Issue 3's H100 measurements as one prepared script for a lent device machine (see the device tool's README:
# at most 10 minutes a command, 15 minutes of device time, results only through $OUT).
#
# Prepare here, once (gpu-carry/ is git-ignored and travels with `carry: ["gpu-carry"]`):
#     bash benchmarks/gpu_session.sh prepare
# Then on the device, one part per `run` call, each well inside 10 minutes:
#     bash benchmarks/gpu_session.sh speed      # ≈ 3 min: RTD steps/s, ours (eager, compiled) vs transformers
#     bash benchmarks/gpu_session.sh pretrain   # 7 min of from-scratch pre-training; run again to continue
# Each part leaves its JSON/metrics under $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=gpu-carry
OUT=${OUT:-build/gpu-session}
mkdir -p "$OUT"

on_device() {
    # The device's python3 has everything else; the project runs from the checkout.
    python3 -m pip install -q --no-index --find-links "$CARRY/wheels" tomli-w
    export PYTHONPATH=$PWD
}

case "${1:-}" in
prepare)
    mkdir -p "$CARRY/wheels" "$CARRY/data"
    grep -qx "/$CARRY/" .git/info/exclude 2>/dev/null || echo "/$CARRY/" >> .git/info/exclude
    # The device has torch, onnx, tokenizers, transformers and click, but not our other core dependency.
    .venv/bin/pip download -q --no-deps -d "$CARRY/wheels" tomli-w
    cp ../shared/data/sgd_dialogue_corpus/train.txt "$CARRY/data/sgd_train.txt"
    cp ../shared/data/clinc150/train.jsonl "$CARRY/data/clinc_train.jsonl"
    # A vocabulary trained on the same corpus, so the device spends no time on it.
    .venv/bin/python - "$CARRY/data" <<'EOF'
import sys
from edge_electra.data import read_text_lines
from edge_electra.runtime.tokenizer import Tokenizer
folder = sys.argv[1]
Tokenizer.train(read_text_lines([f"{folder}/sgd_train.txt", f"{folder}/clinc_train.jsonl"]), 30522) \
    .save_pretrained(f"{folder}/tokenizer")
EOF
    du -sh "$CARRY"
    ;;
speed)
    on_device
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$OUT/gpu.csv"
    PYTHONUNBUFFERED=1 python3 benchmarks/pretrain_speed.py --preset small --batch 128 --seq 128 --steps 50 \
        --compile | tee "$OUT/pretrain_speed.json"
    ;;
pretrain)
    on_device
    # The paper's ELECTRA-Small recipe, stopped cleanly after 7 minutes; another call resumes it while the
    # machine stays warm (the state is too big to come back through $OUT: only the metrics do).
    PYTHONUNBUFFERED=1 python3 -m edge_electra.cli pretrain "$CARRY/data/sgd_train.txt" "$CARRY/data/clinc_train.jsonl" \
        --tokenizer "$CARRY/data/tokenizer" --out build/gpu-pretrain --preset small --seq-len 128 --batch-size 128 \
        --steps 100000 --warmup-steps 10000 --save-every 2000 --log-every 200 --compile --resume --no-plot \
        --time-limit 420 | tee "$OUT/pretrain.log"
    cp build/gpu-pretrain/metrics.jsonl build/gpu-pretrain/config.toml "$OUT/"
    ;;
*)
    echo "usage: $0 prepare | speed | pretrain" >&2
    exit 2
    ;;
esac
