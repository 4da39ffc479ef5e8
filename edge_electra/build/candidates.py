"""compile's candidates: what a backend builds from (CompileRequest), building and gating one precision,
timing the built ones together (here, or on the device over SSH), and choosing the fastest that passes the gate.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_electra.build.calibration import CalibrationRecipe
from edge_electra.build.gate import Gate
from edge_electra.build.package import write_bundle
from edge_electra.build.targets import TargetProfile
from edge_electra.errors import ConfigError, GateRefused
from edge_electra.runtime.bundle import Bundle

log = logging.getLogger(__name__)


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
    # How many calibration utterances a backend's own calibrator (NNCF) uses: the recipe's num_samples.
    calibration_samples: int = CalibrationRecipe.num_samples
    # An ONNX model quantized before compile (`quantize --method qat` or `sensitivity`), and its precision:
    # backends build that precision from it instead of quantizing the reference themselves.
    given_onnx: Path | None = None
    given_precision: str = ""
    _built: dict = field(default_factory=dict, repr=False)

    def export(self, path: Path, fp16: bool = False, optimize: bool = False) -> Path:
        from edge_electra.build.export import ExportConfig, export_onnx
        export_onnx(self.model, path, ExportConfig(fp16=fp16, optimize=optimize, max_batch=self.target.batch.max))
        return path

    def memo(self, key, build):
        """`build()`, once per compile: candidates share conversions (the OpenVINO IR, the FP32 ONNX)."""
        if key not in self._built:
            self._built[key] = build()
        return self._built[key]

    def onnx_for(self, precision: str, workdir: Path, optimize: bool = False) -> Path:
        """An ONNX model at `precision`: the given one, or one built once per compile and reused."""
        if self.given_onnx is not None and precision == self.given_precision:
            return self.given_onnx
        return self.memo(("onnx", precision, optimize), lambda: self._build_onnx(precision, workdir, optimize))

    def _build_onnx(self, precision: str, workdir: Path, optimize: bool) -> Path:
        from edge_electra.build.quantize import DynamicQuantConfig, StaticQuantConfig, quantize
        path = workdir / f"model.{precision}{'.fused' if optimize else ''}.onnx"
        if precision == "fp32":
            path = self.reference_onnx if not optimize else self.export(path, optimize=True)
        elif precision == "fp16":
            self.export(path, fp16=True, optimize=optimize)
        elif precision == "int8-dynamic":
            quantize(self.onnx_for("fp32", workdir, optimize), path, DynamicQuantConfig())
        elif precision == "int8-static":
            quantize(self.reference_onnx, path, StaticQuantConfig(**self.static_quant), self.calibration_feeds())
        else:
            raise ConfigError(f"no ONNX recipe for precision {precision!r}")
        return path

    def calibration_feeds(self, batch_size: int = 8) -> list[dict[str, np.ndarray]]:
        from edge_electra.build.calibration import calibration_feeds
        return calibration_feeds(self.calibration_texts, self.tokenizer, batch_size, self.target.buckets)

    def shape_variants(self, suffix: str) -> list:
        """The model files a backend writes: for fixed-shape targets one per sequence bucket, at the profile's
        usual batch (`model.s32.ort`, ...); else one dynamic-shape model (`model.ort`)."""
        from edge_electra.backends.base import Variant
        if self.target.fixed_shapes:
            return [Variant(f"model.s{s}{suffix}", seq=s, batch=self.target.batch.opt) for s in self.target.buckets]
        return [Variant(f"model{suffix}")]


@dataclass
class Candidate:
    precision: str
    latency_ms: float = 0.0         # median batch-1 latency where the manifest's timed_on says
    accuracy: dict[str, Any] = field(default_factory=dict)   # the GateReport
    size_bytes: int = 0
    passed: bool = False
    error: str = ""                 # why it could not be built


def staged_bundle(work: Path, precision: str) -> Path:
    """Where build_candidate writes the bundle of one precision (the device times these)."""
    return work / f"bundle.{precision}"


def build_candidate(backend, request: CompileRequest, precision: str, work: Path, manifest, gate: Gate,
                    threads: int | None):
    """Build `precision`, load it as the device will, and gate it: (Candidate, CompiledModel, runner), the last
    two None when the backend could not build it."""
    profile, tokenizer = request.target, request.tokenizer
    candidate = Candidate(precision)
    workdir = work / precision
    workdir.mkdir()
    try:
        compiled = backend.compile(dataclasses.replace(request, precision=precision), workdir)
        staged = dataclasses.replace(manifest, precision=precision,
                                     runtime={**compiled.runtime, "max_batch": profile.batch.max})
        bundle = Bundle.load(write_bundle(staged_bundle(work, precision), staged, compiled.files, tokenizer))
        runner = backend.load(bundle, threads=threads or min(profile.threads or os.cpu_count(), os.cpu_count()))
    except Exception as e:  # one precision failing (a converter's limit, TensorRT's ConfigError) must not stop the others
        log.debug("building %s failed", precision, exc_info=True)
        candidate.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return candidate, None, None
    candidate.size_bytes = bundle.size_bytes()
    report = gate.measure(runner, compiled.onnx)
    candidate.accuracy, candidate.passed = report.to_dict(), report.passed
    return candidate, compiled, runner


def time_interleaved(runners: dict[str, Any], feeds: list[dict[str, np.ndarray]], rounds: int = 3,
                     warmup: int = 3) -> dict[str, float]:
    """Median batch-1 latency in ms of each runner, timed round-robin by the bench's interleaved timer, so that
    a burst of load on the build machine hits all candidates alike."""
    from edge_electra.tools.bench.harness import interleaved
    calls = {name: [lambda runner=runner, feed=feed: runner.run(feed) for feed in feeds]
             for name, runner in runners.items()}
    samples = interleaved(calls, runs=len(feeds) * rounds, warmup=warmup)
    return {name: statistics.median(ns) / 1e6 for name, ns in samples.items()}


def time_on_device(remote, bundles: dict[str, Path], texts: list[str], threads: int | None, rounds: int = 3,
                   warmup: int = 3) -> tuple[dict[str, float], dict]:
    """Median batch-1 model-only latency in ms of each bundle, measured on the device by the remote bench: the same
    interleaved timer, on these texts at their real lengths; and the bench's description of the device."""
    from edge_electra.cli_options import to_argv
    from edge_electra.tools.bench.harness import BenchConfig
    from edge_electra.tools.bench.remote import run_remote
    with tempfile.TemporaryDirectory(prefix="edge-electra-device-timing.") as tmp:
        data = Path(tmp) / "latency-texts.jsonl"
        data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        cfg = BenchConfig(batch_sizes=[1], runs=len(texts) * rounds, warmup=warmup, threads=threads,
                          data=str(data), cold_start=False, modes=["model_only"], synthetic=False)
        result = json.loads(run_remote(remote, list(bundles.values()), to_argv(cfg, exclude=["data"]), data)
                            .read_text())
    names = {Path(path).resolve().name: name for name, path in bundles.items()}
    latencies = {names[r["bundle"]]: r["p50_ms"] for r in result["results"]
                 if r["mode"] == "model_only" and r["source"] == "data" and r["bundle"] in names}
    return latencies, result["system"]


