"""compile: checkpoint + device profile → bundle. It only orchestrates.

    compile_bundle("ckpt/", "android-arm64", "build/android", precision="auto")
    compile_bundle("ckpt/", "x86-avx2-cpu", "build/x86", model_onnx="qat.onnx")   # ship a quantized model

Steps: load the checkpoint and tokenizer; export a dynamic FP32 ONNX reference; build each candidate
precision with the target's backend (edge_electra.build.candidates); gate each one against the FP32
reference (edge_electra.build.gate) and time the built ones together, here or, with `remote`, on the device
through the bench's remote path; keep the fastest that passes; write the bundle atomically. The manifest says where
the candidates were timed (timed_on), and whether the bundle was built for another CPU architecture than this
machine's (cross_compiled), where timings taken here say little about the device. With `model_onnx` (from `quantize --method qat` or `sensitivity`), that model
is the only candidate, at the precision it holds; the checkpoint still gives the FP32 reference, the
tokenizer and the labels. Everything is built in a temporary folder, so killing compile at any moment
leaves the old bundle, or none.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import re
import tempfile
from pathlib import Path

import click

from edge_electra import dataclass_io
from edge_electra.atomic import sweep_dead
from edge_electra.backends import get_backend
from edge_electra.build.candidates import (CompileRequest, build_candidate, choose, describe, staged_bundle,
                                           time_candidates)
from edge_electra.build.gate import BATCH_SIZE, Budget, Gate, GateData
from edge_electra.build.package import write_bundle
from edge_electra.build.targets import PRECISIONS, Range, TargetProfile, load_target
from edge_electra.errors import ConfigError, DataError
from edge_electra.runtime import io_spec
from edge_electra.runtime.bundle import Bundle, Manifest, library_versions, sha256
from edge_electra.tools.bench.cli import remote_options, remote_target

log = logging.getLogger(__name__)

REFERENCE = "reference.fp32.onnx"
# compile's work folder in $TMPDIR, named with its pid so that a later compile removes those of killed ones.
WORKDIR_PREFIX = "edge-electra-compile."
REPORT = "report.json"
# What every compile uses (export, the FP32 reference); each backend adds its own (Backend.library, build_libraries).
RUNTIME_LIBRARIES = ("onnxruntime", "onnx", "torch")
LATENCY_TEXTS = 32
# platform.machine()'s other names for the same architectures (macOS, Windows).
ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64", "x64": "x86_64"}


def cross_compiled(profile: TargetProfile, machine: str | None = None) -> bool:
    """Whether the target's CPU architecture differs from this build machine's (unknown: not cross)."""
    def norm(arch: str) -> str:
        return ARCH_ALIASES.get(arch.lower(), arch.lower())
    return bool(profile.arch) and norm(profile.arch) != norm(machine or platform.machine())


def _texts(path: str | Path | None, default) -> list[str]:
    if path is None:
        return default()
    from edge_electra.data import read_text_lines
    texts = list(read_text_lines([path]))
    if not texts:
        raise DataError(f"{path} holds no text")
    return texts


def _gate_data(path, cfg, fallback: list[str]) -> GateData:
    """The labelled (and, for joint models, tagged) eval set; without one, FP32 agreement on `fallback` texts."""
    if path is None:
        return GateData(fallback)
    from edge_electra.data import load
    return GateData.of(load(path, labels=cfg.labels or None, slot_labels=cfg.slot_labels or None,
                            require_labels=cfg.task in ("sequence", "joint")))


def fit_to_model(profile: TargetProfile, max_position: int) -> TargetProfile:
    """The profile with its sequence range and buckets cut to what the model's positions allow."""
    if profile.seq.max <= max_position:
        return profile
    buckets = [b for b in profile.buckets if b < max_position] + [max_position]
    seq = Range(min(profile.seq.min, max_position), min(profile.seq.opt, max_position), max_position)
    log.info("the model has %d positions: sequence buckets cut to %s", max_position, buckets)
    return dataclasses.replace(profile, seq=seq, buckets=buckets)


