"""ONNX Runtime Mobile: ORT-format models, the operator config for a reduced-size ORT build,
fixed-shape variants for NNAPI/CoreML, execution-provider preferences and a per-EP op-coverage report.

Bundle files: model.ort (or model.s{seq}.ort, one per sequence bucket, for fixed-shape targets),
required_operators.config (feed it to ORT's build.py --include_ops_by_config), report.json.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge_electra.errors import BundleError, ConfigError
from edge_electra.backends import register
from edge_electra.backends.base import (Backend, CompiledModel, Variant, bundle_variants, check_feeds, pick_fixed,
                                        run_in_chunks, variant_dicts)

CPU = "CPUExecutionProvider"
XNNPACK = "XnnpackExecutionProvider"
# ORT ships its documented NNAPI and CoreML op lists with the Python package (tools/mobile_helpers).
DOCUMENTED_OP_LISTS = {"NnapiExecutionProvider": "nnapi_supported_ops.md",
                       "CoreMLExecutionProvider": "coreml_supported_mlprogram_ops.md"}
# It ships none for XNNPACK: these are the ops the XNNPACK EP page of the ORT docs lists, as data.
XNNPACK_DOCUMENTED_OPS = frozenset({
    "ai.onnx:AveragePool", "ai.onnx:Conv", "ai.onnx:ConvTranspose", "ai.onnx:Gemm", "ai.onnx:MatMul",
    "ai.onnx:MaxPool", "ai.onnx:QLinearConv", "ai.onnx:Resize", "ai.onnx:Softmax",
    "com.microsoft:QLinearAveragePool", "com.microsoft:QLinearConvTranspose", "com.microsoft:QLinearSoftmax",
})
REQUIRED_OPERATORS = "required_operators.config"


@dataclass
class OrtOptions:
    """A profile's [runtime] table for ONNX Runtime."""
    # ORT provider names in order of preference; CPUExecutionProvider is always the fallback.
    execution_providers: list[str] = field(default_factory=list)
    # {provider: {option: value}}; ORT takes the values as strings.
    provider_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # ORT graph level baked into the .ort file ("basic" keeps standard ONNX ops that NNAPI/CoreML can take).
    optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    # Which int8 kernels the .ort file is optimized for.
    target_platform: Literal["arm", "amd64"] = "amd64"

    def __post_init__(self):
        wrong = [e for e in self.execution_providers if not e.endswith("ExecutionProvider")]
        if wrong:
            raise ConfigError(f"'execution_providers' must list ONNX Runtime provider names such as "
                              f"'XnnpackExecutionProvider', got {wrong}")


def short(provider: str) -> str:
    return provider.removesuffix("ExecutionProvider")


def _ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise BundleError("the onnx-mobile backend needs onnxruntime: pip install 'edge-electra[onnx]'") from e
    return onnxruntime


def choose_providers(preferred: list[str], provider_options: dict, threads: int):
    """The preferred EPs present in this onnxruntime, then CPU; their options; the session's own threads.

    XNNPACK runs its own thread pool, so ORT's advice is one session thread with the threads given to it.
    """
    available = _ort().get_available_providers()
    providers = [p for p in preferred if p in available and p != CPU] + [CPU]
    options = [dict(provider_options.get(p, {})) for p in providers]
    session_threads = threads
    if XNNPACK in providers and threads:
        options[providers.index(XNNPACK)].setdefault("intra_op_num_threads", threads)
        session_threads = 1
    return providers, [{k: str(v) for k, v in o.items()} for o in options], session_threads


def session_options(threads: int):
    ort = _ort()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads == 1:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class OrtRunner:
    """Runs an ORT model, or a set of fixed-shape ones chosen by each call's sequence length.

    Fixed-shape models take a fixed batch: larger batches are run in chunks, the last one padded.
    """

    def __init__(self, variants: list[Variant], folder: Path, preferred: list[str], provider_options: dict,
                 threads: int, profile: bool = False):
        self._requested, self._provider_options, session_threads = choose_providers(
            preferred, provider_options, threads)
        self.preferred_providers = list(preferred)
        self._options = session_options(session_threads)
        if profile:   # ORT's own trace of every node run (see end_profiling)
            import tempfile
            self._options.enable_profiling = True
            self._options.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="edge-electra-ort-profile.")) / "ort")
        self._paths = {v.seq: (folder / v.file, v.batch) for v in variants}
        self._sessions = {}
        first = self._session(next(iter(self._paths)))
        self.input_names = [i.name for i in first.get_inputs()]
        self.output_names = [o.name for o in first.get_outputs()]
        self._input_types = {i.name: i.type for i in first.get_inputs()}
        # What ORT actually registered (an EP can decline to load on this device).
        self.providers = first.get_providers()
        self.device = ", ".join(map(short, self.providers))

    def _session(self, seq):
        if seq not in self._sessions:
            path, _ = self._paths[seq]
            self._sessions[seq] = _ort().InferenceSession(
                str(path), self._options, providers=self._requested, provider_options=self._provider_options)
        return self._sessions[seq]

    def end_profiling(self) -> dict:
        """A runner made with profile=True: ORT's trace events of every session so far (chrome trace format)."""
        events = []
        for session in self._sessions.values():
            trace = Path(session.end_profiling())
            events += json.loads(trace.read_text())
            trace.unlink()
        with contextlib.suppress(OSError):
            Path(self._options.profile_file_prefix).parent.rmdir()
        return {"runtime": "onnxruntime", "events": events}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(self.input_names, feeds)
        # ORT may have pruned inputs the graph never reads (token_type_ids): feed only declared ones.
        feeds = {n: _as_declared(feeds[n], self._input_types[n]) for n in self.input_names}
        if None in self._paths:
            outputs = self._session(None).run(self.output_names, feeds)
        else:
            seq = feeds[self.input_names[0]].shape[1]
            _, batch = pick_fixed(self._paths, seq)
            outputs = run_in_chunks(lambda f: self._session(seq).run(self.output_names, f), feeds, batch)
        return {name: _as_float32(out) for name, out in zip(self.output_names, outputs)}


