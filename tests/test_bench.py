"""The latency harness: interleaving, statistics, inputs of set lengths, compute floor, CLI outputs."""
from __future__ import annotations

import csv
import json
import resource
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from edge_electra import Predictor, dataclass_io
from edge_electra.tools.bench import harness, report
from edge_electra.tools.bench.cli import command
from edge_electra.tools.bench.sysinfo import cpu_info, gemm_gflops
from edge_electra.runtime.bundle import Bundle
from edge_electra.errors import ConfigError

from conftest import LABELS, TEXTS, without_torch_env, write_dataset


def test_interleaved_rotates_round_robin_and_counts_runs():
    order = []
    calls = {name: [lambda n=name: order.append(n)] for name in "abc"}
    samples = harness.interleaved(calls, runs=4, warmup=1)
    assert {k: len(v) for k, v in samples.items()} == {"a": 4, "b": 4, "c": 4}
    timed = order[3:]  # after one warm-up call each
    assert timed == list("abc" "bca" "cab" "abc")


def test_interleaved_blocks_time_each_subject_in_a_row_after_untimed_lead_in_calls():
    order = []
    calls = {name: [lambda n=name, k=k: order.append(f"{n}{k}") for k in range(100)] for name in "ab"}
    samples = harness.interleaved(calls, runs=5, block=3, lead_in=2)
    assert {k: len(v) for k, v in samples.items()} == {"a": 5, "b": 5}
    # turn 1: a's lead-in (calls 0, 1) then its timed calls 0-2; b likewise; turn 2 starts with b, and the
    # last block is cut to the runs left (2)
    assert order == ["a0", "a1", "a0", "a1", "a2", "b0", "b1", "b0", "b1", "b2",
                     "b3", "b4", "b3", "b4", "a3", "a4", "a3", "a4"]


def test_time_budget_stops_the_loop():
    calls = {"a": [lambda: None]}
    samples = harness.interleaved(calls, runs=10**9, seconds=0.05)
    assert 3 <= len(samples["a"]) < 10**9


def test_summary_statistics():
    ns = [1_000_000 * k for k in range(1, 101)]
    s = harness.summarize(ns, batch=4)
    ms = np.arange(1, 101, dtype=float)
    assert s["p50_ms"] == pytest.approx(np.percentile(ms, 50)) and s["p99_ms"] == pytest.approx(np.percentile(ms, 99))
    assert s["max_ms"] == 100 and s["mean_ms"] == pytest.approx(50.5) and s["std_ms"] == pytest.approx(ms.std())
    assert s["throughput_per_s"] == pytest.approx(4 * 100 / (ms.sum() / 1e3))


def test_bench_config_round_trips_and_rejects_bad_sweeps():
    cfg = harness.BenchConfig(batch_sizes=[1, 4], seq_lens=[8], seconds=2.5, threads=2, data="d.jsonl")
    assert dataclass_io.from_dict(harness.BenchConfig, dataclass_io.to_dict(cfg)) == cfg
    with pytest.raises(ConfigError):
        harness.BenchConfig(batch_sizes=[0])
    with pytest.raises(ConfigError):
        harness.BenchConfig(seconds=-1)


def test_synthetic_texts_have_the_asked_token_length(tiny_bundle):
    p = Predictor.load(tiny_bundle("sequence"))
    words = " ".join(TEXTS).split()
    for length in (5, 16, 33, 64):
        text = harness.text_of_length(p, words, length, offset=3)
        assert p.tokenizer([text]).input_ids.shape[1] == length


def test_floor_flops_count_every_matmul_weight(tiny_bundle):
    torch = pytest.importorskip("torch")
    from edge_electra.train.model import Electra
    from edge_electra.train.config import ElectraConfig
    config = Bundle.load(tiny_bundle("sequence")).manifest.source["config"]
    model = Electra(dataclass_io.from_dict(ElectraConfig, config))
    encoder_weights = sum(m.weight.numel() for m in model.encoder.modules() if isinstance(m, torch.nn.Linear))
    head_weights = sum(m.weight.numel() for m in model.head.modules() if isinstance(m, torch.nn.Linear))
    seq, h = 20, config["hidden_size"]
    attention = config["num_layers"] * 4 * seq * seq * h
    assert harness.floor_flops(config, seq) == 2 * encoder_weights * seq + attention + 2 * head_weights
    assert harness.floor_flops(None, seq) is None


def test_cpu_info_reads_x86_and_arm_flags(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
                   "flags\t\t: fpu sse avx2 avx512f avx512_vnni amx_tile amx_int8\n")
    info = cpu_info(x86)
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert {"avx2", "avx512_vnni", "amx_int8"} <= set(info["flags"]) and "sse" not in info["flags"]
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\nHardware\t: Raspberry Pi 5\n")
    assert set(cpu_info(arm)["flags"]) == {"asimd", "asimddp", "i8mm"}
    assert gemm_gflops(size=64, seconds=0.01) > 0


