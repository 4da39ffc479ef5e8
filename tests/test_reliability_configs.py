"""Bad data given to compile, quantize and finetune: refused up front, in one line that says how to fix it.

Through the command line as users run it (with -q, which hides progress but not errors): exit code 2 (bad
input), a single "Error: ..." line naming the file, no traceback, and nothing built or written first. The
calibration set smaller than --calibration-samples is test_quantize.py's; here it is the recipe's default
sample count that a small file cannot meet. Invalid target profiles are test_targets.py's.

Every refusal is counted in REFUSED; the last test checks the count against REFUSALS, which README.md's
reliability table quotes (tests/test_docs.py checks that).
"""
from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from edge_electra.train.checkpoint import save_pretrained  # noqa: E402
from edge_electra.cli import EXIT_BAD_INPUT, main  # noqa: E402
from edge_electra.build.export import ExportConfig, export_onnx  # noqa: E402

from conftest import INTENTS, tiny_model  # noqa: E402

ROWS = [{"text": t, "label": label} for label, ts in INTENTS.items() for t in ts]   # 12 good rows
REFUSED = [0]


def jsonl(rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


# name → (file name, content, what the message must say: the problem and its fix)
BAD_FILES = {
    "unknown label": ("unknown.jsonl", jsonl(ROWS + [{"text": "set an alarm for 7", "label": "alarm"}]),
                      r"label\(s\) \['alarm'\] are not in the model's label set \(4 labels\); fix the rows or "
                      r"retrain with these labels"),
    "missing label": ("unlabelled.jsonl", jsonl(ROWS + [{"text": "set an alarm for 7"}]),
                      r"1 row\(s\) have no 'label' \(first: row 13\); label every row"),
    "empty file": ("empty.jsonl", "", r"holds no rows; a dataset needs at least one labelled utterance"),
    "blank lines only": ("blank.jsonl", "\n  \n\n", r"holds no rows; a dataset needs at least one labelled utterance"),
    "row not an object": ("strings.jsonl", jsonl(ROWS + ['"set an alarm for 7"']),
                          r":13: each row must be an object with a 'text' field \(and a 'label'\), got "
                          r"'set an alarm for 7'"),
    "rows not objects (.json)": ("rows.json", json.dumps([["set an alarm", "alarm"]]),
                                 r"\[0\]: each row must be an object with a 'text' field"),
    "missing text": ("no-text.jsonl", jsonl(ROWS + [{"label": "oos"}]), r":13: each row needs a string 'text' field"),
    "broken JSON line": ("broken.jsonl", jsonl(ROWS) + '{"text": "set an alarm", "label": \n',
                         r":13 is not valid JSON"),
    "CSV without a text column": ("utterances.csv", "utterance,label\nset an alarm,alarm\n",
                                  r"the header must name a 'text' column \(has \['utterance', 'label'\]\)"),
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("configs")
    model, tokenizer = tiny_model()
    files = {name: root / file for name, (file, content, _) in BAD_FILES.items()}
    for name, (file, content, _) in BAD_FILES.items():
        files[name].write_text(content)
    (root / "good.jsonl").write_text(jsonl(ROWS))
    return {"root": root, "files": files, "good": root / "good.jsonl",
            "checkpoint": save_pretrained(model, root / "ckpt", tokenizer=tokenizer),
            "onnx": export_onnx(model, root / "fp32.onnx", ExportConfig(optimize=False)).path}


def compile_args(s, eval_data=None, calibration=None):
    return ["compile", str(s["checkpoint"]), "--target", "x86-avx2-cpu", "--out", str(s["root"] / "bundle"),
            "--precision", "fp32", "--calibration", str(calibration or s["good"])] + \
           (["--eval", str(eval_data)] if eval_data else [])


def quantize_args(s, eval_data=None, calibration=None, samples="8"):
    return ["quantize", str(s["onnx"]), "--checkpoint-or-tokenizer", str(s["checkpoint"]),
            "--eval", str(eval_data or s["good"]), "--calibration", str(calibration or s["good"]),
            "--out", str(s["root"] / "q.onnx")] + (["--calibration-samples", samples] if samples else [])


def finetune_args(s, data=None, validation=None, out="run"):
    return ["finetune", "--data", str(data or s["good"]), "--out", str(s["root"] / out), "--preset", "tiny",
            "--epochs", "1", "--max-steps", "1", "--device", "cpu", "--threads", "1", "--no-plot"] + \
           (["--validation", str(validation)] if validation else [])


def assert_refused_in_one_line(s, args, pattern, path):
    result = CliRunner().invoke(main, ["-q", *args])
    output = result.output
    assert result.exit_code == EXIT_BAD_INPUT and isinstance(result.exception, SystemExit), output
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("Error: ")]
    assert errors == [len(lines) - 1], output                      # one "Error:" line, and it is the last
    assert str(path) in lines[-1] and re.search(pattern, lines[-1]), lines[-1]
    # Refused before anything was built or written.
    assert not (s["root"] / "bundle").exists() and not (s["root"] / "q.onnx").exists()
    assert not (s["root"] / "run").exists()   # not even an empty run folder
    REFUSED[0] += 1


# (command, option the bad file is given as, bad file): which commands read which files
CASES = [
    ("compile", "--eval", "unknown label"), ("quantize", "--eval", "unknown label"),
    ("finetune", "--validation", "unknown label"),
    ("compile", "--eval", "missing label"), ("quantize", "--eval", "missing label"),
    ("finetune", "--data", "missing label"), ("finetune", "--validation", "missing label"),
    ("compile", "--eval", "empty file"), ("quantize", "--eval", "empty file"),
    ("quantize", "--calibration", "empty file"), ("finetune", "--data", "empty file"),
    ("finetune", "--validation", "empty file"), ("finetune", "--data", "blank lines only"),
    ("compile", "--eval", "row not an object"), ("quantize", "--eval", "row not an object"),
    ("quantize", "--calibration", "row not an object"), ("finetune", "--data", "row not an object"),
    ("finetune", "--data", "rows not objects (.json)"),
    ("compile", "--eval", "missing text"), ("finetune", "--data", "missing text"),
    ("quantize", "--calibration", "broken JSON line"), ("finetune", "--data", "broken JSON line"),
    ("finetune", "--data", "CSV without a text column"),
]


@pytest.mark.parametrize("command, option, bad", CASES, ids=[f"{c} {o} {b}" for c, o, b in CASES])
def test_bad_data_is_refused_up_front_in_one_line(setup, command, option, bad):
    path = setup["files"][bad]
    if command == "compile":
        args = compile_args(setup, eval_data=path) if option == "--eval" else compile_args(setup, calibration=path)
    elif command == "quantize":
        args = quantize_args(setup, eval_data=path) if option == "--eval" else quantize_args(setup, calibration=path)
    else:
        args = finetune_args(setup, data=path) if option == "--data" else finetune_args(setup, validation=path)
    assert_refused_in_one_line(setup, args, BAD_FILES[bad][2], path)


def test_empty_calibration_text_for_compile(setup):
    path = setup["files"]["empty file"]
    assert_refused_in_one_line(setup, compile_args(setup, calibration=path), "holds no text", path)


def test_calibration_file_smaller_than_the_recipes_default_sample_count(setup):
    # No --calibration-samples: the default recipe asks for 200, the file has 12.
    assert_refused_in_one_line(setup, quantize_args(setup, samples=None),
                               r"the calibration set has 12 examples but 200 were asked for; add more data, or ask "
                               r"for at most 12 samples \(num_samples / --calibration-samples\)", "")


def test_training_set_too_small_to_hold_out_validation(setup):
    one = setup["root"] / "one.jsonl"
    one.write_text(jsonl(ROWS[:1]))
    assert_refused_in_one_line(setup, finetune_args(setup, data=one),
                               r"holds 1 row\(s\): too few to hold out a validation split and train on the rest; "
                               r"add rows, or pass --validation", one)
    # With a validation file, one row is enough to train on.
    validation = setup["root"] / "validation.jsonl"
    validation.write_text(jsonl(ROWS[1:3]))   # the same intent as the one training row
    result = CliRunner().invoke(main, finetune_args(setup, data=one, validation=validation, out="trained"))
    assert result.exit_code == 0, result.output


def test_dataset_folder_problems(setup):
    folder = setup["root"] / "folder"
    folder.mkdir()
    (folder / "test.jsonl").write_text(jsonl(ROWS))   # no train.jsonl: read as a file-less folder
    assert_refused_in_one_line(setup, finetune_args(setup, data=folder),
                               r"is a folder but not a Hugging Face datasets folder .*pass a data file .*or a dataset "
                               r"folder with train.jsonl", folder)
    (folder / "train.jsonl").write_text(jsonl(ROWS))
    for labels_json, says in [("{not json", "is not valid JSON"),
                              ('["lights_on", "oos"]', r'must be an object like \{"labels": \[')]:
        (folder / "labels.json").write_text(labels_json)
        assert_refused_in_one_line(setup, finetune_args(setup, data=folder), says, folder / "labels.json")


# How many bad inputs each test after the parametrized one refuses.
FURTHER_REFUSALS = {"test_empty_calibration_text_for_compile": 1,
                    "test_calibration_file_smaller_than_the_recipes_default_sample_count": 1,
                    "test_training_set_too_small_to_hold_out_validation": 1, "test_dataset_folder_problems": 3}
REFUSALS = len(CASES) + sum(FURTHER_REFUSALS.values())


def test_refusal_counts_add_up():
    """Runs last in this file: every bad input above was refused."""
    assert set(FURTHER_REFUSALS) <= set(globals())
    assert REFUSED[0] == REFUSALS, (REFUSED, REFUSALS)
    print(f"\nRELIABILITY configs: {REFUSED[0]} bad inputs refused in one line")