def build_machine() -> dict:
    """Where compile runs, for the manifest's timed_on record."""
    from edge_electra.tools.bench.sysinfo import cpu_info, emulation
    why_emulated = emulation()
    return {"remote": "build machine", "hostname": platform.node(), "machine": platform.machine(),
            "cpu": cpu_info()["model"], "emulated": why_emulated is not None, "emulation": why_emulated}


def time_candidates(candidates: list[Candidate], runners: dict[str, Any], feeds: list[dict[str, np.ndarray]],
                    bundles: dict[str, Path], texts: list[str], remote=None) -> dict:
    """Set the built candidates' latency_ms: timed here, interleaved, or on `remote` (a bench Remote) from their
    bundles, with the threads they ask for; returns the timed_on record. A candidate the device could not time
    is out of the choice."""
    if remote is None:
        log.info("timing the %d built variant(s) here, interleaved", len(runners))
        latencies, timed_on = time_interleaved(runners, feeds), build_machine()
    else:
        log.info("timing the %d built variant(s) on %s, interleaved", len(bundles), remote.destination)
        latencies, system = time_on_device(remote, bundles, texts, threads=None)
        timed_on = {"remote": remote.destination, "hostname": system.get("hostname"),
                    "machine": system.get("machine"), "cpu": system.get("cpu", {}).get("model"),
                    "emulated": system.get("emulated"), "emulation": system.get("emulation")}
        if timed_on["emulated"]:
            log.warning("%s is emulated (%s): its latencies choose here, but they are not the device's",
                        remote.destination, timed_on["emulation"])
    for c in candidates:
        if c.precision in latencies:
            c.latency_ms = latencies[c.precision]
        elif not c.error:
            c.error = f"not timed on {timed_on['remote']}"
    return timed_on


def describe(c: Candidate) -> str:
    if c.error:
        return f"failed to build: {c.error}"
    a = c.accuracy
    what = (f"accuracy {a['accuracy']:.2f}%" if a["accuracy"] is not None
            else f"top-1 agreement {100 * a['top1_agreement']:.2f}%")
    if a.get("slot_f1") is not None:
        what += f", slot F1 {a['slot_f1']:.2f}%"
    verdict = "ok" if c.passed else "refused: " + "; ".join(a["failures"])
    return f"{c.latency_ms:7.2f} ms   {what}   {c.size_bytes / 1e6:.2f} MB   {verdict}"


def choose(candidates: list[Candidate], precision: str, accept_drop: bool, profile: TargetProfile) -> Candidate:
    """The fastest candidate that passed the gate; the least damaged one when the user accepts a drop."""
    built = [c for c in candidates if not c.error]
    if not built:
        raise ConfigError(f"no precision could be built for {profile.name}: " +
                          "; ".join(f"{c.precision}: {c.error}" for c in candidates))
    passing = [c for c in built if c.passed]
    if passing:
        return min(passing, key=lambda c: c.latency_ms)
    best = min(built, key=lambda c: (c.accuracy["drop"], -c.accuracy["top1_agreement"]))
    if accept_drop:
        log.warning("accepting %s although the accuracy gate refused it (--accept-accuracy-drop)", best.precision)
        return best
    reasons = "; ".join(f"{c.precision}: {', '.join(c.accuracy['failures'])}" for c in built)
    raise GateRefused(f"no {'candidate' if precision == 'auto' else precision} variant passes target "
                      f"{profile.name}'s accuracy gate (budget {profile.accuracy_budget} points) — {reasons}; "
                      "calibrate on more representative text (--calibration), allow fp32 in the profile, "
                      "or pass --accept-accuracy-drop")
