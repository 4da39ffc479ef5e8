"""compile: checkpoint + device profile → bundle. One verb, one request dataclass.

    compile_bundle("ckpt/", "android-arm64", "build/android", precision="auto")

Steps: load the checkpoint and tokenizer; export a dynamic FP32 ONNX reference; build each
candidate precision with the target's backend; measure each one's batch-1 latency here and its
accuracy against the FP32 reference (the gate); keep the fastest within the target's accuracy budget;
write the bundle atomically. Everything is built in a temporary folder, so killing compile at any
moment leaves the old bundle, or none.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np

from edge_electra import dataclass_io
from edge_electra.atomic import sweep_dead
from edge_electra.backends import get_backend
from edge_electra.build.package import write_bundle
from edge_electra.runtime.bundle import Bundle, Manifest, TensorSpec, library_versions, sha256
from edge_electra.errors import ConfigError, DataError
from edge_electra.build.targets import PRECISIONS, Range, TargetProfile, load_target

REFERENCE = "reference.fp32.onnx"
# compile's work folder in $TMPDIR, named with its pid so that a later compile removes those of killed ones.
WORKDIR_PREFIX = "edge-electra-compile."
REPORT = "report.json"
RUNTIME_LIBRARIES = ("onnxruntime", "onnx", "openvino", "nncf", "tensorrt", "torch")
LATENCY_TEXTS = 32
GATE_BATCH = 16


@dataclass
class CompileRequest:
    """What a backend builds from: the model, its FP32 ONNX reference and the data to calibrate on."""
    target: TargetProfile
    precision: str
    model: Any                  # the torch Electra (build time only)
    tokenizer: Any
    reference_onnx: Path        # FP32, dynamic batch and sequence, standard ONNX ops only
    calibration_texts: list[str]
    static_quant: dict[str, Any] = field(default_factory=dict)   # the backend's StaticQuantConfig fields
    _built: dict = field(default_factory=dict, repr=False)

    def export(self, path: Path, fp16: bool = False, optimize: bool = False,
               fixed_shape: list[int] | None = None) -> Path:
        from edge_electra.build.export import ExportConfig, export_onnx
        export_onnx(self.model, path, ExportConfig(fp16=fp16, optimize=optimize, fixed_shape=fixed_shape,
                                                   max_batch=self.target.batch.max))
        return path

    def memo(self, key, build):
        """`build()`, once per compile: candidates share conversions (the OpenVINO IR, the FP32 ONNX)."""
        if key not in self._built:
            self._built[key] = build()
        return self._built[key]

    def onnx_for(self, precision: str, workdir: Path, optimize: bool = False) -> Path:
        """An ONNX model at `precision` (built once per compile and reused)."""
        return self.memo(("onnx", precision, optimize), lambda: self._build_onnx(precision, workdir, optimize))

    def _build_onnx(self, precision: str, workdir: Path, optimize: bool) -> Path:
        path = workdir / f"model.{precision}{'.fused' if optimize else ''}.onnx"
        if precision == "fp32":
            path = self.reference_onnx if not optimize else self.export(path, optimize=True)
        elif precision == "fp16":
            self.export(path, fp16=True, optimize=optimize)
        elif precision == "int8-dynamic":
            from edge_electra.build.quantize.dynamic import quantize_dynamic
            quantize_dynamic(self.onnx_for("fp32", workdir, optimize), path)
        elif precision == "int8-static":
            from edge_electra.build.quantize.static import StaticQuantConfig, quantize_static
            quantize_static(self.reference_onnx, path, self.calibration_feeds(), StaticQuantConfig(**self.static_quant))
        else:
            raise ConfigError(f"no ONNX recipe for precision {precision!r}")
        return path

    def calibration_feeds(self, batch_size: int = 8) -> list[dict[str, np.ndarray]]:
        from edge_electra.build.calibration import calibration_feeds
        return calibration_feeds(self.calibration_texts, self.tokenizer, batch_size, self.target.buckets)


@dataclass
class Candidate:
    precision: str
    latency_ms: float = 0.0         # median batch-1 latency on the build machine
    accuracy: dict[str, Any] = field(default_factory=dict)   # the GateReport
    size_bytes: int = 0
    passed: bool = False
    error: str = ""


# ---- measuring a candidate -------------------------------------------------------------------
def first_output_rows(outputs: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
    """The first output's logits per item (B, C), or per real token (tokens, T) for token-level outputs."""
    logits = next(iter(outputs.values())).astype(np.float32)
    return logits[mask.astype(bool)] if logits.ndim == 3 else logits