def _as_declared(array: np.ndarray, ort_type: str) -> np.ndarray:
    wanted = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}.get(ort_type)
    return array.astype(wanted, copy=False) if wanted is not None else array


def _as_float32(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float32) if array.dtype == np.float16 else array


# ---- building ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name) if old is None else os.environ.__setitem__(name, old)


@contextlib.contextmanager
def _quiet(ort):
    """Silence the converter's notes (its Python logger, ORT's warning that amd64 files are host-specific)."""
    logger = logging.getLogger("ort_format_model.utils")
    level = logger.level
    logger.setLevel(logging.WARNING)
    ort.set_default_logger_severity(3)
    try:
        yield
    finally:
        logger.setLevel(level)
        ort.set_default_logger_severity(2)


def convert_to_ort(onnx_dir: Path, out_dir: Path, level: str, target_platform: str) -> tuple[list[Path], Path]:
    """Every .onnx in `onnx_dir` → .ort in `out_dir`, plus one required_operators.config for them all."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort
    out_dir.mkdir(parents=True, exist_ok=True)
    ort = _ort()
    with _env("ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL", level), _quiet(ort), \
            contextlib.redirect_stdout(open(os.devnull, "w")):
        convert_onnx_models_to_ort(onnx_dir, output_dir=out_dir, optimization_styles=[OptimizationStyle.Fixed],
                                   target_platform=target_platform)
    suffix = "" if level == "all" else f".{level}"
    models = []
    for onnx_file in sorted(onnx_dir.glob("*.onnx")):
        produced = out_dir / f"{onnx_file.stem}{suffix}.ort"
        models.append(produced.rename(out_dir / f"{onnx_file.stem}.ort"))
    config = (out_dir / f"required_operators{suffix}.config").rename(out_dir / REQUIRED_OPERATORS)
    return models, config


class _DocumentedOps:
    """Duck-types ORT's supported-ops checker for an op list held as data."""

    def __init__(self, ops: frozenset[str]):
        self.ops = ops

    def is_op_supported(self, node) -> bool:
        return f"{node.domain or 'ai.onnx'}:{node.op_type}" in self.ops


def _documented_coverage(onnx_path: Path, provider: str, fixed: bool) -> dict:
    import onnx
    from onnxruntime.tools.mobile_helpers import usability_checker as uc
    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    if provider == XNNPACK:
        checker, source = _DocumentedOps(XNNPACK_DOCUMENTED_OPS), "ORT XNNPACK EP docs (op list encoded in edge-electra)"
    else:
        listing = Path(uc.__file__).parent / DOCUMENTED_OP_LISTS[provider]
        checker, source = uc._SupportedOpsChecker(listing), f"ORT's documented op list ({listing.name})"
    info = uc.check_partitioning(model.graph, checker, require_fixed_input_sizes=fixed)
    return {"source": source, "nodes": info.num_nodes, "supported_nodes": info.num_supported_nodes,
            "partitions": info.num_partitions, "unsupported_ops": sorted(info.unsupported_ops),
            "note": "estimated by op type on the graph after ORT's optimizations at the profile's level"}


