"""Timing loops: end-to-end and model-only latency per batch size and length, interleaved across bundles.

Every bundle runs the same case in turns, round-robin (the order rotating each round), so machine drift
(thermal throttling, a noisy neighbour) hits all of them alike. A turn is a block of calls to one bundle after
a few untimed ones: a runtime's worker threads spin for a while after each call, and timed right after another
runtime they steal its cores (ONNX Runtime beside torch eager measured 2.5 times slower than alone,
benchmarks/latency.md).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import click
import numpy as np

from edge_electra.cli_options import option_field
from edge_electra.data import load as load_data
from edge_electra.dataclass_io import to_dict
from edge_electra.errors import ConfigError
from edge_electra.metrics import slot_f1
from edge_electra.runtime.predictor import Predictor

MODES = ("end_to_end", "model_only")
LEAD_IN = 2  # untimed calls when a bundle's turn begins
FALLBACK_WORDS = ("please set an alarm for seven tomorrow morning and remind me to call my sister about "
                  "the flight to boston").split()


@dataclass
class BenchConfig:
    # The command line's `bench` options are made from these fields (edge_electra.cli_options).
    batch_sizes: list[int] = option_field(default_factory=lambda: [1, 8], help="Batch sizes to sweep.")
    seq_lens: list[int] = option_field(default_factory=lambda: [16, 32, 128],
                                       help="Token lengths (with [CLS] and [SEP]) of the synthetic utterances.")
    runs: int = option_field(100, help="Timed runs per case and bundle.")
    seconds: float | None = option_field(None, help="Time each case for this long (all bundles together) instead "
                                                    "of --runs.")
    warmup: int = option_field(5, help="Untimed runs per case and bundle first.")
    threads: int | None = option_field(None, help="Runtime threads (default: the bundle's or runtime's).")
    data: str | None = option_field(None, help="Labelled utterances (.jsonl/.csv/...): replayed at their real "
                                               "lengths, and used to measure accuracy.", click={"type": click.Path()})
    cold_start: bool = option_field(True, help="Measure cold start and peak memory in a fresh subprocess.")
    modes: list[str] = option_field(default_factory=lambda: list(MODES),
                                    click={"type": click.Choice(MODES), "multiple": True},
                                    help="What to time: end_to_end (tokenize + infer + post-process) and "
                                         "model_only (the runtime on pre-tokenized input). Repeatable.")
    synthetic: bool = option_field(True, help="Time synthetic texts of each --seq-lens; with --data, "
                                              "--no-synthetic times the data replay only.")
    block: int = option_field(20, help="Timed calls in a row per bundle and turn, after two untimed ones (1: "
                                        "strict round-robin, which lets one runtime's spinning threads slow "
                                        "the next).")
    profile: bool = option_field(False, help="Also run each bundle under its runtime's own profiler (ONNX "
                                             "Runtime's trace, OpenVINO's performance counters): time per "
                                             "operator type, raw profile saved as profile-<bundle>.json.")

    def __post_init__(self):
        if not self.batch_sizes or min(self.batch_sizes) < 1 or not self.seq_lens or min(self.seq_lens) < 3:
            raise ConfigError("batch sizes must be ≥ 1 and sequence lengths ≥ 3 (two are [CLS] and [SEP])")
        if not self.modes or set(self.modes) - set(MODES):
            raise ConfigError(f"--modes takes {list(MODES)}, got {self.modes}")
        if not self.synthetic and not self.data:
            raise ConfigError("--no-synthetic times only the data replay: give --data")
        if self.runs < 1 or (self.seconds is not None and self.seconds <= 0) or self.warmup < 0 or self.block < 1:
            raise ConfigError("--runs and --block must be ≥ 1, --seconds > 0 and --warmup ≥ 0")


@dataclass
class Subject:
    """One bundle under test."""
    name: str
    path: Path
    predictor: Predictor


def summarize(samples_ns: list[int], batch: int) -> dict:
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    return {"runs": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()), "mean_ms": float(ms.mean()),
            "std_ms": float(ms.std()), "throughput_per_s": float(batch * len(ms) / (ms.sum() / 1e3)),
            "samples_ms": [round(float(x), 4) for x in ms]}


def interleaved(calls: dict[str, list[Callable[[], object]]], runs: int, warmup: int = 0,
                seconds: float | None = None, block: int = 1, lead_in: int = 0) -> dict[str, list[int]]:
    """Warm up every subject, then time them in turns, round-robin, the order rotating each round. A turn is
    `lead_in` untimed calls, then up to `block` timed ones, of one subject; a subject's k-th timed call is
    calls[name][k] (cycling). Stops once every subject has `runs` times, or after `seconds` when given.
    Returns each subject's times in ns. The one interleaved timer: compile uses it too."""
    names = list(calls)
    for name in names:
        for i in range(warmup):
            calls[name][i % len(calls[name])]()
    samples: dict[str, list[int]] = {name: [] for name in names}
    start, turn = time.perf_counter(), 0
    while True:
        for name in names[turn % len(names):] + names[:turn % len(names)]:
            fns, done = calls[name], len(samples[name])
            timed = block if seconds is not None else min(block, runs - done)
            for k in range(done, done + lead_in):
                fns[k % len(fns)]()
            for k in range(done, done + timed):
                t0 = time.perf_counter_ns()
                fns[k % len(fns)]()
                samples[name].append(time.perf_counter_ns() - t0)
        turn += 1
        if seconds is not None:
            if time.perf_counter() - start >= seconds and turn >= 3:
                return samples
        elif all(len(times) >= runs for times in samples.values()):
            return samples


