"""ELECTRA pre-training: packing, replaced-token detection, metrics, exact resume, SIGKILL, DDP on gloo."""
import itertools
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from edge_electra import dataclass_io
from edge_electra.train.config import preset
from edge_electra.train.model import Electra
from edge_electra.runtime.tokenizer import Tokenizer
from edge_electra.train import PretrainConfig, pretrain, state
from edge_electra.train.evaluate import classification_report, roc_auc, slot_f1, spans
from edge_electra.train.packing import Packer, token_ids
from edge_electra.train.pretrain import ReplacedTokenDetection

WORDS = "turn on the lights play some jazz what is weather in paris will it rain tomorrow set an alarm for seven".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, rng.integers(3, 12))) for _ in range(300)]
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "corpus.txt").write_text("\n".join(lines) + "\n")
    Tokenizer.train(lines, vocab_size=120).save_pretrained(folder)
    return folder


def tiny_config(corpus, out, **changes):
    settings = dict(preset="tiny", tokenizer=str(corpus), seq_len=32, batch_size=4, steps=6, warmup_steps=2,
                    log_every=1, save_every=3, device="cpu", threads=1, plot=False)
    return PretrainConfig(corpus=[str(corpus / "corpus.txt")], out=str(out), **{**settings, **changes})


def test_roc_auc_equals_the_pairwise_probability():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, 200).astype(float)  # many ties
    labels = rng.random(200) < 0.3
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert roc_auc(scores, labels) == pytest.approx(pairwise)
    assert np.isnan(roc_auc(scores, np.zeros(200)))