def given_model(path: str | Path, cfg, precision: str, profile: TargetProfile) -> tuple[Path, str]:
    """An already-quantized ONNX model for this checkpoint's task, and the precision it holds."""
    import onnx

    from edge_electra.build.quantize import precision_of
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--model {path} not found")
    graph = onnx.load(str(path), load_external_data=False).graph
    names = ([i.name for i in graph.input], [o.name for o in graph.output])
    if set(names[0]) - set(io_spec.INPUTS) or names[1] != io_spec.output_names(cfg.task):
        raise ConfigError(f"--model {path} has inputs {names[0]} and outputs {names[1]}, not those of this "
                          f"checkpoint's {cfg.task} model ({list(io_spec.INPUTS)} → "
                          f"{io_spec.output_names(cfg.task)}); give the checkpoint it was quantized from")
    held = precision_of(path)
    if precision not in ("auto", held):
        raise ConfigError(f"--model {path} holds a {held} model, not {precision}; leave --precision at auto")
    if held not in profile.precisions:
        raise ConfigError(f"--model {path} holds a {held} model, but target {profile.name} allows "
                          f"{profile.precisions}")
    return path, held


def compile_bundle(checkpoint: str | Path, target: str | Path | TargetProfile, out: str | Path,
                   precision: str = "auto", calibration: str | Path | None = None,
                   eval_data: str | Path | None = None, accept_accuracy_drop: bool = False,
                   threads: int | None = None, model_onnx: str | Path | None = None, remote=None) -> Path:
    """Build a bundle for `target` from a checkpoint folder (or ship `model_onnx`). Returns the bundle's path.

    `threads` is what candidates are timed with (default here: the profile's, at most this machine's cores; on
    the device: the bundle's). `remote` (a tools.bench.remote.Remote): time them on that device instead.
    Raises GateRefused when no candidate passes the accuracy gate (unless `accept_accuracy_drop`).
    """
    from edge_electra.build.calibration import default_texts
    from edge_electra.runtime.tokenizer import load_tokenizer
    from edge_electra.train.checkpoint import load_pretrained, resolve
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
    log.info("loading %s for target %s (%s)", checkpoint, profile.name, profile.backend)
    cross = cross_compiled(profile)
    if cross:
        log.warning("cross-compiling: target %s is %s, this build machine is %s; %s", profile.name, profile.arch,
                    platform.machine(), f"the candidates are timed on {remote.destination}" if remote else
                    "the candidates are timed here, which says little about the device (time them there with "
                    "--remote USER@HOST)")
    folder = resolve(checkpoint)
    model, _ = load_pretrained(folder)
    model.eval()
    cfg = model.config
    given, held = given_model(model_onnx, cfg, precision, profile) if model_onnx else (None, "")
    profile = fit_to_model(profile, cfg.max_position)
    tokenizer = load_tokenizer(folder, max_length=profile.seq.max)
    calibration_texts = _texts(calibration, default_texts)
    data = _gate_data(eval_data, cfg, calibration_texts)
    source = {"checkpoint": str(checkpoint), "sha256": _checkpoint_hash(folder), "config": dataclass_io.to_dict(cfg)}
    if given is not None:
        source["model"] = {"path": str(given), "sha256": sha256(given), "precision": held}

    sweep_dead(tempfile.gettempdir(), re.compile(re.escape(WORKDIR_PREFIX) + r"(\d+)-.*"))
    with tempfile.TemporaryDirectory(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-") as tmp:
        work = Path(tmp)
        log.info("exporting the FP32 ONNX reference")
        request = CompileRequest(profile, "fp32", model, tokenizer, work / REFERENCE, calibration_texts,
                                 backend.static_quant, given_onnx=given, given_precision=held)
        request.export(request.reference_onnx)
        # The gate's batches stay within what the target's runtime takes (TensorRT's optimization profile).
        gate = Gate(request.reference_onnx, data, tokenizer, Budget(profile.accuracy_budget),
                    slot_labels=cfg.slot_labels or (cfg.labels if cfg.task == "token" else None),
                    buckets=profile.buckets, batch_size=min(BATCH_SIZE, profile.batch.max))
        inputs, outputs = io_spec.specs(cfg, [profile.batch.min, profile.batch.max],
                                        [profile.buckets[0], profile.buckets[-1]] if profile.fixed_shapes
                                        else [profile.seq.min, profile.seq.max])
        manifest = Manifest(
            task=cfg.task, labels=list(cfg.labels), slot_labels=list(cfg.slot_labels), backend=profile.backend,
            precision="", inputs=inputs, outputs=outputs, target=profile.name,
            tokenizer={**tokenizer.settings(), "max_length": profile.seq.max, "buckets": list(profile.buckets)},
            source=source, versions=_versions(backend), cross_compiled=cross)
        wanted = [held] if given is not None else profile.precisions if precision == "auto" else [precision]
        candidates, built, runners = [], {}, {}
        for i, p in enumerate(wanted, 1):
            log.info("building %s (%d/%d) and gating it", p, i, len(wanted))
            candidate, compiled, runner = build_candidate(backend, request, p, work, manifest, gate, threads)
            candidates.append(candidate)
            if compiled is not None:
                built[p], runners[p] = compiled, runner
        if runners:
            texts = data.texts[:LATENCY_TEXTS]
            feeds = [tokenizer([t], buckets=profile.buckets).arrays() for t in texts]
            manifest.timed_on = time_candidates(candidates, runners, feeds,
                                                {p: staged_bundle(work, p) for p in runners}, texts, remote)
            if remote is not None and cross_compiled(profile, manifest.timed_on.get("machine") or profile.arch):
                log.warning("the device %s is %s, but target %s is %s: its latencies may not rank the candidates "
                            "as the target would", remote.destination, manifest.timed_on.get("machine"),
                            profile.name, profile.arch)
        runners.clear()
        for candidate in candidates:
            log.info("  %-13s %s", candidate.precision, describe(candidate))
        chosen = choose(candidates, precision, accept_accuracy_drop, profile)
        compiled = built[chosen.precision]
        manifest.precision = chosen.precision
        manifest.accuracy = chosen.accuracy
        manifest.candidates = [dataclass_io.to_dict(c) for c in candidates]
        manifest.runtime = {**compiled.runtime, "max_batch": profile.batch.max,
                            "target_profile": dataclass_io.to_dict(profile)}
        # The out-of-scope threshold training chose on validation (distill/finetune) is the Predictor's default.
        threshold = json.loads((folder / "config.json").read_text()).get("edge_electra", {}).get("oos_threshold")
        if threshold is not None:
            manifest.runtime["oos_threshold"] = threshold
        report = work / REPORT
        report.write_text(json.dumps({"chosen": chosen.precision, "candidates": manifest.candidates,
                                      **compiled.report}, indent=2, default=str) + "\n")
        log.info("writing %s", out)
        return write_bundle(out, manifest, {**compiled.files, REPORT: report}, tokenizer)


def _versions(backend) -> dict[str, str]:
    return library_versions(*RUNTIME_LIBRARIES, *filter(None, (backend.library, *backend.build_libraries)))


def _checkpoint_hash(folder: Path) -> str:
    weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).exists()))
    return sha256(weights)