def run_padded(runner, tokenizer, texts: list[str], buckets: list[int]) -> np.ndarray:
    rows = []
    for start in range(0, len(texts), GATE_BATCH):
        feeds = tokenizer(texts[start:start + GATE_BATCH], buckets=buckets).arrays()
        rows.append(first_output_rows(runner.run(feeds), feeds["attention_mask"]))
    return np.concatenate(rows)


def run_alone(runner, tokenizer, texts: list[str], buckets: list[int]) -> tuple[np.ndarray, float]:
    """Each text as a batch of one: its logits, and the median latency in ms (after 3 warm-up runs)."""
    feeds = [tokenizer([t], buckets=buckets).arrays() for t in texts]
    for f in feeds[:3]:
        runner.run(f)
    rows, times = [], []
    for f in feeds:
        start = time.perf_counter()
        outputs = runner.run(f)
        times.append(time.perf_counter() - start)
        rows.append(first_output_rows(outputs, f["attention_mask"]))
    return np.concatenate(rows), 1000 * statistics.median(times)


def time_interleaved(runners: dict[str, Any], feeds: list[dict[str, np.ndarray]], rounds: int = 3) -> dict[str, float]:
    """Median batch-1 latency in ms of each runner, timed round-robin: every feed runs on each runner in turn,
    the order rotating, so a burst of load on the build machine hits all candidates alike (timing them one
    after another let such a burst decide which precision was kept)."""
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i, feed in enumerate(feeds * rounds):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            start = time.perf_counter()
            runners[name].run(feed)
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def measure(runner, reference: np.ndarray, tokenizer, texts: list[str], labels, profile: TargetProfile,
            onnx_pair: tuple[Path, Path | None]):
    """The gate on the built runner itself (what the device will run), and its batch-1 latency here."""
    from edge_electra.build.gate import BATCH1_ITEMS, GateReport, accuracy, worst_layers
    padded = run_padded(runner, tokenizer, texts, profile.buckets)
    few = texts[:BATCH1_ITEMS]
    alone, latency = run_alone(runner, tokenizer, few, profile.buckets)
    padded_few = run_padded(runner, tokenizer, few, profile.buckets)
    report = GateReport(
        accuracy_fp32=None, accuracy=None, accuracy_delta=None,
        top1_agreement=float(np.mean(reference.argmax(-1) == padded.argmax(-1))),
        max_abs_logit_delta=float(np.abs(reference - padded).max()),
        batch1_vs_padded_agreement=float(np.mean(alone.argmax(-1) == padded_few.argmax(-1))),
        passed=False, budget=profile.accuracy_budget, num_items=len(texts))
    if labels is not None:
        report.accuracy_fp32, report.accuracy = accuracy(reference, labels), accuracy(padded, labels)
        report.accuracy_delta = report.accuracy - report.accuracy_fp32
    report.passed = report.within_budget()
    reference_onnx, candidate_onnx = onnx_pair
    if not report.passed and candidate_onnx is not None:
        report.worst_layers = worst_layers(reference_onnx, candidate_onnx, tokenizer(texts[:GATE_BATCH]).arrays())
    return report, latency


# ---- compile ---------------------------------------------------------------------------------
def _say(step: int, total: int, message: str) -> None:
    click.echo(f"[{step}/{total}] {message}", err=True)


