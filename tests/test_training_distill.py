"""Distillation and fine-tuning: losses, teacher caching, joint slots, best checkpoint, exact resume."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_electra import dataclass_io
from edge_electra.train.checkpoint import load_pretrained
from edge_electra.train.config import preset
from edge_electra.errors import ConfigError
from edge_electra.train.model import Electra
from edge_electra.runtime.tokenizer import Tokenizer
from edge_electra.train import DistillConfig, distill, finetune, state
from edge_electra.train import teacher as teacher_module
from edge_electra.train.distill import loss_terms, select_layers
from edge_electra.train.labelled import IGNORE, encode
from edge_electra.train.options import config_from_cli

CITIES, ARTISTS = ["paris", "london", "tokyo", "berlin"], ["adele", "queen", "muse", "abba"]
TEMPLATES = {  # (text, tags) per intent; {c} is a city, {a} an artist
    "weather": [("weather in {c}", "O O B-city"), ("will it rain in {c} today", "O O O O B-city O")],
    "music": [("play {a} please", "O B-artist O"), ("put on some {a}", "O O O B-artist")],
    "alarm": [("set an alarm", "O O O"), ("wake me up at seven", "O O O O O")],
    "oos": [("tell me a joke", "O O O O"), ("what is the meaning of life", "O O O O O O")],
}


def write_split(path, rng, n, with_tags):
    rows = []
    for _ in range(n):
        label = list(TEMPLATES)[rng.integers(len(TEMPLATES))]
        text, tags = TEMPLATES[label][rng.integers(2)]
        text = text.format(c=CITIES[rng.integers(4)], a=ARTISTS[rng.integers(4)])
        rows.append({"text": text, "label": label, **({"tags": tags} if with_tags else {})})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_splits(folder, sizes: dict[str, int], with_tags: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    for split, n in sizes.items():
        write_split(folder / f"{split}.jsonl", rng, n, with_tags)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("intents")
    write_splits(folder, {"train": 160, "validation": 40, "test": 40}, with_tags=False)
    texts = [t.format(c=c, a=a) for ts in TEMPLATES.values() for t, _ in ts for c in CITIES for a in ARTISTS]
    (folder / "tok").mkdir()
    Tokenizer.train(texts, vocab_size=100).save_pretrained(folder / "tok")
    return folder


def tiny(dataset, out, **changes):
    settings = dict(preset="tiny", tokenizer=str(dataset / "tok"), max_length=16, batch_size=16, epochs=12,
                    lr=3e-3, warmup_ratio=0.0, patience=0, log_every=5, device="cpu", threads=1, plot=False)
    return DistillConfig(data=str(dataset), out=str(out), **{**settings, **changes})


@pytest.fixture(scope="module")
def finetuned(dataset, tmp_path_factory):
    torch.manual_seed(0)
    return finetune(tiny(dataset, tmp_path_factory.mktemp("ft") / "run", plot=True, epochs=20))


def test_finetune_learns_and_keeps_the_best_checkpoint(finetuned):
    metrics = json.loads((finetuned.parent / "metrics.json").read_text())
    assert metrics["validation"]["accuracy"] > 0.6 and metrics["test"]["accuracy"] > 0.6  # chance is 0.25
    assert set(metrics["test"]) >= {"macro_f1", "per_class", "oos_recall"}
    model, report = load_pretrained(finetuned)
    assert model.config.labels == ["alarm", "music", "oos", "weather"] and not report["missing"]
    assert (finetuned / "tokenizer.json").exists() and (finetuned.parent / "curves.png").exists()
    vals = [json.loads(l) for l in (finetuned.parent / "metrics.jsonl").read_text().splitlines()]
    best = max(r["val_accuracy"] for r in vals if "val_accuracy" in r)
    assert metrics["validation"]["accuracy"] == pytest.approx(best)


def test_freeze_embeddings_keeps_the_word_embeddings_and_trains_the_rest(dataset, finetuned, tmp_path):
    start, _ = load_pretrained(finetuned)
    best = finetune(tiny(dataset, tmp_path / "run", init=str(finetuned), preset=None, tokenizer=None, epochs=2,
                         freeze_embeddings=True))
    after, _ = load_pretrained(best)
    assert torch.equal(after.encoder.embeddings.word.weight, start.encoder.embeddings.word.weight)
    assert not torch.equal(after.encoder.layers[0].ffn_in.weight,
                           start.encoder.layers[0].ffn_in.weight)


def test_distil_caches_teacher_outputs_and_uses_them(dataset, finetuned, tmp_path, monkeypatch):
    (tmp_path / "extra.txt").write_text("weather in rome\nplay some muse\nwake me up\n")
    settings = dict(teacher=str(finetuned), num_layers=1, hidden_weight=0.5, unlabelled=[str(tmp_path / "extra.txt")])
    best = distill(tiny(dataset, tmp_path / "student", max_steps=4, **settings))
    cache = list((tmp_path / "student" / "teacher_cache").glob("teacher-*.npz"))
    assert len(cache) == 1 and load_pretrained(best)[0].config.num_layers == 1
    assert np.load(cache[0])["logits"].shape == (160 + 3, 4)  # the unlabelled lines are labelled by the teacher
    rows = [json.loads(l) for l in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert {"kd", "ce", "hidden"} <= set(rows[0])

    teacher, _ = load_pretrained(finetuned)
    texts = [json.loads(l)["text"] for l in (dataset / "train.jsonl").read_text().splitlines()]
    enc = Tokenizer.from_pretrained(finetuned)(texts[:8], max_length=16)
    with torch.no_grad():
        direct = teacher.eval()(*(torch.from_numpy(a) for a in enc.arrays().values()))
    assert np.allclose(np.load(cache[0])["logits"][:8], direct.numpy(), atol=1e-5)

    monkeypatch.setattr(teacher_module, "load_teacher", lambda *a, **k: pytest.fail("the teacher ran again"))
    distill(tiny(dataset, tmp_path / "student", max_steps=2, resume=False, **settings))


def test_early_stopping_after_patience_runs_out(dataset, tmp_path):
    finetune(tiny(dataset, tmp_path / "run", lr=0.0, eval_every=1, patience=2))  # lr 0: it can never improve
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_accuracy" in r] == [1, 2, 3]


def test_hugging_face_teacher_logits_follow_the_students_label_order(tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = Tokenizer.train(["play some music", "set an alarm", "weather in paris"] * 5, vocab_size=60)
    hf_cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, num_labels=3,
                                     id2label={0: "weather", 1: "alarm", 2: "music"})
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification(hf_cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    texts = ["play some music", "weather in paris"]
    out = teacher_module.teacher_outputs(str(tmp_path / "hf"), texts, ["alarm", "music", "weather"],
                                         tmp_path / "cache", log=lambda m: None)
    enc = tok(texts, max_length=64)
    with torch.no_grad():
        ref = hf(**{k: torch.from_numpy(v) for k, v in enc.arrays().items()}).logits.numpy()
    assert np.allclose(out["logits"], ref[:, [1, 2, 0]], atol=1e-5)
    assert set(out) == {"logits"}  # no slot head, no slot logits


def test_loss_terms_kd_vanishes_when_student_matches_teacher():
    cfg = DistillConfig(data="unused", teacher="t", temperature=3.0)
    logits = torch.randn(4, 5)
    batch = {"labels": torch.tensor([0, IGNORE, 2, IGNORE])}
    terms = loss_terms(cfg, logits, {}, batch, {"logits": logits.clone()})
    assert terms["kd"].abs() < 1e-6
    expected_ce = torch.nn.functional.cross_entropy(logits[[0, 2]], torch.tensor([0, 2]))
    assert torch.allclose(terms["ce"], expected_ce)
    assert loss_terms(cfg, logits, {}, {"labels": torch.full((4,), IGNORE)}, None) == {}


def test_slot_tags_sit_on_each_words_first_piece():
    tok = Tokenizer.train(["weather in paris", "play adele"] * 3, vocab_size=40)
    words = ["weather", "in", "paris"]
    pieces = [tok.tokenize(w) for w in words]
    assert max(map(len, pieces)) > 1  # the small vocabulary splits words
    batch = encode(tok, [" ".join(words)], 32, [0], [["O", "O", "B-city"]], ["O", "B-city"])
    slots = batch["slot_labels"][0].tolist()
    city = 1 + len(pieces[0]) + len(pieces[1])  # [CLS], then the pieces of "weather" and "in"
    assert slots[1] == 0 and slots[1 + len(pieces[0])] == 0 and slots[city] == 1
    assert sum(s != IGNORE for s in slots) == 3 and slots[0] == IGNORE and batch["labels"].tolist() == [0]


def test_joint_model_trains_on_tagged_data(tmp_path):
    rng = np.random.default_rng(1)
    for split, n in [("train", 48), ("validation", 16)]:
        write_split(tmp_path / f"{split}.jsonl", rng, n, with_tags=True)
    cfg = DistillConfig(data=str(tmp_path), out=str(tmp_path / "run"), preset="tiny", max_length=16, batch_size=16,
                        epochs=1, device="cpu", threads=1, plot=False)
    best = finetune(cfg)
    model, _ = load_pretrained(best)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert model.config.task == "joint" and "B-city" in model.config.slot_labels
    assert 0.0 <= metrics["validation"]["slot_f1"] <= 1.0


def test_select_layers_even_and_first():
    model = Electra(preset("tiny", num_layers=6, vocab_size=50))
    layers = list(model.encoder.layers)
    even = select_layers(Electra(preset("tiny", num_layers=6, vocab_size=50)), 3)
    assert even.config.num_layers == 3 and len(even.encoder.layers) == 3
    kept = select_layers(model, 3, "even").encoder.layers
    assert [layers.index(layer) for layer in kept] == [1, 3, 5]
    first = Electra(preset("tiny", num_layers=6, vocab_size=50))
    assert list(select_layers(first, 2, "first").encoder.layers) == list(first.encoder.layers)[:2]
    with pytest.raises(ConfigError):
        select_layers(Electra(preset("tiny", vocab_size=50)), 5)


def test_interrupted_finetune_resumes_with_identical_losses(dataset, tmp_path, monkeypatch):
    settings = dict(max_steps=6, save_every=3, log_every=1, eval_every=100)
    torch.manual_seed(0)
    straight = finetune(tiny(dataset, tmp_path / "straight", **settings))
    real_save = state.save_state

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(state, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny(dataset, tmp_path / "killed", **settings))
    monkeypatch.setattr(state, "save_state", real_save)
    resumed = finetune(tiny(dataset, tmp_path / "killed", **settings))
    losses = lambda run: [(r["step"], r["loss"]) for r in map(json.loads, (run.parent / "metrics.jsonl").read_text()
                                                                    .splitlines()) if "loss" in r]
    assert losses(straight) == losses(resumed) and len(losses(resumed)) == 6


def test_config_file_plus_flags(tmp_path):
    dataclass_io.save(DistillConfig(data="a", epochs=7, unlabelled=["u.txt"], teacher="t"), tmp_path / "d.toml")
    cfg = config_from_cli(DistillConfig, str(tmp_path / "d.toml"), {"epochs": 2, "lr": None, "unlabelled": ()})
    assert (cfg.epochs, cfg.unlabelled, cfg.teacher, cfg.lr) == (2, ["u.txt"], "t", DistillConfig.lr)
    with pytest.raises(ConfigError):
        DistillConfig(data="a", unlabelled=["u.txt"])
    with pytest.raises(ConfigError):
        finetune(DistillConfig(data="a", teacher="t"))


@pytest.mark.shared
def test_minilm_fine_tunes_as_a_teacher_on_clinc150(tmp_path):
    shared = os.environ.get("EDGE_ELECTRA_SHARED")
    if not shared:
        pytest.skip("set EDGE_ELECTRA_SHARED=../shared to run tests on the real data and models")
    cfg = DistillConfig(data=str(Path(shared) / "data/clinc150/train.jsonl"), out=str(tmp_path / "t"),
                        init=str(Path(shared) / "models/all-MiniLM-L6-v2"), max_length=32, max_steps=10,
                        batch_size=16, device="cpu", threads=2, plot=False)
    model, _ = load_pretrained(finetune(cfg))
    assert model.config.num_labels == 151 and model.config.hidden_size == 384
