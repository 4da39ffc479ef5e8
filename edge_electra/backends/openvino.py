"""OpenVINO: IR (.xml + .bin) converted from our FP32 ONNX; FP16 by weight compression, INT8 through NNCF.

The runner compiles the IR for the profile's device (CPU, GPU, NPU, AUTO), caching compiled blobs in a user
cache folder (OpenVINO's CACHE_DIR) so later loads skip compilation. A device missing here falls back to
CPU with a warning, and the runner records the device OpenVINO actually runs on (`device`); the bench
shows it.

Each call runs one synchronous request on the whole batch, so the runner always asks for the LATENCY hint:
THROUGHPUT splits the device into streams that only parallel requests can use, and one request then gets
a fraction of it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_electra.errors import BundleError
from edge_electra.backends import register
from edge_electra.backends.base import (Backend, CompiledModel, Variant, bundle_variants, check_feeds, pick_fixed,
                                        run_in_chunks, user_cache_dir, variant_dicts)

log = logging.getLogger(__name__)
# Devices that choose their own hardware among those present.
VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO")


@dataclass
class OpenVinoOptions:
    """A profile's [runtime] table for OpenVINO."""
    # CPU, GPU, NPU, GPU.1, AUTO, AUTO:GPU,CPU...
    device: str = "CPU"
    # Keep compiled blobs in the user cache folder so later loads skip compilation.
    cache: bool = True


def _ov():
    try:
        import openvino
    except ImportError as e:
        raise BundleError("the openvino backend needs OpenVINO: pip install 'edge-electra[openvino]'") from e
    return openvino


def quantize_int8(model, calibration_feeds: list[dict[str, np.ndarray]], samples: int):
    """Post-training INT8 with NNCF's transformer scheme (keeps LayerNorm/Softmax/GELU in float), calibrated on
    `samples` items of the feeds (NNCF's subset_size counts dataset items)."""
    import nncf
    names = [p.get_any_name() for p in model.inputs]
    dataset = nncf.Dataset(calibration_feeds, lambda feeds: {n: feeds[n] for n in names})
    return nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER,
                         subset_size=min(samples, len(calibration_feeds)))


def choose_device(requested: str, present: list[str]) -> str:
    """`requested` when this machine has it ("GPU" matches "GPU.0"), else CPU."""
    if requested.split(":")[0] in VIRTUAL_DEVICES:
        return requested
    family, _, index = requested.partition(".")
    here = requested in present or (not index and any(d.split(".")[0] == family for d in present)) or \
        (index == "0" and family in present)
    return requested if here else "CPU"


def compile_config(device: str, threads: int, precision: str) -> dict:
    """The properties the runner compiles each model with on `device`."""
    config = {"PERFORMANCE_HINT": "LATENCY"}
    family = device.split(".")[0]
    if family == "CPU" and threads:
        config["INFERENCE_NUM_THREADS"] = threads
    # Without the hint the GPU plugin runs an fp32 model in f16, and the CPU plugin in bf16 on AMX chips.
    if precision == "fp32" and family in ("CPU", "GPU"):
        config["INFERENCE_PRECISION_HINT"] = "f32"
    return config