def test_bench_cli_two_bundles_with_data(tiny_bundle, tmp_path):
    seq_bundle, joint_bundle = tiny_bundle("sequence"), tiny_bundle("joint")
    data = write_dataset(tmp_path / "utterances.jsonl")
    out = tmp_path / "out"
    result = CliRunner().invoke(command, [str(seq_bundle), str(joint_bundle), "--data", str(data), "--runs", "4",
                                          "--warmup", "1", "--batch-sizes", "1,2", "--seq-lens", "8,128",
                                          "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    bench = json.loads((out / "bench.json").read_text())
    names = [seq_bundle.name, joint_bundle.name]
    assert [b["name"] for b in bench["bundles"]] == names
    rows = bench["results"]
    # seq 128 is over the bundles' max_length 64: skipped; every other case has both bundles, 4 runs each.
    cases = {(r["mode"], r["source"], r["batch"], r["seq"]) for r in rows}
    assert cases == {(m, "synthetic", b, 8) for m in ("end_to_end", "model_only") for b in (1, 2)} | \
        {(m, "data", b, None) for m in ("end_to_end", "model_only") for b in (1, 2)}
    assert all(r["runs"] == 4 and len(r["samples_ms"]) == 4 and r["p50_ms"] <= r["max_ms"] for r in rows)
    assert sorted(r["bundle"] for r in rows) == sorted(names * len(cases))
    floors = [r for r in rows if r["mode"] == "model_only" and r["source"] == "synthetic"]
    assert all(r["floor_ms"] > 0 and r["x_floor"] > 0 for r in floors)
    for b, path in zip(bench["bundles"], (seq_bundle, joint_bundle)):
        assert b["size_bytes"] == Bundle.load(path).size_bytes()
        cold = b["cold_start"]
        assert cold["label"] in LABELS and cold["process_to_first_result_s"] > cold["first_predict_s"] > 0
        assert cold["peak_rss_mb"] >= cold["peak_rss_mb_first"] > 10
        # The child's own peak, not the one it inherits from this (torch-loaded, bigger) process.
        assert cold["peak_rss_mb"] < resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        predictions = Predictor.load(path).predict_batch(TEXTS)
        truth = [json.loads(line)["label"] for line in data.read_text().splitlines()]
        expected = sum(p.label == t for p, t in zip(predictions, truth)) / len(truth)
        assert b["accuracy"]["intent_accuracy"] == pytest.approx(expected)
    assert bench["system"]["cpu"]["usable_cores"] >= 1 and bench["system"]["gemm_gflops"] > 0
    assert "onnxruntime" in bench["system"]["versions"] and bench["system"]["threads"] == 1
    with open(out / "bench.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "p99 ms" in result.output and "cold start" in result.output


def test_bench_runs_where_torch_cannot_be_imported(tiny_bundle, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", "from edge_electra.tools.bench.cli import command; command()",
                           str(tiny_bundle("sequence")), "--runs", "2", "--warmup", "0", "--batch-sizes", "1",
                           "--seq-lens", "8", "--out", str(out)],
                          env=without_torch_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    bench = json.loads((out / "bench.json").read_text())
    assert bench["bundles"][0]["cold_start"]["peak_rss_mb"] > 0 and len(bench["results"]) == 2


def test_plot_is_skipped_with_a_note_without_matplotlib(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "out"
    result = CliRunner().invoke(command, [str(tiny_bundle("sequence")), "--runs", "2", "--warmup", "0",
                                          "--batch-sizes", "1", "--seq-lens", "8", "--no-cold-start",
                                          "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "bench.json").exists() and not (out / "bench.png").exists()
    assert "cold_start" not in json.loads((out / "bench.json").read_text())["bundles"][0]


def test_table_lists_every_result():
    result = {"system": {"cpu": {"model": "cpu", "usable_cores": 2, "flags": ["avx2"]}, "os": "os", "threads": 1,
                         "gemm_gflops": 10.0, "versions": {"numpy": "2"}},
              "bundles": [{"name": "a", "backend": "onnx-mobile", "precision": "int8", "size_bytes": 2e6}],
              "results": [{"bundle": "a", "mode": "model_only", "source": "synthetic", "batch": b, "seq": 16,
                           "padded_seq": 16, **harness.summarize([10**6, 2 * 10**6], b)} for b in (1, 8)]}
    lines = report.table(result).splitlines()
    assert sum(line.startswith("a ") for line in lines) == 2
    assert any("2.00 MB" in line for line in lines)


def test_bench_scores_slots_as_bio_spans(tiny_bundle):
    """Joint bundles report span F1 as seqeval counts it, not only the fraction of words tagged right."""
    from edge_electra.data import Dataset, Example
    from edge_electra.metrics import slot_f1
    predictor = Predictor.load(tiny_bundle("joint"))
    texts = TEXTS[:6]
    predicted = [[t for _, t in p.slots] for p in predictor.predict_batch(texts)]
    # Gold: the model's own tags with the first word's tag changed, so some spans are lost and some kept.
    gold = [[("O" if tag == "B-city" else "B-city") if i == 0 else tag for i, tag in enumerate(tags)]
            for tags in predicted]
    dataset = Dataset([Example(t, LABELS[0], g) for t, g in zip(texts, gold)], LABELS)
    scores = harness.accuracy(predictor, dataset)
    assert scores["slot_f1"] == pytest.approx(slot_f1(gold, predicted)) and 0 < scores["slot_f1"] < 1
    words = [(a, b) for g, p in zip(gold, predicted) for a, b in zip(g, p)]
    assert scores["slot_word_accuracy"] == pytest.approx(sum(a == b for a, b in words) / len(words))
