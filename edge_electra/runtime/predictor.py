"""Predictor: one API over every backend. Text in, label (and slot tags) out; no torch.

    p = Predictor.load("build/bundle")
    p("turn on the lights")          # Prediction(label=..., score=..., slots=...)
    p.predict_batch(texts)           # list[Prediction]
    p.predict_proba(texts)           # (batch, labels) probabilities

Thread safety: one Predictor may be shared by threads. Tokenization and the runner call are each
serialised with a lock (tokenizers' truncation setting and some runtimes' requests are not re-entrant);
input buffers are per thread, so callers never see each other's data.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Sequence

import numpy as np

from edge_electra.backends import backend_library
from edge_electra.atomic import folder_lock
from edge_electra.data import oos_label, split_words
from edge_electra.errors import BundleError, ConfigError, DataError, EdgeElectraError
from edge_electra.runtime.bundle import MANIFEST, THREADS, Bundle, check_count
from edge_electra.runtime.io_spec import TOKEN_IDS
from edge_electra.runtime.tokenizer import word_starts

CLASSIFIER_TASKS = ("sequence", "token", "joint")


@dataclass
class Prediction:
    """One utterance's result.

    label/score/index: the intent, its probability and its position in the bundle's labels. Below the
    out-of-scope threshold the label becomes the bundle's OOS label ("oos", or "out_of_scope" when it has
    none; index -1 then) and `abstained` is set. Token-only models have no intent: label None, index -1,
    score the least confident word's tag probability.
    truncated: the utterance was longer than the runtime takes and was cut.
    slots: (whitespace word, BIO tag) for token and joint models; tag None for words cut off by truncation
    and for words the tokenizer reduces to nothing (zero-width or control characters only).
    probabilities: every label's probability, when asked for (predict_batch(..., probabilities=True)).
    """
    label: str | None
    score: float
    index: int
    truncated: bool = False
    abstained: bool = False
    slots: list[tuple[str, str | None]] | None = None
    probabilities: np.ndarray | None = None


@dataclass
class Shapes:
    """What the runtime accepts: sequence padding and the largest batch."""
    max_length: int
    min_length: int
    buckets: list[int] | None
    max_batch: int | None
    fixed_batch: int | None


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z, dtype=np.float32)
    return e / e.sum(axis=-1, keepdims=True)


def check_backend_version(bundle: Bundle) -> None:
    """A bundle runs only on the major version of the runtime library that built it."""
    library = backend_library(bundle.manifest.backend)
    built = bundle.manifest.versions.get(library or "")
    try:
        installed = metadata.version(library) if library else None
    except metadata.PackageNotFoundError:
        installed = None  # the backend's own load() says which extra to install
    if built and installed and built.split(".")[0] != installed.split(".")[0]:
        raise BundleError(
            f"{bundle.path} was built with {library} {built} but this machine has {library} {installed}; "
            f"install {library}=={built.split('.')[0]}.* here, or recompile the bundle with {library} {installed}")


def shapes_of(bundle: Bundle) -> Shapes:
    m = bundle.manifest
    max_length = int(m.tokenizer.get("max_length", 128))
    buckets = sorted(int(b) for b in m.tokenizer.get("buckets") or []) or None
    min_length, fixed_batch, batch_limit = 1, None, None
    spec = next((t for t in m.inputs if t.name == TOKEN_IDS), m.inputs[0] if m.inputs else None)
    if spec is not None and len(spec.shape) == 2:
        batch_dim, seq_dim = spec.shape
        if isinstance(seq_dim, int):
            buckets = [seq_dim]
        elif isinstance(seq_dim, list) and len(seq_dim) == 2:
            min_length, max_length = max(1, int(seq_dim[0])), min(max_length, int(seq_dim[1]))
        if isinstance(batch_dim, int):
            fixed_batch = batch_limit = batch_dim
        elif isinstance(batch_dim, list) and len(batch_dim) == 2:
            batch_limit = int(batch_dim[1])
    if buckets:
        max_length = min(max_length, buckets[-1])
    max_batch = m.runtime.get("max_batch") or batch_limit
    return Shapes(max_length, min_length, buckets, int(max_batch) if max_batch else None, fixed_batch)


class Predictor:
    def __init__(self, bundle: Bundle, runner, tokenizer, oos_threshold: float | None = None):
        m = bundle.manifest
        if m.task not in CLASSIFIER_TASKS:
            raise BundleError(f"{bundle.path} holds a {m.task!r} model; the Predictor serves "
                              f"{list(CLASSIFIER_TASKS)} models only")
        self.bundle, self.runner, self.tokenizer = bundle, runner, tokenizer
        self.task = m.task
        self.labels = list(m.labels)
        self.tags = list(m.slot_labels or (m.labels if m.task == "token" else []))
        self.shapes = shapes_of(bundle)
        self.oos_threshold = oos_threshold if oos_threshold is not None else m.runtime.get("oos_threshold")
        self.oos_label = oos_label(self.labels) or "out_of_scope"
        # Outputs in the model's order (logits[, slot_logits]), named as the manifest names them.
        outputs = [t.name for t in m.outputs] or list(runner.output_names)
        unknown = [name for name in outputs if name not in runner.output_names]
        if unknown:
            raise BundleError(f"{bundle.path / MANIFEST} names output(s) {unknown} but the model's outputs are "
                              f"{list(runner.output_names)}; the manifest is damaged or from another build: "
                              "recompile the bundle")
        self.intent_output = outputs[0]
        self.slot_output = outputs[-1] if m.task in ("token", "joint") else None
        self._check_label_counts()
        self._run_lock = threading.Lock()
        self._tokenize_lock = threading.Lock()
        self._local = threading.local()

    @classmethod
    def load(cls, bundle: str | Path | Bundle, threads: int | None = None, oos_threshold: float | None = None,
             **runtime_options) -> "Predictor":
        """Open a bundle on its backend. `threads` caps the runtime's intra-op threads.

        Opened from a path, the bundle's folder_lock is held shared throughout, so the backend reads the model
        files of the bundle that was verified, not of one a writer swapped in meanwhile (see Bundle.load)."""
        if threads is not None:
            check_count(threads, THREADS, "threads", ConfigError)
            runtime_options["threads"] = threads
        if isinstance(bundle, Bundle):
            return cls._open(bundle, oos_threshold, runtime_options)
        with folder_lock(Path(bundle).parent, shared=True):
            return cls._open(Bundle.load(bundle), oos_threshold, runtime_options)

    @classmethod
    def _open(cls, bundle: Bundle, oos_threshold: float | None, runtime_options: dict) -> "Predictor":
        from edge_electra.backends import get_backend
        check_backend_version(bundle)
        backend = get_backend(bundle.manifest.backend)
        ok, why = backend.available()
        if not ok:
            raise BundleError(f"{bundle.path} needs the {backend.name} backend, which cannot run here: {why}")
        try:
            runner = backend.load(bundle, **runtime_options)
        except EdgeElectraError:
            raise
        except Exception as e:  # the runtime's own error (a damaged manifest's settings): say which bundle
            lines = [line for line in str(e).splitlines() if line.strip() and not line.startswith("Exception from ")]
            raise BundleError(f"{bundle.path} could not be opened by {backend.name} ({type(e).__name__}: "
                              f"{lines[-1].strip() if lines else 'no details'}); "
                              f"check the runtime settings in {MANIFEST}, or recompile the bundle") from e
        return cls(bundle, runner, bundle.tokenizer(), oos_threshold)

    # --- checks -------------------------------------------------------------------------------
    def _check_label_counts(self) -> None:
        for spec in self.bundle.manifest.outputs:
            expected = self._expected_width(spec.name)
            last = spec.shape[-1] if spec.shape else None
            if expected is not None and isinstance(last, int) and last != expected:
                self._label_mismatch(spec.name, last)

    def _expected_width(self, output: str) -> int | None:
        if output == self.slot_output:
            return len(self.tags)
        if output == self.intent_output and self.task != "token":
            return len(self.labels)
        return None

    def _label_mismatch(self, output: str, width: int):
        raise BundleError(f"{self.bundle.path / MANIFEST} lists {self._expected_width(output)} "
                          f"{'slot tags' if output == self.slot_output else 'labels'} but the model's "
                          f"{output!r} output has {width}; the manifest and model files are from different "
                          "builds: recompile the bundle")

    @staticmethod
    def _check_texts(texts) -> list[str]:
        if isinstance(texts, (str, bytes)):
            raise DataError("predict_batch takes a list of strings; call the Predictor itself for one text")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                hint = " (decode it first: text.decode('utf-8'))" if isinstance(text, (bytes, bytearray)) else ""
                raise DataError(f"input {i} is {type(text).__name__}, not str{hint}")
            if not text.strip():
                raise DataError(f"input {i} is empty or whitespace only; pass some text to classify")
        return texts

    # --- encoding -----------------------------------------------------------------------------
    def encode(self, texts: Sequence[str]):
        """Tokenize as the runtime expects: to its buckets or length range, truncating long inputs."""
        s = self.shapes
        with self._tokenize_lock:
            return self.tokenizer(list(texts), max_length=s.max_length, buckets=s.buckets)

    def feeds(self, encoded) -> dict[str, np.ndarray]:
        """The runner's inputs in this thread's reused buffers, padded to the runtime's batch and length."""
        rows, width = encoded.input_ids.shape
        batch = self.shapes.fixed_batch or rows
        width = max(width, self.shapes.min_length)
        buffers = self._buffers(batch, width)
        arrays = encoded.arrays()
        for name, buffer in buffers.items():
            buffer.fill(self.tokenizer.pad_id if name == TOKEN_IDS else 0)
            source = arrays[name]
            buffer[:rows, :source.shape[1]] = source
        return buffers

    def _buffers(self, batch: int, width: int) -> dict[str, np.ndarray]:
        cache = self._local.__dict__.setdefault("buffers", {})
        key = (batch, width)
        if key not in cache:
            cache[key] = {name: np.empty((batch, width), dtype=np.int64) for name in self.runner.input_names}
        return cache[key]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._run_lock:
            outputs = self.runner.run(feeds)
        for name in (self.intent_output, self.slot_output):
            expected = self._expected_width(name) if name else None
            if expected is not None and outputs[name].shape[-1] != expected:
                self._label_mismatch(name, outputs[name].shape[-1])
        return outputs

    # --- prediction ---------------------------------------------------------------------------
    def __call__(self, text: str) -> Prediction:
        if not isinstance(text, str):
            self._check_texts([text])
        return self.predict_batch([text])[0]

    def predict_batch(self, texts: Sequence[str], probabilities: bool = False) -> list[Prediction]:
        texts = self._check_texts(texts)
        predictions = []
        for start in range(0, len(texts), self.shapes.max_batch or max(1, len(texts))):
            chunk = texts[start:start + (self.shapes.max_batch or len(texts))]
            predictions += self._predict_chunk(chunk, probabilities, start)
        return predictions

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if self.task == "token":
            raise DataError("a token-tagging model has no utterance labels; use predict_batch for its slot tags")
        return np.stack([p.probabilities for p in self.predict_batch(texts, probabilities=True)]) \
            if texts else np.zeros((0, len(self.labels)), np.float32)

    def _predict_chunk(self, texts: list[str], probabilities: bool, first: int) -> list[Prediction]:
        encoded = self.encode(texts)
        for row, word_ids in enumerate(encoded.word_ids):
            if all(w is None for w in word_ids):
                raise DataError(f"input {first + row} is empty once normalised (it holds only control, zero-width "
                                "or other characters the tokenizer drops); pass some text to classify")
        outputs = self.run(self.feeds(encoded))
        rows = len(texts)
        slot_probs = softmax(outputs[self.slot_output][:rows]) if self.slot_output else None
        intent_probs = softmax(outputs[self.intent_output][:rows]) if self.task != "token" else None
        predictions = []
        for row, text in enumerate(texts):
            slots = self._slots(text, encoded.word_ids[row], slot_probs[row]) if slot_probs is not None else None
            if intent_probs is None:
                scores = [s for _, _, s in slots if s is not None]
                prediction = Prediction(None, float(min(scores, default=0.0)), -1)
            else:
                prediction = self._intent(intent_probs[row])
            prediction.truncated = encoded.truncated[row]
            prediction.slots = [(w, t) for w, t, _ in slots] if slots is not None else None
            if probabilities and intent_probs is not None:
                prediction.probabilities = intent_probs[row].copy()
            predictions.append(prediction)
        return predictions

    def _intent(self, probs: np.ndarray) -> Prediction:
        index = int(probs.argmax())
        score = float(probs[index])
        if self.oos_threshold is not None and score < self.oos_threshold:
            oos_index = self.labels.index(self.oos_label) if self.oos_label in self.labels else -1
            return Prediction(self.oos_label, score, oos_index, abstained=True)
        return Prediction(self.labels[index], score, index)

    # --- slot tags ---------------------------------------------------------------------------------
    def _slots(self, text: str, word_ids: list[int | None], probs: np.ndarray):
        """(word, tag, score) per whitespace word, read at the word's first piece (see word_starts)."""
        words = split_words(text)
        result = []
        for word, position in zip(words, word_starts(word_ids, len(words))):
            if position is None:
                result.append((word, None, None))
            else:
                tag = int(probs[position].argmax())
                result.append((word, self.tags[tag], float(probs[position, tag])))
        return result
