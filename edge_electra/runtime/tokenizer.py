"""BERT-uncased WordPiece tokenization through `tokenizers`, with padding to the longest item or to buckets.

Words are whitespace-separated (`split_words`), the unit slot tags are given for. Texts are encoded as those
words (pre-tokenized), so the word ids of an encoding index them directly, whatever the normalizer drops:
`word_starts` is the one word/piece alignment that training and the Predictor share.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from edge_electra.data import split_words
from edge_electra.errors import ConfigError, DataError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass
class Encoded:
    """A padded batch, int64 arrays of shape (batch, seq), ready for any runtime."""
    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    truncated: list[bool]
    # Per row and position: the index of the word (in split_words of the row's first text) the piece
    # belongs to; None for special tokens and for the pieces of a paired text.
    word_ids: list[list[int | None]]

    @property
    def num_truncated(self) -> int:
        return sum(self.truncated)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "token_type_ids": self.token_type_ids}


def word_starts(word_ids: Sequence[int | None], count: int) -> list[int | None]:
    """The position of each of `count` words' first piece in one encoding; None for a word with no piece
    (one the normalizer reduced to nothing, or one cut off by truncation)."""
    starts: list[int | None] = [None] * count
    for position, word in enumerate(word_ids):
        if word is not None and word < count and starts[word] is None:
            starts[word] = position
    return starts


def load_tokenizer(source: str | Path, max_length: int = 128) -> "Tokenizer":
    """A tokenizer from a folder (its tokenizer.json, else its vocab.txt), a tokenizer.json, or a vocab.txt."""
    path = Path(source)
    if path.is_dir():
        if (path / "tokenizer.json").exists():
            path = path / "tokenizer.json"
        elif (path / "vocab.txt").exists():
            path = path / "vocab.txt"
        else:
            raise ConfigError(f"{source} has neither tokenizer.json nor vocab.txt")
    if path.suffix == ".json":
        return Tokenizer.from_file(path, max_length)
    return Tokenizer.from_vocab(path, max_length=max_length)


def _bert_pipeline(tok: HFTokenizer, lowercase: bool) -> HFTokenizer:
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _add_post_processor(tok: HFTokenizer) -> HFTokenizer:
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if cls is None or sep is None:
        raise ConfigError("the vocabulary lacks [CLS] or [SEP]; it is not a BERT-style WordPiece vocabulary")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


def _why_not_text(texts) -> str:
    """Which input `tokenizers` refused: a non-str, or a str with a lone surrogate (not encodable as UTF-8)."""
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            hint = " (decode it first: text.decode('utf-8'))" if isinstance(text, (bytes, bytearray)) else ""
            return f"input {i} is {type(text).__name__}, not str{hint}"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            return (f"input {i} holds {text[e.start]!r} at position {e.start}, a lone surrogate that is not valid "
                    "Unicode text; decode the source with errors='replace' or drop such characters")
    return "the tokenizer could not encode the inputs; pass a list of str"


class Tokenizer:
    """WordPiece tokenizer with BERT's normalization, [CLS]/[SEP] framing and padding."""

    def __init__(self, tokenizer: HFTokenizer, max_length: int = 128):
        self._tok = tokenizer
        self._tok.no_padding()
        self._tok.no_truncation()
        self.max_length = max_length
        self.pad_id = self._id("[PAD]")
        self.mask_id = self._id("[MASK]")
        self.cls_id = self._id("[CLS]")
        self.sep_id = self._id("[SEP]")
        self.unk_id = self._id("[UNK]")

    def _id(self, token: str) -> int:
        i = self._tok.token_to_id(token)
        if i is None:
            raise ConfigError(f"the vocabulary lacks the special token {token}")
        return i

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_vocab(cls, vocab_file: str | Path, lowercase: bool = True, max_length: int = 128) -> "Tokenizer":
        vocab_file = Path(vocab_file)
        if not vocab_file.is_file():
            raise ConfigError(f"vocabulary file {vocab_file} not found")
        model = models.WordPiece.from_file(str(vocab_file), unk_token="[UNK]", max_input_chars_per_word=100)
        return cls(_add_post_processor(_bert_pipeline(HFTokenizer(model), lowercase)), max_length)

    @classmethod
    def from_file(cls, tokenizer_json: str | Path, max_length: int = 128) -> "Tokenizer":
        try:
            return cls(HFTokenizer.from_file(str(tokenizer_json)), max_length)
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise ConfigError(f"{tokenizer_json} is not a readable tokenizer.json: {e}") from e

    @classmethod
    def from_pretrained(cls, folder: str | Path, max_length: int = 128) -> "Tokenizer":
        """From a folder holding tokenizer.json or vocab.txt (a Hugging Face checkpoint, a bundle)."""
        if not Path(folder).is_dir():
            raise ConfigError(f"{folder} is not a folder with tokenizer.json or vocab.txt")
        return load_tokenizer(folder, max_length)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8000, max_length: int = 128) -> "Tokenizer":
        """Learn a BERT-style uncased WordPiece vocabulary from a corpus (for models trained from scratch)."""
        tok = _bert_pipeline(HFTokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100)), True)
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                            continuing_subword_prefix="##", show_progress=False)
        tok.train_from_iterator(texts, trainer)
        return cls(_add_post_processor(tok), max_length)

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path))

    def save_pretrained(self, folder: str | Path) -> None:
        """tokenizer.json plus vocab.txt, so Hugging Face tokenizers load it too."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.save(folder / "tokenizer.json")
        vocab = sorted(self._tok.get_vocab().items(), key=lambda kv: kv[1])
        (folder / "vocab.txt").write_text("".join(token + "\n" for token, _ in vocab))

    # --- encoding -----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def tokenize(self, text: str) -> list[str]:
        return self._tok.encode(split_words(text), is_pretokenized=True, add_special_tokens=False).tokens

    def __call__(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
                 max_length: int | None = None, buckets: Sequence[int] | None = None) -> Encoded:
        """Encode a batch. Pads to the longest item, or to the smallest bucket that holds it.

        Items longer than `max_length` (or the largest bucket) are truncated and flagged.
        """
        if isinstance(texts, str):
            raise TypeError("pass a list of strings; wrap a single text as [text]")
        limit = min(max_length or self.max_length, max(buckets) if buckets else 1 << 30)
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs")
        if not all(isinstance(t, str) for t in [*texts, *(pairs or [])]):
            raise DataError(_why_not_text([*texts, *(pairs or [])]))
        words = [split_words(t) for t in texts]
        self._tok.enable_truncation(limit, strategy="longest_first")
        try:
            inputs = list(zip(words, map(split_words, pairs))) if pairs is not None else words
            encodings = self._tok.encode_batch(inputs, is_pretokenized=True)
        except TypeError as e:  # `tokenizers` says only "PreTokenizedEncodeInput must be Union[...]"
            raise DataError(_why_not_text([*texts, *(pairs or [])])) from e
        finally:
            self._tok.no_truncation()
        longest = max((len(e.ids) for e in encodings), default=0)
        width = next((b for b in sorted(buckets) if b >= longest), max(buckets)) if buckets else longest
        batch = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros_like(batch)
        types = np.zeros_like(batch)
        for row, e in enumerate(encodings):
            batch[row, :len(e.ids)] = e.ids
            mask[row, :len(e.ids)] = 1
            types[row, :len(e.ids)] = e.type_ids
        word_ids = [e.word_ids for e in encodings]
        if pairs is not None:
            word_ids = [[w if t == 0 else None for w, t in zip(ids, e.type_ids)]
                        for ids, e in zip(word_ids, encodings)]
        return Encoded(batch, mask, types, [bool(e.overflowing) for e in encodings], word_ids)

    def settings(self) -> dict:
        return {"max_length": self.max_length, "vocab_size": self.vocab_size, "pad_id": self.pad_id,
                "cls_id": self.cls_id, "sep_id": self.sep_id, "mask_id": self.mask_id}