def _texts(path: str | Path | None, default) -> list[str]:
    if path is None:
        return default()
    from edge_electra.data import read_text_lines
    texts = list(read_text_lines([path]))
    if not texts:
        raise DataError(f"{path} holds no text")
    return texts


def _eval_set(path, model_labels: list[str], task: str, fallback: list[str]) -> tuple[list[str], np.ndarray | None]:
    if path is None:
        return fallback, None
    from edge_electra.data import load
    data = load(path, labels=model_labels or None, require_labels=task in ("sequence", "joint"))
    labels = np.array(data.label_ids()) if task in ("sequence", "joint") else None
    return data.texts, labels


def specs(onnx_path: Path, target: TargetProfile) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Manifest tensor specs: fixed sizes as they are; the dynamic batch and sequence as the target's ranges."""
    import onnx
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    batch = [target.batch.min, target.batch.max]
    seq = [target.buckets[0], target.buckets[-1]] if target.fixed_shapes else [target.seq.min, target.seq.max]
    types = {1: "float32", 6: "int32", 7: "int64", 10: "float16"}

    def spec(value):
        dims = value.type.tensor_type.shape.dim
        shape = [d.dim_value if d.dim_value > 0 else batch if i == 0 else seq for i, d in enumerate(dims)]
        return TensorSpec(value.name, types.get(value.type.tensor_type.elem_type, "float32"), shape)
    return [spec(v) for v in graph.input], [spec(v) for v in graph.output]


def fit_to_model(profile: TargetProfile, max_position: int) -> TargetProfile:
    """The profile with its sequence range and buckets cut to what the model's positions allow."""
    if profile.seq.max <= max_position:
        return profile
    buckets = [b for b in profile.buckets if b < max_position] + [max_position]
    seq = Range(min(profile.seq.min, max_position), min(profile.seq.opt, max_position), max_position)
    click.echo(f"      the model has {max_position} positions: sequence buckets cut to {buckets}", err=True)
    return dataclasses.replace(profile, seq=seq, buckets=buckets)


def _versions() -> dict[str, str]:
    return library_versions(*RUNTIME_LIBRARIES)


