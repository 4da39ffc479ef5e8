"""The tokenizer matches transformers' BertTokenizerFast (uncased) and pads and truncates as documented."""
import os
from pathlib import Path

import numpy as np
import pytest

from edge_electra.runtime.tokenizer import Tokenizer

SHARED = os.environ.get("EDGE_ELECTRA_SHARED")

BASE = [
    "Turn on the lights in the kitchen", "what's the weather like in São Paulo?", "Set a timer for 10 minutes!!",
    "Café crème brûlée naïve résumé", "ÀÉÎÕÜ ÇÑ ß œ æ ø å", "I ❤️ my robot 🤖🔥👍🏽", "東京の天気は？", "北京欢迎你",
    "서울 날씨 알려줘", "https://example.com/path?q=1&x=%20y", "mail me: someone@example.org", "C++ vs. C# vs. F#",
    "pneumonoultramicroscopicsilicovolcanoconiosis", "a" * 150, "   ", "", "\t\n", "tab\tseparated\ttext",
    "multiple     spaces   here", "UPPER lower MiXeD", "numbers 3.14159 and 1,000,000", "«quotes» „and“ ‘these’",
    "zero\u200bwidth\u200djoiner", "right-to-left: مرحبا بالعالم", "hebrew שלום עולם", "ελληνικά κείμενα",
    "русский текст здесь", "thai ภาษาไทย", "devanagari हिन्दी", "control\x07char\x00here", "emoji-only 😀😃😄",
    "hyphen-ated words and under_scores", "it's don't won't y'all", "$100 €50 £20 ¥1000", "(parens) [brackets] {braces}",
]


def varied_strings():
    out = list(BASE)
    for text in BASE:
        out += [text.upper(), text.title(), f"  {text}  ", f"{text}? {text}!", text.replace(" ", "\u00a0")]
    for n in (1, 5, 40, 120):
        out.append(" ".join(["word"] * n))
    return out


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    if SHARED:
        return Path(SHARED) / "models" / "all-MiniLM-L6-v2" / "vocab.txt"
    folder = tmp_path_factory.mktemp("vocab")
    Tokenizer.train(varied_strings() * 3, vocab_size=400).save_pretrained(folder)
    return folder / "vocab.txt"


def test_parity_with_bert_tokenizer_fast(vocab_file):
    transformers = pytest.importorskip("transformers")
    texts = varied_strings()
    assert len(texts) >= 200
    ours = Tokenizer.from_vocab(vocab_file)
    ref = transformers.BertTokenizerFast(str(vocab_file), do_lower_case=True)
    for text in texts:
        assert ours._tok.encode(text).ids == ref(text)["input_ids"], repr(text)
    pairs = texts[1:] + texts[:1]
    enc = ours(texts, pairs, max_length=24)
    expected = ref(texts, pairs, max_length=24, truncation="longest_first", padding="longest", return_tensors="np")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert np.array_equal(getattr(enc, key), expected[key]), key


def test_tokenizer_json_round_trip(tmp_path, vocab_file):
    ours = Tokenizer.from_vocab(vocab_file)
    ours.save(tmp_path / "tokenizer.json")
    again = Tokenizer.from_pretrained(tmp_path)
    texts = varied_strings()
    assert np.array_equal(ours(texts).input_ids, again(texts).input_ids)


def test_truncation_is_reported():
    tok = Tokenizer.train(["one two three four five six seven eight nine ten"] * 5, vocab_size=100)
    enc = tok(["one two", "one two three four five six seven eight nine ten"], max_length=6)
    assert enc.truncated == [False, True] and enc.num_truncated == 1
    assert enc.input_ids.shape == (2, 6)
    assert enc.input_ids[1, -1] == tok.sep_id and enc.input_ids[1, 0] == tok.cls_id


def test_padding_to_longest_and_to_buckets():
    tok = Tokenizer.train(["one two three four five six seven eight nine ten"] * 5, vocab_size=100)
    texts = ["one", "one two three"]
    longest = tok(texts)
    assert longest.input_ids.shape == (2, 5)
    assert longest.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert (longest.input_ids[0, 3:] == tok.pad_id).all()
    bucketed = tok(texts, buckets=[4, 8, 16])
    assert bucketed.input_ids.shape == (2, 8)
    over = tok([" ".join(["one"] * 30)], buckets=[4, 8, 16])
    assert over.input_ids.shape == (1, 16) and over.truncated == [True]


def test_single_string_is_rejected():
    tok = Tokenizer.train(["hello world"], vocab_size=50)
    with pytest.raises(TypeError, match="list of strings"):
        tok("hello")


def test_one_loader_for_folders_tokenizer_json_and_vocab_txt(tmp_path, vocab_file):
    from edge_electra.errors import ConfigError
    from edge_electra.runtime.tokenizer import load_tokenizer
    texts = varied_strings()
    reference = Tokenizer.from_vocab(vocab_file)
    reference.save_pretrained(tmp_path / "both")            # tokenizer.json and vocab.txt
    (tmp_path / "vocab-only").mkdir()
    (tmp_path / "vocab-only" / "vocab.txt").write_text(Path(vocab_file).read_text())
    for source in (tmp_path / "both", tmp_path / "both" / "tokenizer.json", tmp_path / "vocab-only",
                   tmp_path / "vocab-only" / "vocab.txt"):
        loaded = load_tokenizer(source, max_length=32)
        assert loaded.max_length == 32, source
        assert np.array_equal(loaded(texts, max_length=32).input_ids, reference(texts, max_length=32).input_ids)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither tokenizer.json nor vocab.txt"):
        load_tokenizer(tmp_path / "empty")


def test_word_ids_count_whitespace_words_whatever_the_normalizer_drops():
    tok = Tokenizer.train(["turn on the lights, please"] * 5, vocab_size=60)
    text = "turn\x1con the\u200b lights, \ufeff please"
    encoded = tok([text])
    words = text.split()
    assert max(w for w in encoded.word_ids[0] if w is not None) == len(words) - 1
    assert tok.tokenize("\ufeff") == [] and len(tok.tokenize(text)) == len(encoded.word_ids[0]) - 2