class OpenVinoRunner:
    def __init__(self, variants: list[Variant], folder: Path, device: str, threads: int, precision: str,
                 cache: bool, profile: bool = False):
        core = _ov().Core()
        self.requested_device = device
        chosen = choose_device(device, list(core.available_devices))
        if chosen != device:
            log.warning("OpenVINO device %s is not present here (devices: %s); running on CPU", device,
                        ", ".join(core.available_devices))
        if cache:
            core.set_property({"CACHE_DIR": str(user_cache_dir("openvino"))})
        config = compile_config(chosen, threads, precision)
        # With profiling, each inference's performance counters are kept (see end_profiling).
        self._profile: list[dict] | None = [] if profile else None
        if profile:
            config["PERF_COUNT"] = True
        self._models = {}
        for v in variants:
            compiled = core.compile_model(str(folder / v.file), chosen, config)
            self._models[v.seq] = (compiled, compiled.create_infer_request(), v.batch)
        compiled = next(iter(self._models.values()))[0]
        # What OpenVINO runs on: AUTO's pick, or the fallback.
        self.device = ", ".join(compiled.get_property("EXECUTION_DEVICES"))
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

    def _infer(self, model, feeds) -> list[np.ndarray]:
        compiled, request, _ = model
        # Sharing skips OpenVINO's copies in and out (a call of the demo's model: 0.82 → 0.59 ms, benchmarks/
        # latency.md); the outputs are views of the request's buffers, so they are copied before the next call.
        results = request.infer(feeds, share_inputs=True, share_outputs=True)
        if self._profile is not None:
            self._profile += [{"node_name": i.node_name, "node_type": i.node_type, "exec_type": i.exec_type,
                               "status": i.status.name, "real_time_us": i.real_time.total_seconds() * 1e6,
                               "cpu_time_us": i.cpu_time.total_seconds() * 1e6}
                              for i in request.get_profiling_info()]
        return [np.array(results[port]) for port in compiled.outputs]

    def end_profiling(self) -> dict:
        """A runner made with profile=True: every node's performance counters of every inference so far."""
        records, self._profile = self._profile or [], None
        return {"runtime": "openvino", "events": records}


@register("openvino")
class OpenVinoBackend(Backend):
    precisions = ("fp32", "fp16", "int8-static")
    options = OpenVinoOptions
    library = "openvino"
    build_libraries = ("nncf",)
    extra = "openvino"
    requires = ("openvino",)

    def compile(self, request, workdir: Path) -> CompiledModel:
        ov = _ov()
        target = request.target
        options: OpenVinoOptions = target.options
        if request.given_onnx is not None:   # a model quantized before compile: OpenVINO reads its Q/DQ
            model = ov.convert_model(str(request.onnx_for(request.precision, workdir)))
        else:
            model = request.memo("openvino-ir", lambda: ov.convert_model(str(request.reference_onnx))).clone()
        if request.precision == "int8-static" and request.given_onnx is None:
            # One utterance per item, so that the recipe's sample count is a count of utterances.
            model = quantize_int8(model, request.calibration_feeds(batch_size=1), request.calibration_samples)
        compress = request.precision == "fp16"
        variants = request.shape_variants(".xml")
        files = {}
        for v in variants:
            if v.seq is not None:
                model.reshape({p.get_any_name(): [v.batch, v.seq] for p in model.inputs})
            xml = workdir / v.file
            ov.save_model(model, str(xml), compress_to_fp16=compress)
            files[xml.name] = xml
            files[xml.with_suffix(".bin").name] = xml.with_suffix(".bin")
        runtime = {"device": options.device, "cache": options.cache, "threads": target.threads,
                   "variants": variant_dicts(variants)}
        report = {"openvino": {"ops": sorted({op.get_type_name() for op in model.get_ops()}),
                               "weights": "fp16" if compress else "fp32" if request.precision != "int8-static"
                               else "int8 (NNCF)" if request.given_onnx is None else "int8 (the given Q/DQ model)"}}
        return CompiledModel(files=files, precision=request.precision, runtime=runtime, report=report)

    def load(self, bundle, threads: int | None = None, device: str | None = None, profile: bool = False,
             **_) -> OpenVinoRunner:
        options: OpenVinoOptions = self.bundle_options(bundle)
        variants = bundle_variants(bundle, ("model.xml",))
        for v in variants:
            bundle.file(Path(v.file).with_suffix(".bin").name)
        return OpenVinoRunner(variants, bundle.path, device or options.device,
                              bundle.manifest.runtime.get("threads", 0) if threads is None else threads,
                              bundle.manifest.precision, options.cache, profile)

    def runs_on(self, options: OpenVinoOptions) -> str:
        return options.device

    def runs_here(self, options: OpenVinoOptions) -> str:
        ok, _ = self.available()
        if not ok:
            return super().runs_here(options)
        chosen = choose_device(options.device, self.devices())
        return "yes" if chosen == options.device else f"CPU only (no {options.device} here)"

    def devices(self) -> list[str]:
        return list(_ov().Core().available_devices)