@click.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--target", required=True, help="A profile name from `edge-electra targets`, or a .toml file.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The bundle folder to write.")
@click.option("--precision", default="auto", show_default=True, type=click.Choice(PRECISIONS),
              help="auto builds every precision the target allows and keeps the fastest that passes the gate.")
@click.option("--model", "model_onnx", type=click.Path(dir_okay=False),
              help="Ship this already-quantized ONNX model (from `quantize --method qat` or `sensitivity`) "
                   "instead of building candidates; CHECKPOINT still gives the FP32 reference it is gated against.")
@click.option("--calibration", type=click.Path(dir_okay=False),
              help="Unlabelled text (one utterance a line, or JSONL) for INT8 calibration and timing.")
@click.option("--eval", "eval_data", type=click.Path(),
              help="Labelled data for the accuracy gate (default: agreement with FP32 on the calibration text).")
@click.option("--accept-accuracy-drop", is_flag=True, help="Keep the most accurate variant even if the gate "
              "refuses it.")
@click.option("--threads", type=int, default=None,
              help="Threads for building and timing the candidates here (default: the profile's, at most this "
                   "machine's cores). The bundle keeps the profile's setting.")
@remote_options("Time the candidates on this device over SSH (the bench's remote path) and choose by its "
                "latencies; without it they are timed on this build machine.")
def command(checkpoint, target, out, precision, model_onnx, calibration, eval_data, accept_accuracy_drop, threads,
            remote, ssh_key, ssh_option, remote_python):
    """Build a bundle for a target device from CHECKPOINT (a checkpoint folder)."""
    import torch
    torch.set_num_threads(threads or min(2, torch.get_num_threads()))
    device = remote_target(remote, ssh_key, ssh_option, remote_python) if remote else None
    path = compile_bundle(checkpoint, target, out, precision, calibration, eval_data, accept_accuracy_drop,
                          threads=threads, model_onnx=model_onnx, remote=device)
    click.echo(Bundle.load(path).summary())