def compile_bundle(checkpoint: str | Path, target: str | Path | TargetProfile, out: str | Path,
                   precision: str = "auto", calibration: str | Path | None = None,
                   eval_data: str | Path | None = None, accept_accuracy_drop: bool = False,
                   threads: int | None = None) -> Path:
    """Build a bundle for `target` from a checkpoint folder. Returns the bundle's path.

    `threads` is what candidates are timed with here (default: the profile's, at most this machine's cores).
    """
    from edge_electra.build.calibration import default_texts
    from edge_electra.train.checkpoint import load_pretrained, resolve
    from edge_electra.runtime.tokenizer import Tokenizer
    profile = target if isinstance(target, TargetProfile) else load_target(target)
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    if precision != "auto" and precision not in profile.precisions:
        raise ConfigError(f"target {profile.name} allows precisions {profile.precisions}, not {precision!r}; "
                          "pick one of those, or use --precision auto")
    backend = get_backend(profile.backend)
    ok, why = backend.available()
    if not ok:
        raise ConfigError(f"target {profile.name} needs the {profile.backend} backend, which cannot build here: {why}")
    steps = 5
    _say(1, steps, f"loading {checkpoint} for target {profile.name} ({profile.backend})")
    folder = resolve(checkpoint)
    model, _ = load_pretrained(folder)
    model.eval()
    cfg = model.config
    profile = fit_to_model(profile, cfg.max_position)
    max_length = profile.seq.max
    tokenizer = Tokenizer.from_pretrained(folder, max_length=max_length)
    calibration_texts = _texts(calibration, default_texts)
    eval_texts, eval_labels = _eval_set(eval_data, cfg.labels, cfg.task, calibration_texts)

    sweep_dead(tempfile.gettempdir(), re.compile(re.escape(WORKDIR_PREFIX) + r"(\d+)-.*"))
    with tempfile.TemporaryDirectory(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-") as tmp:
        work = Path(tmp)
        _say(2, steps, "exporting the FP32 ONNX reference")
        request = CompileRequest(profile, "fp32", model, tokenizer, work / REFERENCE, calibration_texts,
                                 backend.static_quant)
        request.export(request.reference_onnx)
        inputs, outputs = specs(request.reference_onnx, profile)
        reference_runner = get_backend("onnx-mobile").load(_reference_bundle(request.reference_onnx, work, tokenizer))
        reference = run_padded(reference_runner, tokenizer, eval_texts, profile.buckets)
        manifest = Manifest(
            task=cfg.task, labels=list(cfg.labels), slot_labels=list(cfg.slot_labels), backend=profile.backend,
            precision="", inputs=inputs, outputs=outputs, target=profile.name,
            tokenizer={**tokenizer.settings(), "max_length": max_length, "buckets": list(profile.buckets)},
            source={"checkpoint": str(checkpoint), "sha256": _checkpoint_hash(folder),
                    "config": dataclass_io.to_dict(cfg)},
            versions=_versions())
        wanted = profile.precisions if precision == "auto" else [precision]
        candidates, built, runners = [], {}, {}
        for i, p in enumerate(wanted, 1):
            _say(3, steps, f"building {p} ({i}/{len(wanted)}) and measuring it here")
            candidate, compiled, runner = _build_candidate(backend, request, p, work, manifest, reference,
                                                           eval_texts, eval_labels, threads)
            candidates.append(candidate)
            if compiled is not None:
                built[p], runners[p] = compiled, runner
            click.echo(f"      {p:<13} {_describe(candidate)}", err=True)
        if len(runners) > 1:
            _say(4, steps, f"timing the {len(runners)} built variants again, interleaved")
            feeds = [tokenizer([t], buckets=profile.buckets).arrays() for t in eval_texts[:LATENCY_TEXTS]]
            latencies = time_interleaved(runners, feeds)
            for candidate in candidates:
                if candidate.precision in latencies:
                    candidate.latency_ms = latencies[candidate.precision]
                    click.echo(f"      {candidate.precision:<13} {candidate.latency_ms:7.2f} ms", err=True)
        runners.clear()
        _say(4, steps, "choosing a variant")
        chosen = _choose(candidates, precision, accept_accuracy_drop, profile)
        compiled = built[chosen.precision]
        manifest.precision = chosen.precision
        manifest.accuracy = chosen.accuracy
        manifest.candidates = [dataclass_io.to_dict(c) for c in candidates]
        manifest.runtime = {**compiled.runtime, "max_batch": profile.batch.max,
                            "target_profile": dataclass_io.to_dict(profile)}
        report = work / REPORT
        report.write_text(json.dumps({"chosen": chosen.precision, "candidates": manifest.candidates,
                                      **compiled.report}, indent=2, default=str) + "\n")
        _say(5, steps, f"writing {out}")
        return write_bundle(out, manifest, {**compiled.files, REPORT: report}, tokenizer)


def _build_candidate(backend, request, precision, work, manifest, reference, texts, labels, threads):
    profile, tokenizer = request.target, request.tokenizer
    candidate = Candidate(precision)
    workdir = work / precision
    workdir.mkdir()
    try:
        compiled = backend.compile(dataclasses.replace(request, precision=precision), workdir)
    except ConfigError:
        raise
    except Exception as e:  # a runtime's converter failing on one precision must not stop the others
        candidate.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return candidate, None, None
    staged = dataclasses.replace(manifest, precision=precision, runtime={**compiled.runtime,
                                                                        "max_batch": profile.batch.max})
    bundle = Bundle.load(write_bundle(work / f"bundle.{precision}", staged, compiled.files, tokenizer))
    runner = backend.load(bundle, threads=threads or min(profile.threads or os.cpu_count(), os.cpu_count()))
    candidate.size_bytes = bundle.size_bytes()
    report, candidate.latency_ms = measure(runner, reference, tokenizer, texts, labels, profile,
                                           (request.reference_onnx, compiled.onnx))
    candidate.accuracy, candidate.passed = {**report.to_dict(), "drop": report.drop}, report.passed
    return candidate, compiled, runner


def _reference_bundle(onnx_path: Path, work: Path, tokenizer) -> Bundle:
    """A throwaway bundle around the FP32 reference, run on ORT's CPU EP."""
    manifest = Manifest(task="sequence", labels=[], backend="onnx-mobile", precision="fp32", inputs=[],
                        outputs=[], tokenizer={}, runtime={"execution_providers": ["CPUExecutionProvider"]})
    return Bundle.load(write_bundle(work / "bundle.reference", manifest, {"model.onnx": onnx_path}, tokenizer))


def _checkpoint_hash(folder: Path) -> str:
    weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).exists()))
    return sha256(weights)


