"""The shipped pre-trained encoder: small, fp16, checksummed, used by default, and carried by the wheel."""
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_electra import default_encoder

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_weights_are_fp16_within_4_mb_and_match_provenance():
    safetensors = pytest.importorskip("safetensors")
    folder = default_encoder.folder()
    assert (folder / "model.safetensors").stat().st_size <= 4_000_000
    with safetensors.safe_open(folder / "model.safetensors", "np") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"float16"}
    config = json.loads((folder / "config.json").read_text())
    assert config["num_hidden_layers"] <= 4 and config["hidden_size"] <= 256
    provenance = (folder / "PROVENANCE.md").read_text()
    for name in default_encoder.FILES:
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert re.search(rf"{digest}\s+{re.escape(name)}", provenance), name


def test_finetune_without_init_preset_or_tokenizer_starts_from_the_shipped_encoder():
    assert default_encoder.default_init(None, None, None) == str(default_encoder.folder())
    assert default_encoder.default_init("some/checkpoint", None, None) == "some/checkpoint"
    assert default_encoder.default_init(None, "tiny", None) is None
    assert default_encoder.default_init(None, None, "vocab.txt") is None


def test_the_demo_fine_tunes_the_shipped_encoder_unless_a_preset_or_init_is_given(tmp_path):
    from edge_electra.tools.demo import pretrained_electra
    assert pretrained_electra(None) == default_encoder.folder()
    assert pretrained_electra(None, "tiny") is None
    assert pretrained_electra(str(tmp_path)) == tmp_path


def test_build_student_loads_the_shipped_encoder_weights(tmp_path):
    torch = pytest.importorskip("torch")
    from edge_electra.data import Dataset, Example
    from edge_electra.train.checkpoint import read_weights
    from edge_electra.train.distill import DistillConfig, build_student
    train = Dataset([Example("turn on the lights", "lights_on"), Example("what time is it", "time_query")],
                    ["lights_on", "time_query"])
    model, tokenizer = build_student(DistillConfig(data="unused", out=str(tmp_path)), train)
    shipped = read_weights(default_encoder.folder())["electra.embeddings.word_embeddings.weight"]
    assert torch.equal(model.encoder.embeddings.word.weight.detach(), shipped.float())
    assert tokenizer.vocab_size == shipped.shape[0] and model.config.labels == ["lights_on", "time_query"]
    assert model.config.pooling == "mean"   # the shipped encoder's config asks for it
    chosen, _ = build_student(DistillConfig(data="unused", out=str(tmp_path), pooling="cls"), train)
    assert chosen.config.pooling == "cls"


def test_an_installed_wheel_carries_and_loads_the_weights_and_the_demo_templates(tmp_path):
    pytest.importorskip("torch")
    # Built from a clean copy: an in-tree build/ left by an earlier build would carry files the config forgets.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("edge_electra", "targets", "calibration"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=240)
    wheel, = (tmp_path / "dist").glob("edge_electra-*.whl")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=120)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from edge_electra import default_encoder; "
            "from edge_electra.train.checkpoint import load_pretrained; "
            "model, _ = load_pretrained(default_encoder.folder(), task='sequence', labels=['a', 'b']); "
            "print(default_encoder.FOLDER); print(model.num_parameters()); "
            "from edge_electra.tools import builtin_data; print(builtin_data.__file__, len(builtin_data.examples()))")
    run = subprocess.run([sys.executable, "-I", "-c", code, str(target)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    folder, parameters, templates_module, utterances = run.stdout.split()
    assert Path(folder).is_relative_to(target) and not Path(folder).is_relative_to(ROOT)
    assert int(parameters) > 1_000_000
    assert Path(templates_module).is_relative_to(target) and int(utterances) == 3350
