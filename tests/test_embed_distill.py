"""pretrain --embed-teacher: sentence choice, step-pure batches, the cached teacher pass, and a run without RTD."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_electra.errors import ConfigError  # noqa: E402
from edge_electra.runtime.tokenizer import Tokenizer  # noqa: E402
from edge_electra.train import PretrainConfig, pretrain  # noqa: E402
from edge_electra.train import embed_distill  # noqa: E402
from edge_electra.train.checkpoint import load_pretrained, save_pretrained  # noqa: E402
from edge_electra.train.config import preset  # noqa: E402
from edge_electra.train.model import Electra  # noqa: E402

WORDS = "turn on the lights play some jazz what is weather in paris will it rain tomorrow set an alarm".split()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("embed")
    lines = [" ".join(rng.choice(WORDS, rng.integers(3, 10))) for _ in range(200)]
    (folder / "dialogues.txt").write_text("\n".join(lines) + "\n")
    (folder / "utterances.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in
                                                     ["hello there", "good night", "what time is it"]))
    tokenizer = Tokenizer.train(lines, vocab_size=80)
    tokenizer.save_pretrained(folder / "vocab")
    torch.manual_seed(1)
    save_pretrained(Electra(preset("tiny", vocab_size=tokenizer.vocab_size, task="discriminator")),
                    folder / "teacher", tokenizer)
    return folder


def test_corpus_sentences_take_small_files_whole_and_drop_repeats(setup):
    files = [str(setup / "dialogues.txt"), str(setup / "utterances.jsonl")]
    chosen = embed_distill.corpus_sentences(files, 10)
    assert len(chosen) == 10 and len({t.lower() for t in chosen}) == 10
    assert {"hello there", "good night", "what time is it"} <= set(chosen)   # interleaved, not crowded out


def test_batches_are_a_function_of_the_step_and_cover_every_sentence_each_pass(setup):
    texts = [f"sentence {i}" for i in range(10)]
    tokenizer = Tokenizer.from_pretrained(setup / "vocab")
    vectors = np.arange(10, dtype=np.float16)[:, None].repeat(4, 1)
    targets = embed_distill.TeacherTargets(vectors, vectors.repeat(2, 0), np.arange(0, 21, 2))
    batches = embed_distill.SentenceBatches(texts, targets, tokenizer, batch_size=5, max_length=8)
    again = embed_distill.SentenceBatches(texts, targets, tokenizer, batch_size=5, max_length=8)
    assert all(torch.equal(a, b) for a, b in zip(batches(3), again(3)))
    first_pass = torch.cat([batches(0)[2][:, 0], batches(1)[2][:, 0]])
    assert sorted(first_pass.tolist()) == list(range(10))
    with pytest.raises(ConfigError):
        embed_distill.SentenceBatches(texts[:3], targets, tokenizer, batch_size=5, max_length=8)
    words = embed_distill.SentenceBatches(texts, targets, tokenizer, batch_size=5, max_length=8, words=True)(3)
    assert torch.equal(words[2], batches(3)[2]) and words[4].shape == (5, 2, 4)
    assert torch.equal(words[4][:, 0, 0], words[2][:, 0])   # each sentence's own word vectors


def test_teacher_targets_are_mean_pooled_per_sentence_and_per_word_and_cached(setup, tmp_path):
    texts = ["turn on the lights", "play some jazz now please"]
    first = embed_distill.teacher_targets(str(setup / "teacher"), texts, tmp_path)
    cached = list(tmp_path.glob("targets-*.npz"))
    assert first.sentences.shape == (2, 32) and first.sentences.dtype == np.float16 and len(cached) == 1
    assert first.offsets.tolist() == [0, 4, 9] and first.words.shape == (9, 32)
    teacher, _ = load_pretrained(setup / "teacher")
    enc = Tokenizer.from_pretrained(setup / "teacher")(texts[1:]).arrays()
    with torch.inference_mode():
        hidden = teacher.eval().encoder(*(torch.from_numpy(enc[k]) for k in
                                          ("input_ids", "attention_mask", "token_type_ids")))
    np.testing.assert_allclose(first.sentences[1], hidden[0].mean(0).numpy(), atol=2e-3)   # one row: no padding
    pieces = Tokenizer.from_pretrained(setup / "teacher")(texts[1:]).word_ids[0]
    jazz = [position for position, word in enumerate(pieces) if word == 2]
    np.testing.assert_allclose(first.words[4 + 2], hidden[0, jazz].mean(0).numpy(), atol=2e-3)
    again = embed_distill.teacher_targets(str(setup / "teacher"), texts, tmp_path)
    assert np.array_equal(again.words, first.words)
    sentences_only = embed_distill.teacher_targets(str(setup / "teacher"), texts, tmp_path, words=False)
    assert sentences_only.words is None and np.array_equal(sentences_only.sentences, first.sentences)
    fresh = embed_distill.teacher_targets(str(setup / "teacher"), texts, tmp_path / "fresh", words=False)
    assert fresh.words is None   # computed and cached whole, the word vectors are not kept in memory
    assert np.array_equal(embed_distill.teacher_targets(str(setup / "teacher"), texts, tmp_path / "fresh").words,
                          first.words)
    cached[0].write_bytes(b"")   # a second call reads the cache (here: an unreadable one) instead of recomputing
    with pytest.raises(Exception):
        embed_distill.teacher_targets(str(setup / "teacher"), texts, tmp_path)


def test_word_pooling_averages_each_words_pieces_and_masks_words_without_pieces(setup):
    tokenizer = Tokenizer.from_pretrained(setup / "vocab")
    enc = tokenizer(["turn on the lights", "jazz"], max_length=4)   # row 0 loses words to truncation
    pool = embed_distill.word_pooling(enc.word_ids, 4, enc.input_ids.shape[1])
    assert pool.shape == (2, 4, 4)
    kept = [{w for w in ids if w is not None} for ids in enc.word_ids]
    assert 0 < len(kept[0]) < 4 and kept[1] == {0}
    expected = torch.tensor([[float(w in words) for w in range(4)] for words in kept])
    assert torch.allclose(pool.sum(-1), expected)
    for row, ids in enumerate(enc.word_ids):
        for position, word in enumerate(ids):
            if word is not None:
                assert pool[row, word, position] > 0


def test_pretrain_with_the_teacher_alone_lowers_the_embedding_loss(setup, tmp_path):
    cfg = PretrainConfig(corpus=[str(setup / "dialogues.txt")], out=str(tmp_path / "run"), preset="tiny",
                         tokenizer=str(setup / "vocab"), seq_len=16, batch_size=2, steps=40, warmup_steps=2,
                         lr=3e-3, log_every=10, save_every=20, device="cpu", threads=1, plot=False,
                         rtd_weight=0.0, embed_teacher=str(setup / "teacher"), embed_sentences=64,
                         embed_batch_size=16, embed_cache=str(tmp_path / "cache"))
    pretrain(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "rtd" not in rows[0] and "embed_word" not in rows[0] and rows[-1]["embed"] < rows[0]["embed"]
    assert load_pretrained(tmp_path / "run" / "discriminator")[0].config.pooling == "cls"
    with pytest.raises(ConfigError):
        PretrainConfig(corpus=["x"], rtd_weight=0.0)   # nothing left to train


def test_pretrain_with_the_word_term_lowers_both_distillation_losses(setup, tmp_path):
    cfg = PretrainConfig(corpus=[str(setup / "dialogues.txt")], out=str(tmp_path / "run"), preset="tiny",
                         tokenizer=str(setup / "vocab"), seq_len=16, batch_size=2, steps=40, warmup_steps=2,
                         lr=3e-3, log_every=10, save_every=20, device="cpu", threads=1, plot=False,
                         rtd_weight=0.0, embed_teacher=str(setup / "teacher"), embed_sentences=64,
                         embed_batch_size=16, embed_cache=str(tmp_path / "cache"), embed_word_weight=1.0)
    pretrain(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["embed_word"] < rows[0]["embed_word"] and rows[-1]["embed"] < rows[0]["embed"]
    # every word's state was taught, so the encoder asks to be fine-tuned reading their mean
    assert load_pretrained(tmp_path / "run" / "discriminator")[0].config.pooling == "mean"