def _describe(c: Candidate) -> str:
    if c.error:
        return f"failed to build: {c.error}"
    a = c.accuracy
    what = (f"accuracy {a['accuracy']:.2f}%" if a["accuracy"] is not None
            else f"top-1 agreement {100 * a['top1_agreement']:.2f}%")
    padded = a["batch1_vs_padded_agreement"]
    verdict = "ok" if c.passed else ("over budget" if a["drop"] > a["budget"] else
                                     f"over budget: {100 * (1 - padded):.1f}% of items change between batch 1 "
                                     "and a padded batch")
    return (f"{c.latency_ms:7.2f} ms   {what} (drop {a['drop']:.2f} of {a['budget']} pts)   "
            f"{c.size_bytes / 1e6:.2f} MB   {verdict}")


def _choose(candidates: list[Candidate], precision: str, accept_drop: bool, profile: TargetProfile) -> Candidate:
    built = [c for c in candidates if not c.error]
    if not built:
        raise ConfigError(f"no precision could be built for {profile.name}: " +
                          "; ".join(f"{c.precision}: {c.error}" for c in candidates))
    passing = [c for c in built if c.passed]
    if passing:
        return min(passing, key=lambda c: c.latency_ms)
    best = min(built, key=lambda c: c.accuracy["drop"])
    if accept_drop:
        click.echo(f"      accepting {best.precision} over the accuracy budget (--accept-accuracy-drop)", err=True)
        return best
    drops = ", ".join(f"{c.precision} {c.accuracy['drop']:.2f}" for c in built)
    raise ConfigError(f"no {'candidate' if precision == 'auto' else precision} variant meets target "
                      f"{profile.name}'s accuracy budget of {profile.accuracy_budget} points (drops: {drops}); "
                      "calibrate on more representative text (--calibration), allow fp32 in the profile, "
                      "or pass --accept-accuracy-drop")


@click.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--target", required=True, help="A profile name from `edge-electra targets`, or a .toml file.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The bundle folder to write.")
@click.option("--precision", default="auto", show_default=True, type=click.Choice(PRECISIONS),
              help="auto builds every precision the target allows and keeps the fastest within budget.")
@click.option("--calibration", type=click.Path(dir_okay=False),
              help="Unlabelled text (one utterance a line, or JSONL) for INT8 calibration and timing.")
@click.option("--eval", "eval_data", type=click.Path(),
              help="Labelled data for the accuracy gate (default: agreement with FP32 on the calibration text).")
@click.option("--accept-accuracy-drop", is_flag=True, help="Keep the most accurate variant even over budget.")
@click.option("--threads", type=int, default=None,
              help="Threads for building and timing the candidates here (default: the profile's, at most this "
                   "machine's cores). The bundle keeps the profile's setting.")
def command(checkpoint, target, out, precision, calibration, eval_data, accept_accuracy_drop, threads):
    """Build a bundle for a target device from CHECKPOINT (a checkpoint folder)."""
    import torch
    torch.set_num_threads(threads or min(2, torch.get_num_threads()))
    path = compile_bundle(checkpoint, target, out, precision, calibration, eval_data, accept_accuracy_drop,
                          threads=threads)
    click.echo(Bundle.load(path).summary())