# --- inputs ---------------------------------------------------------------------------------------
def text_of_length(predictor: Predictor, words: list[str], tokens: int, offset: int = 0) -> str:
    """A text of whole words that tokenizes to exactly `tokens` (with [CLS] and [SEP]) where words allow."""
    chosen, count, i = [], 2, offset
    while count < tokens:
        word = words[i % len(words)]
        pieces = len(predictor.tokenizer.tokenize(word))
        i += 1
        if pieces == 0 or count + pieces > tokens:
            if i - offset > 4 * len(words):
                break
            continue
        chosen.append(word)
        count += pieces
    return " ".join(chosen) or words[0]


def model_only(predictor: Predictor, texts: list[str]) -> Callable[[], object]:
    feeds = {name: array.copy() for name, array in predictor.feeds(predictor.encode(texts)).items()}
    return lambda: predictor.run(feeds)


def end_to_end(predictor: Predictor, texts: list[str]) -> Callable[[], object]:
    return lambda: predictor.predict_batch(texts)


def padded_length(predictor: Predictor, batches: list[list[str]]) -> float:
    """The sequence length the runtime sees, averaged over the batches (buckets vary in a data replay)."""
    widths = [max(predictor.encode(b).input_ids.shape[1], predictor.shapes.min_length) for b in batches]
    return round(float(np.mean(widths)), 1)


@dataclass
class Case:
    mode: str          # end_to_end | model_only
    source: str        # synthetic (texts of a set length) | data (utterances at their real lengths)
    batch: int
    seq: int | None    # None for data replay

    @property
    def title(self) -> str:
        return f"{self.mode} {self.source} b={self.batch}" + (f" s={self.seq}" if self.seq else "")


def cases(cfg: BenchConfig, data_texts: list[str] | None) -> list[Case]:
    modes = [m for m in MODES if m in cfg.modes]
    synthetic = [Case(mode, "synthetic", b, s) for b in cfg.batch_sizes for s in cfg.seq_lens for mode in modes]
    replay = [Case(mode, "data", b, None) for b in cfg.batch_sizes for mode in modes]
    return (synthetic if cfg.synthetic else []) + (replay if data_texts else [])