def test_classification_report_and_slot_spans():
    labels = ["a", "b", "oos"]
    report = classification_report(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), labels)
    assert report["accuracy"] == pytest.approx(3 / 5)
    assert report["per_class"]["a"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert report["oos_recall"] == pytest.approx(0.5)
    assert report["macro_f1"] == pytest.approx(np.mean([0.5, 2 / 3, 2 / 3]))
    assert spans(["B-city", "I-city", "O", "I-date"]) == {("city", 0, 2), ("date", 3, 4)}
    assert slot_f1([["B-city", "I-city", "O"]], [["B-city", "O", "O"]]) == 0.0
    assert slot_f1([["B-city", "O", "B-date"]], [["B-city", "O", "O"]]) == pytest.approx(2 / 3)


def test_packed_blocks_are_full_and_resume_where_they_stopped(corpus):
    tok = Tokenizer.from_pretrained(corpus)
    lines = (corpus / "corpus.txt").read_text().splitlines()
    stream = token_ids(tok, lines)
    packer = Packer([corpus / "corpus.txt"], tok, seq_len=32)
    blocks, states = [], []
    for block in itertools.islice(packer, 40):
        blocks.append(block)
        states.append(packer.state())
    assert all(len(b) == 32 for b in blocks)
    assert np.concatenate(blocks).tolist() == (stream * 2)[:40 * 32]  # no padding, wraps to a second pass
    resumed = Packer([corpus / "corpus.txt"], tok, seq_len=32, state=states[9])
    assert [b.tolist() for b in itertools.islice(resumed, 30)] == [b.tolist() for b in blocks[10:]]


def test_rtd_shares_embeddings_and_replaces_only_masked_tokens():
    torch.manual_seed(0)
    disc = Electra(preset("tiny", vocab_size=60, task="discriminator"))
    gen = Electra(disc.config.generator(0.5))
    rtd = ReplacedTokenDetection(disc, gen, special_ids=[2, 3, 0], mask_id=4)
    assert gen.encoder.embeddings.word is disc.encoder.embeddings.word
    assert gen.head.word_embeddings is disc.encoder.embeddings.word
    ids = torch.randint(5, 60, (3, 40))
    ids[:, 0], ids[:, 20] = 2, 3
    out = rtd(ids)
    replaced = out["replaced"].bool()
    assert not replaced[:, [0, 20]].any()                       # special tokens are never masked
    assert (replaced.sum(1) <= round(0.15 * 40)).all() and replaced.any()
    out["loss"].backward()
    assert disc.encoder.embeddings.word.weight.grad.abs().sum() > 0


def test_config_round_trips_through_toml(tmp_path):
    cfg = PretrainConfig(corpus=["a.txt"], steps=10, init="ckpt")
    dataclass_io.save(cfg, tmp_path / "c.toml")
    assert dataclass_io.load(PretrainConfig, tmp_path / "c.toml") == cfg


def test_interrupted_run_resumes_with_identical_losses(corpus, tmp_path, monkeypatch):
    straight = pretrain(tiny_config(corpus, tmp_path / "straight", plot=True))
    calls = []
    real_save = state.save_state

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        calls.append(1)
        raise KeyboardInterrupt  # the process dies just after its first checkpoint (step 3)

    monkeypatch.setattr(state, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_config(corpus, tmp_path / "killed"))
    monkeypatch.setattr(state, "save_state", real_save)
    assert state.load_state(tmp_path / "killed")["step"] == 3
    resumed = pretrain(tiny_config(corpus, tmp_path / "killed"))

    rows = lambda run: [json.loads(l) for l in (run.parent / "metrics.jsonl").read_text().splitlines()]
    keys = ("step", "loss", "mlm", "rtd", "gen_accuracy", "disc_accuracy")
    assert [[r[k] for k in keys] for r in rows(straight)] == [[r[k] for k in keys] for r in rows(resumed)]
    assert len(rows(resumed)) == 6
    from safetensors.torch import load_file
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (straight.parent / "generator" / "config.json").exists() and (straight.parent / "curves.png").exists()


def test_time_limit_stops_cleanly_and_resume_finishes_with_identical_losses(corpus, tmp_path, monkeypatch):
    import types
    from edge_electra.train import loop
    straight = pretrain(tiny_config(corpus, tmp_path / "straight"))
    ticks = itertools.count()
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    limited = pretrain(tiny_config(corpus, tmp_path / "limited", time_limit_s=8))
    stopped_at = state.load_state(tmp_path / "limited")["step"]
    assert 0 < stopped_at < 6 and (limited / "model.safetensors").exists()   # weights written at the stop
    monkeypatch.undo()
    resumed = pretrain(tiny_config(corpus, tmp_path / "limited"))
    rows = lambda run: [json.loads(l) for l in (run.parent / "metrics.jsonl").read_text().splitlines()]
    losses = lambda run: {r["step"]: r["loss"] for r in rows(run)}
    assert losses(resumed) == losses(straight)


def test_sigkill_mid_run_leaves_a_loadable_checkpoint(corpus, tmp_path):
    cfg = tiny_config(corpus, tmp_path / "run", steps=100_000, save_every=1, log_every=50)
    dataclass_io.save(cfg, tmp_path / "cfg.toml")
    proc = subprocess.Popen([sys.executable, "-m", "edge_electra.train.pretrain", "--config", str(tmp_path / "cfg.toml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not (tmp_path / "run" / "state.pt").exists():
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = state.load_state(tmp_path / "run")
    assert saved is not None, proc.stderr.read().decode()[-2000:]
    assert saved["step"] >= 1 and set(saved["rng"][0]) >= {"python", "numpy", "torch"}
    final = pretrain(tiny_config(corpus, tmp_path / "run", steps=saved["step"] + 1, save_every=1))
    assert state.load_state(tmp_path / "run")["step"] == saved["step"] + 1 and final.exists()


def _gloo_process(rank, port, corpus, out, record):
    """One of two DDP processes (gloo, CPU): a straight 4-step run, a 2-step run, then its resumption to 4 steps,
    recording each step's RNG state and masked positions."""
    import hashlib
    pretrain_module = sys.modules["edge_electra.train.pretrain"]   # the package exports the function by that name
    import datetime
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                                         timeout=datetime.timedelta(seconds=60))  # pretrain joins it, leaves it
    real, seen = pretrain_module.choose_masked, []

    def recording(input_ids, special_ids, mask_prob):
        digest = hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()
        positions, valid = real(input_ids, special_ids, mask_prob)
        seen.append({"rng": digest, "positions": positions.tolist()})
        return positions, valid

    pretrain_module.choose_masked = recording
    runs = {}
    for name, folder, steps in [("straight", "straight", 4), ("first half", "resumed", 2), ("resumed", "resumed", 4)]:
        seen.clear()
        pretrain(tiny_config(corpus, out / folder, steps=steps, batch_size=2, save_every=100))
        runs[name] = list(seen)
    # 900 words seen once each: the WordPiece trainer breaks their ties differently in every process.
    ties = [a + b + c + d for a in "bcdfgh" for b in "aeiou" for c in "klmnpr" for d in "aeiou"]
    (out / "ties.txt").write_text(" ".join(ties) + "\n")
    learnt = pretrain_module.build(PretrainConfig(corpus=[str(out / "ties.txt")], out=str(out / "learnt"),
                                                  preset="tiny", vocab_size=90, seq_len=32, resume=False),
                                   pretrain_module.placement.setup("cpu"))[2]
    runs["vocabulary"] = learnt.tokenize(" ".join(ties))
    torch.distributed.destroy_process_group()
    (record / f"rank{rank}.json").write_text(json.dumps(runs))


def test_ddp_processes_draw_their_own_masks_and_resume_their_own_streams(corpus, tmp_path):
    """Defect 11: every rank used the same seed (the same masks on every GPU), and a resumed run gave every rank
    rank 0's RNG state. Two gloo processes on the CPU stand in for two GPUs."""
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_gloo_process, args=(port, corpus, tmp_path / "runs", tmp_path), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    straight = [[step["rng"] for step in rank["straight"]] for rank in ranks]
    assert len(straight[0]) == 4 and not set(straight[0]) & set(straight[1])   # two streams, not one
    for rank in ranks:
        assert rank["first half"] + rank["resumed"] == rank["straight"]         # each continues its own
    assert ranks[0]["vocabulary"] == ranks[1]["vocabulary"]   # a learnt vocabulary is learnt once, for all
    rows = [json.loads(l) for l in (tmp_path / "runs" / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in rows)
    record = json.loads((tmp_path / "runs" / "resumed" / "run.json").read_text())
    assert record["world_size"] == 2 and record["resumed_at_step"] == 2
    assert len(state.load_state(tmp_path / "runs" / "resumed")["rng"]) == 2


def test_from_scratch_takes_fewer_layers_and_refuses_them_with_init(corpus, tmp_path):
    from edge_electra.errors import ConfigError
    from edge_electra.train.pretrain import build
    disc, gen, _ = build(tiny_config(corpus, tmp_path / "short", preset="small", num_layers=1))
    assert (disc.config.num_layers, disc.config.hidden_size, len(disc.encoder.layers)) == (1, 256, 1)
    assert gen.config.num_layers == 1
    with pytest.raises(ConfigError, match="from scratch"):
        tiny_config(corpus, tmp_path / "x", init="ckpt", num_layers=1)
    with pytest.raises(ConfigError, match="time_limit_s"):
        tiny_config(corpus, tmp_path / "x", time_limit_s=-1)


def test_init_continues_from_saved_discriminator_and_generator(corpus, tmp_path):
    from edge_electra.train.checkpoint import load_pretrained
    from edge_electra.train.pretrain import build
    first = pretrain(tiny_config(corpus, tmp_path / "first", steps=1))
    disc, gen, tok = build(tiny_config(corpus, tmp_path / "again", init=str(first), tokenizer=None))
    for model, folder in [(disc, first), (gen, first.parent / "generator")]:
        saved = load_pretrained(folder)[0].state_dict()
        assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert tok.vocab_size == disc.config.vocab_size


def test_adapting_a_lone_discriminator_says_its_generator_starts_random_with_shared_embeddings(corpus, tmp_path):
    """Defect 11: domain adaptation silently paired a released discriminator with a random generator."""
    import shutil
    from safetensors.torch import load_file
    first = pretrain(tiny_config(corpus, tmp_path / "first", steps=1))
    shutil.copytree(first, tmp_path / "released" / "discriminator")   # no generator/ beside it
    adapted = pretrain(tiny_config(corpus, tmp_path / "adapted", init=str(tmp_path / "released" / "discriminator"),
                                   tokenizer=None, steps=2))
    record = json.loads((adapted.parent / "run.json").read_text())
    assert record["generator"].startswith("random layers with the discriminator's embeddings")
    disc, gen = load_file(adapted / "model.safetensors"), load_file(adapted.parent / "generator" / "model.safetensors")
    word = "electra.embeddings.word_embeddings.weight"
    assert torch.equal(disc[word], gen[word])    # trained together, as one module
    continued = pretrain(tiny_config(corpus, tmp_path / "continued", init=str(first), tokenizer=None, steps=1))
    assert json.loads((continued.parent / "run.json").read_text())["generator"].startswith("continued from")