def _partitioned_coverage(model_path: Path, provider: str, feeds: dict) -> dict:
    """Ask ORT itself: run once with profiling on, and count the nodes each EP executed."""
    ort = _ort()
    so = session_options(1)
    so.enable_profiling = True
    so.profile_file_prefix = str(model_path.with_suffix(f".{provider}.profile"))
    providers = [provider] + ([CPU] if provider != CPU else [])
    session = ort.InferenceSession(str(model_path), so, providers=providers)
    session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})
    profile = Path(session.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()
    placed = {}
    for e in events:
        if e.get("cat") == "Node" and "provider" in e.get("args", {}):
            placed[e["name"].removesuffix("_kernel_time")] = (e["args"]["provider"], e["args"].get("op_name"))
    taken = {n for n, (p, _) in placed.items() if p == provider}
    return {"source": "onnxruntime partitioning on the build machine", "nodes": len(placed),
            "supported_nodes": len(taken),
            "unsupported_ops": sorted({op for n, (p, op) in placed.items() if p != provider})}


def optimized_onnx(src: Path, dest: Path, level: str) -> Path:
    """`src` after ORT's graph optimizations at `level`, as ONNX (the graph the .ort file holds)."""
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    so.optimized_model_filepath = str(dest)
    so.log_severity_level = 3
    ort.InferenceSession(str(src), so, providers=[CPU], disabled_optimizers=["NchwcTransformer"])
    return dest


def op_coverage(onnx_path: Path, ort_path: Path, providers: list[str], fixed: bool, feeds: dict,
                level: str) -> dict:
    available = _ort().get_available_providers()
    report = {}
    optimized = None
    for provider in dict.fromkeys([*providers, CPU]):
        if provider in available:
            report[provider] = _partitioned_coverage(ort_path, provider, feeds)
        elif provider in DOCUMENTED_OP_LISTS or provider == XNNPACK:
            optimized = optimized or optimized_onnx(onnx_path, onnx_path.with_suffix(f".{level}.onnx"), level)
            report[provider] = _documented_coverage(optimized, provider, fixed)
        else:
            report[provider] = {"source": "none: not in this onnxruntime and no documented op list is known"}
    return report


def _dummy_feeds(onnx_path: Path, batch: int, seq: int) -> dict:
    import onnx
    from edge_electra.runtime.io_spec import TOKEN_TYPES
    names = [i.name for i in onnx.load(str(onnx_path), load_external_data=False).graph.input]
    ids = np.ones((batch, seq), dtype=np.int64)
    return {n: (np.zeros_like(ids) if n == TOKEN_TYPES else ids) for n in names}


@register("onnx-mobile")
class OnnxMobileBackend(Backend):
    precisions = ("fp32", "fp16", "int8-dynamic", "int8-static")
    options = OrtOptions
    library = "onnxruntime"
    build_libraries = ("onnx",)
    extra = "onnx"
    requires = ("onnxruntime",)
    # Unsigned activations with a zero point are ONNX Runtime's fast INT8 path on CPUs (U8S8); signed
    # symmetric ones measured 3-7× slower than FP32 on an AVX2 CPU and 6× on an AVX-512 VNNI one
    # (benchmarks/quantization.md).
    static_quant = {"symmetric_activations": False}

    def compile(self, request, workdir: Path) -> CompiledModel:
        from edge_electra.build.export import fix_shape
        target = request.target
        options: OrtOptions = target.options
        level = options.optimization_level
        # ORT's transformer fusions (Attention, SkipLayerNorm) are CPU/XNNPACK-only contrib ops: use them
        # only where the profile keeps ORT's higher optimization levels.
        fused = level in ("extended", "all") and request.precision != "int8-static"
        candidate = request.onnx_for(request.precision, workdir, optimize=fused)
        stage = workdir / "onnx-mobile-variants"
        stage.mkdir(parents=True)
        variants = request.shape_variants(".ort")
        for v in variants:
            if v.seq is not None:
                fix_shape(candidate, stage / v.file.replace(".ort", ".onnx"), v.batch, v.seq)
            else:
                shutil.copyfile(candidate, stage / v.file.replace(".ort", ".onnx"))
        models, config = convert_to_ort(stage, workdir / "onnx-mobile-ort", level, options.target_platform)
        files = {m.name: m for m in models} | {REQUIRED_OPERATORS: config}
        probe = variants[0]
        probe_onnx = stage / probe.file.replace(".ort", ".onnx")
        feeds = _dummy_feeds(probe_onnx, probe.batch or 1, probe.seq or target.buckets[0])
        coverage = op_coverage(probe_onnx, files[probe.file], options.execution_providers, target.fixed_shapes,
                               feeds, level)
        runtime = {"execution_providers": options.execution_providers or [CPU],
                   "provider_options": options.provider_options, "threads": target.threads,
                   "optimization_level": level, "target_platform": options.target_platform,
                   "variants": variant_dicts(variants)}
        return CompiledModel(files=files, precision=request.precision, runtime=runtime,
                             report={"op_coverage": coverage}, onnx=candidate)

    def load(self, bundle, threads: int | None = None, providers: list[str] | None = None, profile: bool = False,
             **_) -> OrtRunner:
        options: OrtOptions = self.bundle_options(bundle)
        variants = bundle_variants(bundle, ("model.ort", "model.onnx"))
        return OrtRunner(variants, bundle.path,
                         preferred=providers if providers is not None else options.execution_providers or [CPU],
                         provider_options=options.provider_options,
                         threads=bundle.manifest.runtime.get("threads", 0) if threads is None else threads,
                         profile=profile)

    def runs_on(self, options: OrtOptions) -> str:
        return ", ".join(map(short, options.execution_providers)) or "CPU"

    def runs_here(self, options: OrtOptions) -> str:
        ok, _ = self.available()
        if not ok or not options.execution_providers:
            return super().runs_here(options)
        present = [e for e in options.execution_providers if e in self.devices()]
        return "yes (" + (", ".join(map(short, present)) or "CPU fallback") + ")"

    def devices(self) -> list[str]:
        return list(_ort().get_available_providers())

