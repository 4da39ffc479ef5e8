"""Shared fixtures. `tiny_bundle(task, backend, **manifest_fields)` builds a real, small bundle once per session."""
from __future__ import annotations

import json
import warnings
from importlib import metadata

import pytest

INTENTS = {
    "lights_on": ["turn on the lights", "switch the kitchen lamp on", "lights on in the bedroom please"],
    "play_music": ["play some jazz", "put on music by the beatles", "play my workout playlist"],
    "weather": ["what is the weather in paris", "will it rain tomorrow", "how cold is it outside"],
    "oos": ["tell me a joke", "who won the game last night", "what is the meaning of life"],
}
# One BIO tag per whitespace word of the utterances above (only some words are slots).
SLOT_LABELS = ["O", "B-room", "B-artist", "I-artist", "B-city", "B-date"]
TEXTS = [t for texts in INTENTS.values() for t in texts]
LABELS = list(INTENTS)


def installed_version(library: str | None) -> dict[str, str]:
    """{library: its installed version}, or nothing when it is not installed."""
    try:
        return {library: metadata.version(library)} if library else {}
    except metadata.PackageNotFoundError:
        return {}


def write_dataset(path, texts=TEXTS):
    """A labelled JSONL file of the fixture utterances."""
    label_of = {t: label for label, ts in INTENTS.items() for t in ts}
    path.write_text("".join(json.dumps({"text": t, "label": label_of[t]}) + "\n" for t in texts))
    return path



@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A tiny sequence classifier, its unfused FP32 ONNX, a batch of inputs and torch's logits for it."""
    import torch

    from edge_electra.build.export import ExportConfig, example_inputs, export_onnx
    from edge_electra.runtime.io_spec import INPUTS
    from edge_electra.train.config import preset
    from edge_electra.train.model import Electra
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Electra(preset("tiny", vocab_size=100, max_position=64, labels=["a", "b", "c"])).eval()
    root = tmp_path_factory.mktemp("classifier")
    export_onnx(model, root / "model.onnx", ExportConfig(optimize=False))
    feeds = example_inputs(3, 16, 100)
    with torch.no_grad():
        expected = model(*(torch.from_numpy(feeds[n]) for n in INPUTS))
    return {"root": root, "onnx": root / "model.onnx", "feeds": feeds, "expected": expected.numpy()}


def tiny_model(max_position: int = 64, labels=None, texts=None):
    """A randomly initialised preset("tiny") sequence classifier over `labels` (default: the fixture intents;
    seed 0, eval mode), with a WordPiece vocabulary trained on `texts` (default: their utterances)."""
    import torch

    from edge_electra.train.config import preset
    from edge_electra.train.model import Electra
    from edge_electra.runtime.tokenizer import Tokenizer
    torch.set_num_threads(1)
    tokenizer = Tokenizer.train((texts or TEXTS) * 3, vocab_size=200, max_length=max_position)
    torch.manual_seed(0)
    model = Electra(preset("tiny", vocab_size=tokenizer.vocab_size, max_position=max_position,
                           labels=labels or LABELS))
    return model.eval(), tokenizer


# What a device installs besides the standard library (the core dependencies and onnx-mobile's runtime).
DEVICE_PACKAGES = ("numpy", "tokenizers", "click", "onnxruntime", "edge_electra")


def without_torch_env(folder) -> dict:
    """Environment for a subprocess that has only what a device installs: its sitecustomize swaps site-packages
    for a folder of links to DEVICE_PACKAGES alone, so torch, tomli_w, onnx and the rest are not installed."""
    import os
    import sysconfig
    from pathlib import Path
    site = Path(folder) / "device-site-packages"
    site.mkdir(exist_ok=True)
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():   # packages, their .libs and dist-info
        if entry.name.split("-")[0].split(".")[0] in DEVICE_PACKAGES and not (site / entry.name).exists():
            (site / entry.name).symlink_to(entry)
    (Path(folder) / "sitecustomize.py").write_text(
        "import sys\n"
        f"sys.path[:] = [p for p in sys.path if not p.endswith('site-packages')] + [{str(site)!r}]\n")
    root = str(Path(__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), root])}


def _export(model, path, input_names):
    import torch
    ids = torch.ones(2, 8, dtype=torch.long)
    dynamic = {name: {0: "batch", 1: "seq"} for name in input_names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(path),
                          input_names=input_names, output_names=model.output_names,
                          dynamic_axes=dynamic, opset_version=17, dynamo=False)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """Factory: tiny_bundle(task="sequence", backend="onnx-mobile", **Manifest field overrides) → bundle path.

    A randomly initialised `preset("tiny")` ELECTRA with a WordPiece vocabulary trained on the fixture
    utterances, exported to ONNX (model.onnx, dynamic batch and sequence), max_length 64, buckets 16/32/64,
    max_batch 8. Bundles with the same arguments are built once per session.
    """
    torch = pytest.importorskip("torch")
    from edge_electra import dataclass_io
    from edge_electra.backends import backend_library
    from edge_electra.build.package import write_bundle
    from edge_electra.runtime.bundle import Manifest, TensorSpec
    from edge_electra.train.config import preset
    from edge_electra.train.model import Electra
    from edge_electra.runtime.tokenizer import Tokenizer

    built = {}
    root = tmp_path_factory.mktemp("bundles")
    tokenizer = Tokenizer.train(TEXTS * 3, vocab_size=200, max_length=64)

    def build(task: str = "sequence", backend: str = "onnx-mobile", **manifest_fields):
        key = json.dumps([task, backend, manifest_fields], sort_keys=True, default=str)
        if key in built:
            return built[key]
        torch.manual_seed(0)
        cfg = preset("tiny", vocab_size=tokenizer.vocab_size, task=task, max_position=64,
                     labels=LABELS if task != "token" else [],
                     slot_labels=SLOT_LABELS if task in ("token", "joint") else [])
        model = Electra(cfg).eval()
        workdir = root / f"work{len(built)}"
        workdir.mkdir()
        input_names = ["input_ids", "attention_mask", "token_type_ids"]
        _export(model, workdir / "model.onnx", input_names)
        library = backend_library(backend)
        fields = dict(
            task=task, labels=cfg.labels, slot_labels=cfg.slot_labels, backend=backend, precision="fp32",
            inputs=[TensorSpec(n, "int64", [[1, 8], [1, 64]]) for n in input_names],
            outputs=[TensorSpec(n, "float32", [[1, 8], len(cfg.labels)] if n == "logits" and task != "token"
                                else [[1, 8], [1, 64], len(cfg.slot_labels)]) for n in model.output_names],
            tokenizer={"max_length": 64, "buckets": [16, 32, 64]},
            runtime={"max_batch": 8},
            source={"config": dataclass_io.to_dict(cfg)},
            versions=installed_version(library),
        )
        fields.update(manifest_fields)
        dest = write_bundle(root / f"{task}-{backend}-{len(built)}", Manifest(**fields),
                            {"model.onnx": workdir / "model.onnx"}, tokenizer)
        built[key] = dest
        return dest

    torch.set_num_threads(1)
    return build

