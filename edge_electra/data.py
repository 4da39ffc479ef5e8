"""Labelled utterances: JSONL, CSV and Hugging Face `datasets` folders, with label maps checked up front.

A row has `text`, a `label` (intent) and optionally `tags` (one BIO slot tag per whitespace word).
A dataset folder holds train/validation/test files and may hold labels.json
({"labels": [...], "tags": [...]}), as in ../shared/data and the built-in dataset.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from edge_electra.errors import DataError

SPLITS = ("train", "validation", "test")
OUT_OF_SCOPE = ("oos", "out_of_scope")


def oos_label(labels: list[str]) -> str | None:
    """The out-of-scope label among `labels` ("oos" or "out_of_scope"), or None."""
    return next((label for label in labels if label in OUT_OF_SCOPE), None)


def split_words(text: str) -> list[str]:
    """The words of a text: what slot tags are given for, one each, and what the tokenizer encodes."""
    return text.split()


@dataclass
class Example:
    text: str
    label: str | None = None
    tags: list[str] | None = None


@dataclass
class Dataset:
    examples: list[Example]
    labels: list[str] = field(default_factory=list)
    slot_labels: list[str] = field(default_factory=list)
    name: str = ""

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def texts(self) -> list[str]:
        return [e.text for e in self.examples]

    def label_ids(self) -> list[int]:
        index = {label: i for i, label in enumerate(self.labels)}
        return [index[e.label] for e in self.examples]

    @property
    def out_of_scope_label(self) -> str | None:
        return oos_label(self.labels)


def _row(raw: dict, where: str) -> Example:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: each row must be an object with a 'text' field (and a 'label'), got {raw!r:.80}")
    text = raw.get("text")
    if not isinstance(text, str):
        raise DataError(f"{where}: each row needs a string 'text' field, got {raw!r:.120}")
    label = raw.get("label", raw.get("intent"))
    tags = raw.get("tags")
    if isinstance(tags, str):
        tags = tags.split()
    if tags is not None and len(tags) != len(split_words(text)):
        raise DataError(f"{where}: {len(tags)} tags for {len(split_words(text))} words in {text!r:.80}; "
                        "give one BIO tag per whitespace-separated word")
    return Example(text, None if label is None else str(label), tags)


def read_examples(path: str | Path) -> list[Example]:
    """Rows from a .jsonl, .json (a list), .csv/.tsv file or a `datasets.save_to_disk` folder."""
    path = Path(path)
    if path.is_dir():
        return _read_hf_datasets(path)
    if not path.is_file():
        raise DataError(f"data file {path} not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = []
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(_row(json.loads(line), f"{path}:{n}"))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{n} is not valid JSON: {e}") from e
            return rows
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, list):
                raise DataError(f"{path}: expected a JSON list of rows")
            return [_row(r, f"{path}[{i}]") for i, r in enumerate(data)]
        if suffix in (".csv", ".tsv"):
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
                if not reader.fieldnames or "text" not in reader.fieldnames:
                    raise DataError(f"{path}: the header must name a 'text' column (has {reader.fieldnames})")
                return [_row({k: v for k, v in r.items() if v not in (None, "")}, f"{path}:{n}")
                        for n, r in enumerate(reader, 2)]
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text: {e}") from e
    raise DataError(f"{path}: unsupported data format {suffix!r}; use .jsonl, .json, .csv or .tsv")


HF_DATASET_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")


def _read_hf_datasets(folder: Path) -> list[Example]:
    if not any((folder / name).exists() for name in HF_DATASET_FILES):
        raise DataError(f"{folder} is a folder but not a Hugging Face datasets folder (it has no "
                        f"{' or '.join(HF_DATASET_FILES)}); pass a data file (.jsonl, .json, .csv or .tsv), "
                        "or a dataset folder with train.jsonl")
    try:
        import datasets
    except ImportError as e:
        raise DataError(f"{folder} is a folder; reading a Hugging Face datasets folder needs "
                        "`pip install datasets`") from e
    try:
        ds = datasets.load_from_disk(str(folder))
    except Exception as e:  # datasets raises FileNotFoundError or its own errors
        raise DataError(f"{folder} is not a Hugging Face datasets folder: {e}") from e
    if isinstance(ds, datasets.DatasetDict):
        raise DataError(f"{folder} holds several splits {list(ds)}; pass one of them, e.g. {folder}/train")
    names = ds.features["label"].names if "label" in ds.features and hasattr(ds.features["label"], "names") else None
    return [_row({**r, "label": names[r["label"]] if names else r.get("label")}, f"{folder}[{i}]")
            for i, r in enumerate(ds)]


def load(path: str | Path, labels: list[str] | None = None, slot_labels: list[str] | None = None,
         require_labels: bool = True) -> Dataset:
    """Read a data file and check its labels against `labels` (or derive the label set from it)."""
    path = Path(path)
    examples = read_examples(path)
    if not examples:
        raise DataError(f"{path} holds no rows; a dataset needs at least one labelled utterance")
    if require_labels:
        unlabelled = [i for i, e in enumerate(examples) if e.label is None]
        if unlabelled:
            raise DataError(f"{path}: {len(unlabelled)} row(s) have no 'label' (first: row {unlabelled[0] + 1}); "
                            "label every row, or pass the file as unlabelled text")
    found = sorted({e.label for e in examples if e.label is not None})
    if labels is None:
        labels = found
    else:
        unknown = sorted(set(found) - set(labels))
        if unknown:
            raise DataError(f"{path}: label(s) {unknown[:10]} are not in the model's label set "
                            f"({len(labels)} labels); fix the rows or retrain with these labels")
    found_tags = sorted({t for e in examples for t in (e.tags or [])})
    if slot_labels is None:
        slot_labels = (["O"] + [t for t in found_tags if t != "O"]) if found_tags else []
    else:
        unknown = sorted(set(found_tags) - set(slot_labels))
        if unknown:
            raise DataError(f"{path}: slot tag(s) {unknown[:10]} are not in the model's tag set")
    return Dataset(examples, list(labels), list(slot_labels), name=path.stem)


def load_folder(folder: str | Path) -> dict[str, Dataset]:
    """The splits of a dataset folder, sharing one label set (labels.json, or the train split's)."""
    folder = Path(folder)
    files = {s: folder / f"{s}.jsonl" for s in SPLITS if (folder / f"{s}.jsonl").exists()}
    if "train" not in files and "test" not in files:
        raise DataError(f"{folder} has no train.jsonl or test.jsonl")
    labels = slot_labels = None
    if (folder / "labels.json").exists():
        try:
            meta = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{folder / 'labels.json'} is not valid JSON: {e}") from e
        if not isinstance(meta, dict) or not all(isinstance(meta.get(k) or [], list) for k in ("labels", "tags")):
            raise DataError(f"{folder / 'labels.json'} must be an object like "
                            '{"labels": ["intent", ...], "tags": ["B-slot", ...]}')
        labels, slot_labels = meta.get("labels"), meta.get("tags")
        if slot_labels and "O" not in slot_labels:
            slot_labels = ["O", *slot_labels]
    splits = {}
    for split, file in files.items():
        splits[split] = load(file, labels, slot_labels)
        labels, slot_labels = splits[split].labels, splits[split].slot_labels
    return splits


def read_text_lines(paths: list[str | Path]):
    """Unlabelled text, one utterance a line (or the 'text' of each JSONL row), streamed; the 'text' column
    of a .csv, .tsv or .json data file."""
    for path in map(Path, paths):
        if not path.is_file():
            raise DataError(f"text file {path} not found")
        if path.suffix in (".csv", ".tsv", ".json"):
            yield from (e.text for e in read_examples(path))
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                if path.suffix == ".jsonl":
                    try:
                        line = json.loads(line).get("text", "")
                    except (json.JSONDecodeError, AttributeError):
                        raise DataError(f"{path}: a line is not a JSON object with 'text'") from None
                if line:
                    yield line
