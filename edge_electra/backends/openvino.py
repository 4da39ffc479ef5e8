"""OpenVINO: IR (.xml + .bin) converted from our FP32 ONNX; FP16 by weight compression, INT8 through NNCF.

The runner compiles the IR for the profile's device (CPU, GPU, NPU, AUTO) with its performance hint,
caching compiled blobs in a user cache folder (OpenVINO's CACHE_DIR) so later loads skip compilation.
Devices missing here fall back to CPU, and the runner records which device it used.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_electra.errors import BundleError, ConfigError
from edge_electra.backends import register
from edge_electra.backends.base import Backend, CompiledModel, check_feeds, pick_fixed, run_in_chunks, user_cache_dir

HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


def _ov():
    try:
        import openvino
    except ImportError as e:
        raise BundleError("the openvino backend needs OpenVINO: pip install 'edge-electra[openvino]'") from e
    return openvino


def quantize_int8(model, calibration_feeds: list[dict[str, np.ndarray]]):
    """Post-training INT8 with NNCF's transformer scheme (keeps LayerNorm/Softmax/GELU in float)."""
    import nncf
    names = [p.get_any_name() for p in model.inputs]
    dataset = nncf.Dataset(calibration_feeds, lambda feeds: {n: feeds[n] for n in names})
    return nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration_feeds))


class OpenVinoRunner:
    def __init__(self, variants: list[dict], folder: Path, device: str, hint: str, threads: int, precision: str,
                 cache: bool):
        ov = _ov()
        core = ov.Core()
        present = {d.split(".")[0] for d in core.available_devices}
        self.requested_device = device
        self.device = device if device.split(":")[0] == "AUTO" or device.split(".")[0] in present else "CPU"
        if cache:
            core.set_property({"CACHE_DIR": str(user_cache_dir("openvino"))})
        config = {"PERFORMANCE_HINT": hint}
        if self.device == "CPU":
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
            if precision == "fp32":  # the CPU plugin would otherwise run it in bf16 on AMX chips
                config["INFERENCE_PRECISION_HINT"] = "f32"
        self._models = {}
        for v in variants:
            compiled = core.compile_model(str(folder / v["file"]), self.device, config)
            self._models[v.get("seq")] = (compiled, compiled.create_infer_request(), v.get("batch"))
        compiled = next(iter(self._models.values()))[0]
        self.input_names = [p.get_any_name() for p in compiled.inputs]
        self.output_names = [p.get_any_name() for p in compiled.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(self.input_names, feeds)
        feeds = {n: np.ascontiguousarray(feeds[n], dtype=np.int64) for n in self.input_names}
        if None in self._models:
            outputs = self._infer(self._models[None], feeds)
        else:
            model = pick_fixed(self._models, feeds[self.input_names[0]].shape[1])
            outputs = run_in_chunks(lambda f: self._infer(model, f), feeds, model[2])
        return {n: o.astype(np.float32, copy=False) for n, o in zip(self.output_names, outputs)}

    @staticmethod
    def _infer(model, feeds) -> list[np.ndarray]:
        compiled, request, _ = model
        results = request.infer(feeds)
        return [np.array(results[port]) for port in compiled.outputs]


@register("openvino")
class OpenVinoBackend(Backend):
    extra = "openvino"
    requires = ("openvino",)

    def compile(self, request, workdir: Path) -> CompiledModel:
        ov = _ov()
        target = request.target
        hint = target.runtime.get("performance_hint", "LATENCY")
        if hint not in HINTS:
            raise ConfigError(f"target {target.name}: runtime.performance_hint must be one of {list(HINTS)}, got {hint!r}")
        model = request.memo("openvino-ir", lambda: ov.convert_model(str(request.reference_onnx))).clone()
        if request.precision == "int8-static":
            model = quantize_int8(model, request.calibration_feeds())
        compress = request.precision == "fp16"
        if target.fixed_shapes:
            variants = [{"file": f"model.s{s}.xml", "batch": target.batch.opt, "seq": s} for s in target.buckets]
        else:
            variants = [{"file": "model.xml"}]
        files = {}
        for v in variants:
            if "seq" in v:
                model.reshape({p.get_any_name(): [v["batch"], v["seq"]] for p in model.inputs})
            xml = workdir / v["file"]
            ov.save_model(model, str(xml), compress_to_fp16=compress)
            files[xml.name] = xml
            files[xml.with_suffix(".bin").name] = xml.with_suffix(".bin")
        runtime = {"device": target.runtime.get("device", "CPU"), "performance_hint": hint,
                   "cache": bool(target.runtime.get("cache", True)), "threads": target.threads, "variants": variants}
        report = {"openvino": {"ops": sorted({op.get_type_name() for op in model.get_ops()}),
                               "weights": "fp16" if compress else "int8 (NNCF)" if request.precision == "int8-static"
                               else "fp32"}}
        return CompiledModel(files=files, precision=request.precision, runtime=runtime, report=report)

    def load(self, bundle, threads: int | None = None, device: str | None = None, **_) -> OpenVinoRunner:
        runtime = bundle.manifest.runtime
        variants = runtime.get("variants") or [{"file": "model.xml"}]
        for v in variants:
            bundle.file(v["file"])
            bundle.file(Path(v["file"]).with_suffix(".bin").name)
        return OpenVinoRunner(variants, bundle.path, device or runtime.get("device", "CPU"),
                              runtime.get("performance_hint", "LATENCY"),
                              runtime.get("threads", 0) if threads is None else threads,
                              bundle.manifest.precision, runtime.get("cache", True))
