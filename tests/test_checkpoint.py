"""Checkpoint folders: Hugging Face layouts in, the same layout out, clear errors otherwise."""
import json
import os
from pathlib import Path

import pytest
import torch

from edge_electra.train.checkpoint import load_pretrained, resolve, save_pretrained
from edge_electra.train.config import preset
from edge_electra.errors import CheckpointError
from edge_electra.train.model import Electra

SHARED = os.environ.get("EDGE_ELECTRA_SHARED")


def test_pytorch_bin_layout_loads(tmp_path):
    model = Electra(preset("tiny", vocab_size=50, labels=["a", "b"])).eval()
    save_pretrained(model, tmp_path / "st")
    from safetensors.torch import load_file
    torch.save(load_file(tmp_path / "st" / "model.safetensors"), tmp_path / "st" / "pytorch_model.bin")
    (tmp_path / "st" / "model.safetensors").unlink()
    again, report = load_pretrained(tmp_path / "st")
    again.eval()
    ids = torch.randint(1, 50, (2, 7))
    with torch.no_grad():
        assert torch.equal(model(ids), again(ids))
    assert report["missing"] == []


def test_encoder_checkpoint_gets_a_new_head(tmp_path):
    save_pretrained(Electra(preset("tiny", vocab_size=50, task="discriminator")), tmp_path / "disc")
    model, report = load_pretrained(tmp_path / "disc", task="sequence", labels=["x", "y", "z"])
    assert model.config.num_labels == 3
    assert sorted(report["missing"]) == ["head.dense.bias", "head.dense.weight", "head.out.bias", "head.out.weight"]
    assert report["unused"] == ["discriminator_predictions.dense.bias", "discriminator_predictions.dense.weight",
                                "discriminator_predictions.dense_prediction.bias",
                                "discriminator_predictions.dense_prediction.weight"]


@pytest.mark.parametrize("breakage,message", [
    (lambda d: (d / "config.json").unlink(), "no config.json"),
    (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
    (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 10), "cannot be read"),
    (lambda d: (d / "config.json").write_text(json.dumps({"hidden_size": 8})), "lacks 'vocab_size'"),
])
def test_broken_checkpoints_give_clear_errors(tmp_path, breakage, message):
    save_pretrained(Electra(preset("tiny", vocab_size=50, labels=["a"])), tmp_path / "c")
    breakage(tmp_path / "c")
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(tmp_path / "c")


def test_wrong_shape_is_named(tmp_path):
    save_pretrained(Electra(preset("tiny", vocab_size=50, labels=["a"])), tmp_path / "c")
    with pytest.raises(CheckpointError, match="encoder.embeddings.word.weight has shape"):
        load_pretrained(tmp_path / "c", vocab_size=60)


def test_missing_local_folder_and_offline_hub(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="not found"):
        resolve(tmp_path / "nowhere")
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with pytest.raises(CheckpointError, match="could not download google/electra-small-discriminator"):
        resolve("google/electra-small-discriminator")


def test_save_is_atomic(tmp_path, monkeypatch):
    model = Electra(preset("tiny", vocab_size=50, labels=["a"]))
    save_pretrained(model, tmp_path / "c")
    before = (tmp_path / "c" / "model.safetensors").read_bytes()
    import safetensors.torch
    monkeypatch.setattr(safetensors.torch, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        save_pretrained(Electra(preset("tiny", vocab_size=50, labels=["a"])), tmp_path / "c")
    assert (tmp_path / "c" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


@pytest.mark.skipif(not SHARED, reason="set EDGE_ELECTRA_SHARED to ../shared to test on real weights")
def test_bert_family_checkpoint_matches_transformers():
    transformers = pytest.importorskip("transformers")
    folder = Path(SHARED) / "models" / "all-MiniLM-L6-v2"
    ours, report = load_pretrained(folder, task="sequence", labels=["a", "b"])
    assert [k for k in report["missing"] if not k.startswith("head.")] == []
    ref = transformers.BertModel.from_pretrained(folder).eval()
    ours.eval()
    ids = torch.randint(1000, 20000, (2, 16))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours.encoder(ids, mask)
    assert (expected - got)[mask.bool()].abs().max() < 1e-4


@pytest.mark.skipif(not SHARED or not list(Path(SHARED or ".").glob("models/electra-small*")),
                    reason="../shared holds no released ELECTRA-Small weights")
def test_released_discriminator_flags_a_replaced_token():
    from edge_electra.runtime.tokenizer import Tokenizer
    folder = next(Path(SHARED).glob("models/electra-small*discriminator*"))
    model, _ = load_pretrained(folder, task="discriminator")
    tok = Tokenizer.from_pretrained(folder)
    enc = tok(["the quick brown fox jumps over the lazy dog", "the quick brown fox fake over the lazy dog"])
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask))
    replaced = 5  # "fake", after [CLS] the quick brown fox
    assert logits[1, replaced] > 0 and logits[0, replaced] < logits[1, replaced]


def test_checkpoint_of_another_family_is_refused_not_trained_from_random(tmp_path):
    """Defect 10: a `roberta.`-prefixed checkpoint mapped no encoder weight, and load_pretrained returned a
    random encoder without a word."""
    from safetensors.torch import load_file, save_file
    save_pretrained(Electra(preset("tiny", vocab_size=50, task="discriminator")), tmp_path / "c")
    weights = load_file(tmp_path / "c" / "model.safetensors")
    renamed = {name.replace("electra.", "roberta.", 1): tensor for name, tensor in weights.items()}
    save_file(renamed, tmp_path / "c" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"lacks \d+ encoder weight.*roberta\."):
        load_pretrained(tmp_path / "c", task="sequence", labels=["a", "b"])


def test_checkpoint_missing_one_encoder_layer_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    save_pretrained(Electra(preset("tiny", vocab_size=50, labels=["a"])), tmp_path / "c")
    weights = load_file(tmp_path / "c" / "model.safetensors")
    save_file({k: v for k, v in weights.items() if ".layer.1." not in k}, tmp_path / "c" / "model.safetensors")
    with pytest.raises(CheckpointError, match="encoder.layers.1"):
        load_pretrained(tmp_path / "c")


def test_hidden_act_is_honoured_and_an_unknown_one_refused(tmp_path):
    """Defect 10: hidden_act was ignored, so a relu checkpoint ran as gelu."""
    torch.manual_seed(0)
    save_pretrained(Electra(preset("tiny", vocab_size=50, labels=["a", "b"])), tmp_path / "c")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    ids = torch.randint(1, 50, (2, 7))
    outputs = {}
    for act in ("gelu", "relu", "gelu_new"):
        (tmp_path / "c" / "config.json").write_text(json.dumps({**config, "hidden_act": act}))
        model, _ = load_pretrained(tmp_path / "c")
        assert model.config.hidden_act == act
        with torch.no_grad():
            outputs[act] = model.eval().encoder(ids)
        save_pretrained(model, tmp_path / act)   # and it is written back as it was read
        assert json.loads((tmp_path / act / "config.json").read_text())["hidden_act"] == act
    assert (outputs["relu"] - outputs["gelu"]).abs().max() > 1e-2
    (tmp_path / "c" / "config.json").write_text(json.dumps({**config, "hidden_act": "swish"}))
    with pytest.raises(CheckpointError, match="hidden_act 'swish'"):
        load_pretrained(tmp_path / "c")