def case_inputs(case: Case, predictor: Predictor, words: list[str], data_texts: list[str] | None,
                runs: int) -> list[list[str]] | None:
    """The batches of text one case feeds a bundle, or None when the bundle cannot take that length."""
    if case.source == "data":
        count = max(1, min(len(data_texts) // case.batch, runs))
        return [[data_texts[(k * case.batch + j) % len(data_texts)] for j in range(case.batch)]
                for k in range(count)]
    if case.seq > predictor.shapes.max_length:
        return None
    return [[text_of_length(predictor, words, case.seq, offset=j) for j in range(case.batch)]]


# --- the whole run --------------------------------------------------------------------------------
def floor_flops(config: dict | None, seq: int) -> float | None:
    """FLOPs of one utterance of `seq` tokens: 2·(matmul weights)·tokens plus attention's QKᵀ and AV."""
    if not config:
        return None
    h, e, i, n = config["hidden_size"], config["embedding_size"], config["intermediate_size"], config["num_layers"]
    per_token = (e * h if e != h else 0) + n * (4 * h * h + 2 * h * i)
    attention = n * 2 * (2 * seq * seq * h)
    task, labels, tags = config.get("task"), len(config.get("labels", [])), len(config.get("slot_labels", []))
    head = 0
    if task in ("sequence", "joint"):
        head += 2 * (h * h + h * labels)
    if task in ("token", "joint"):
        head += 2 * seq * h * (tags or labels)
    return float(2 * per_token * seq + attention + head)


def run_bench(paths: list[Path], cfg: BenchConfig, system: dict, say=lambda m: click.echo(m, err=True),
              out: Path | None = None) -> dict:
    """Time every case, then describe each bundle; with cfg.profile, profile each one (raw profiles into `out`)."""
    subjects = load_subjects(paths, cfg)
    dataset = load_data(cfg.data, require_labels=False) if cfg.data else None
    data_texts = dataset.texts if dataset else None
    words = [w for t in (data_texts or []) for w in t.split()] or FALLBACK_WORDS
    all_cases = cases(cfg, data_texts)
    results = []
    for number, case in enumerate(all_cases, 1):
        calls, meta, skipped = {}, {}, []
        for s in subjects:
            batches = case_inputs(case, s.predictor, words, data_texts, cfg.runs)
            if batches is None:
                skipped.append(f"{s.name} (max_length {s.predictor.shapes.max_length})")
                continue
            make = end_to_end if case.mode == "end_to_end" else model_only
            calls[s.name] = [make(s.predictor, b) for b in batches]
            meta[s.name] = (s, padded_length(s.predictor, batches))
        say(f"[{number}/{len(all_cases)}] {case.title}: {', '.join(calls) or '-'}"
            + (f"; skipped, too long for {', '.join(skipped)}" if skipped else ""))
        if not calls:
            continue
        lead_in = LEAD_IN if cfg.block > 1 else 0
        for name, samples in interleaved(calls, cfg.runs, cfg.warmup, cfg.seconds, cfg.block, lead_in).items():
            subject, padded = meta[name]
            row = {"bundle": name, "mode": case.mode, "source": case.source, "batch": case.batch,
                   "seq": case.seq, "padded_seq": padded, **summarize(samples, case.batch)}
            if case.mode == "model_only" and case.source == "synthetic":
                row.update(compute_floor(subject, case.batch, padded, row["p50_ms"], system["gemm_gflops"]))
            results.append(row)
    bundles = []
    measured = " and ".join(what for what, on in (("cold start", cfg.cold_start), ("accuracy", dataset)) if on)
    for s in subjects:
        if measured:
            say(f"measuring {measured} of {s.name}")
        bundles.append(describe(s, cfg, dataset))
    result = {"format": 1, "config": to_dict(cfg), "system": system, "bundles": bundles, "results": results}
    if cfg.profile:
        result["profiles"] = profile_all(subjects, cfg, words, data_texts, out, say)
    return result


def profile_all(subjects: list[Subject], cfg: BenchConfig, words: list[str], data_texts: list[str] | None,
                out: Path | None, say) -> dict:
    """Each bundle's per-operator summary, batch 1 on the data's utterances or a text of each --seq-lens; the raw
    profiles go to `out`/profile-<bundle>.json."""
    from edge_electra.tools.bench import profile
    summaries = {}
    for s in subjects:
        texts = data_texts[:cfg.runs] if data_texts else [
            text_of_length(s.predictor, words, min(seq, s.predictor.shapes.max_length)) for seq in cfg.seq_lens]
        say(f"profiling {s.name}: {cfg.runs} runs under its runtime's profiler")
        summaries[s.name], raw = profile.profile_predictor(s.path, [[t] for t in texts], cfg.runs, cfg.threads)
        if raw and out is not None:
            out.mkdir(parents=True, exist_ok=True)
            summaries[s.name]["raw"] = profile.write_raw(raw, out / profile.raw_name(s.name)).name
    return summaries


def load_subjects(paths: list[Path], cfg: BenchConfig) -> list[Subject]:
    subjects, seen = [], {}
    for path in map(Path, paths):
        name = path.resolve().name
        seen[name] = seen.get(name, 0) + 1
        subjects.append(Subject(name if seen[name] == 1 else f"{name}#{seen[name]}", path,
                                Predictor.load(path, threads=cfg.threads)))
    return subjects


def compute_floor(subject: Subject, batch: int, padded: float, p50_ms: float, gflops: float) -> dict:
    flops = floor_flops(subject.predictor.bundle.manifest.source.get("config"), padded)
    if flops is None or not gflops:
        return {}
    floor_ms = batch * flops / (gflops * 1e9) * 1e3
    return {"gflop": batch * flops / 1e9, "floor_ms": floor_ms, "x_floor": p50_ms / floor_ms}


def describe(subject: Subject, cfg: BenchConfig, dataset) -> dict:
    m = subject.predictor.bundle.manifest
    info = {"name": subject.name, "path": str(subject.path), "backend": m.backend, "precision": m.precision,
            "task": m.task, "target": m.target, "size_bytes": subject.predictor.bundle.size_bytes(),
            "max_length": subject.predictor.shapes.max_length, "buckets": subject.predictor.shapes.buckets,
            # Where the model actually ran: a device the bundle asks for may be missing here.
            "device": getattr(subject.predictor.runner, "device", "")}
    if cfg.cold_start:
        info["cold_start"] = cold_start(subject.path, cfg.threads, max(cfg.batch_sizes))
    if dataset is not None:
        info["accuracy"] = accuracy(subject.predictor, dataset)
    return info


COLD_START = textwrap.dedent("""
    import json, resource, sys, time
    started = time.perf_counter()
    from edge_electra import Predictor
    p = Predictor.load(sys.argv[1], threads=int(sys.argv[2]) or None)
    loaded = time.perf_counter()
    first = p("turn on the lights in the kitchen")
    done = time.perf_counter()
    def rss():
        # getrusage's ru_maxrss survives exec on Linux (it would report the parent's peak): read VmHWM.
        try:
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
        except (OSError, StopIteration):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)
    print(json.dumps({"label": first.label, "import_load_s": loaded - started, "first_predict_s": done - loaded,
                      "peak_rss_mb_first": rss()}), flush=True)
    p.predict_batch(["turn on the lights in the kitchen " * 40] * int(sys.argv[3]))
    print(json.dumps({"peak_rss_mb": rss()}), flush=True)
""")


def cold_start(path: Path, threads: int | None, batch: int) -> dict:
    """Process start → first prediction printed, in a fresh interpreter; and that process's peak RSS."""
    with tempfile.TemporaryFile("w+") as errors:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", COLD_START, str(path), str(threads or 0), str(batch)],
                                stdout=subprocess.PIPE, stderr=errors, text=True)
        first_line = proc.stdout.readline()
        to_first = time.perf_counter() - started
        rest = proc.stdout.read()
        proc.wait(timeout=600)
        errors.seek(0)
        if proc.returncode != 0 or not first_line:
            return {"error": (errors.read().strip().splitlines() or ["no output"])[-1]}
    return {"process_to_first_result_s": to_first, **json.loads(first_line), **json.loads(rest)}


def accuracy(predictor: Predictor, dataset) -> dict:
    batch = predictor.shapes.max_batch or 32
    predictions = []
    for start in range(0, len(dataset), batch):
        predictions += predictor.predict_batch(dataset.texts[start:start + batch])
    out = {"examples": len(dataset), "truncated": sum(p.truncated for p in predictions)}
    labelled = [(p.label, e.label) for p, e in zip(predictions, dataset.examples) if e.label is not None]
    if labelled and predictor.task != "token":
        out["intent_accuracy"] = sum(a == b for a, b in labelled) / len(labelled)
        out["abstained"] = sum(p.abstained for p in predictions)
    tagged = [(e.tags, [t for _, t in p.slots]) for p, e in zip(predictions, dataset.examples) if e.tags and p.slots]
    if tagged:
        gold, predicted = zip(*tagged)
        out["slot_f1"] = slot_f1(gold, predicted)   # BIO span F1, as seqeval counts it
        words = [(t, g) for gs, ts in tagged for t, g in zip(ts, gs)]
        out["slot_word_accuracy"] = sum(a == b for a, b in words) / len(words)
    return out
