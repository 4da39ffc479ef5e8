"""Training killed with SIGKILL at an arbitrary moment, then restarted: the losses after the restart are those
of a run that was never interrupted (CPU, one thread, fixed seeds).

Both commands run as users run them (`python -m edge_electra.cli ...`). The kill lands after the first
checkpoint, while the process is mid-way through later steps, some of which it has already logged:
the restart must drop those rows, resume at the checkpoint and log the same numbers again.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_electra.tools import builtin_data  # noqa: E402
from edge_electra.runtime.tokenizer import Tokenizer  # noqa: E402
from edge_electra.train import state  # noqa: E402
from edge_electra.train.options import TRAINED_TOKENIZER  # noqa: E402

STEPS = 150
EVERY = 10


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_electra.cli", *args], capture_output=True, text=True,
                          timeout=300)


def kill_after_first_checkpoint(args: list[str], out: Path) -> int:
    """Start the command, SIGKILL it once a checkpoint exists and it has logged steps past it; the step saved."""
    proc = subprocess.Popen([sys.executable, "-m", "edge_electra.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        saved = state.load_state(out) if (out / state.STATE_FILE).exists() else None
        if saved and max(logged_steps(out), default=0) > saved["step"]:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read().decode()[-1500:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = state.load_state(out)
    assert saved is not None and 0 < saved["step"] < STEPS
    assert max(logged_steps(out)) > saved["step"]   # steps logged after the checkpoint, to be dropped on resume
    return saved["step"]


def logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]


def losses(out: Path, keys: tuple[str, ...]) -> list[tuple]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [tuple(r[k] for k in ("step", *keys)) for r in rows if "loss" in r]


def check_resume(args_for, keys: tuple[str, ...], tmp_path: Path) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = run(args_for(straight))
    assert done.returncode == 0, done.stderr[-2000:]
    saved_step = kill_after_first_checkpoint(args_for(killed), killed)
    resumed = run(args_for(killed))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((killed / "run.json").read_text())["resumed_at_step"] == saved_step   # resumed, not restarted
    expected, got = losses(straight, keys), losses(killed, keys)
    assert len(expected) == STEPS and got == expected


def test_killed_pretrain_resumes_with_identical_losses(tmp_path):
    rng = np.random.default_rng(0)
    words = "turn on the lights play some jazz what is the weather in paris set a timer for ten minutes".split()
    lines = [" ".join(rng.choice(words, rng.integers(3, 12))) for _ in range(400)]
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n")
    Tokenizer.train(lines, vocab_size=120).save_pretrained(tmp_path / "tok")
    check_resume(lambda out: ["pretrain", str(tmp_path / "corpus.txt"), "--out", str(out), "--preset", "tiny",
                              "--tokenizer", str(tmp_path / "tok"), "--seq-len", "32", "--batch-size", "4",
                              "--steps", str(STEPS), "--warmup-steps", "5", "--save-every", str(EVERY),
                              "--log-every", "1", "--device", "cpu", "--threads", "1", "--no-plot"],
                 ("loss", "mlm", "rtd"), tmp_path)


def finetune_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune", "--data", str(data), "--out", str(out), "--preset", "tiny", "--max-length", "16",
            "--batch-size", "16", "--epochs", "3", "--max-steps", str(STEPS), "--save-every", str(EVERY),
            "--eval-every", "1000", "--log-every", "1", "--patience", "0", "--device", "cpu", "--threads", "1",
            "--no-plot", *extra]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("builtin")
    builtin_data.write(folder / "data")
    Tokenizer.train(builtin_data.splits()["train"].texts, vocab_size=2000).save_pretrained(folder / "tok")
    return folder


def test_killed_finetune_resumes_with_identical_losses(data, tmp_path):
    check_resume(lambda out: finetune_args(data / "data", out, "--tokenizer", str(data / "tok")), ("loss",), tmp_path)


def test_resumed_finetune_keeps_the_vocabulary_it_learnt(data, tmp_path):
    """Without --tokenizer a vocabulary is learnt from the data, differently in each process: the resumed
    run must reuse the one its checkpoint was trained with, not learn another."""
    out = tmp_path / "run"
    kill_after_first_checkpoint(finetune_args(data / "data", out), out)
    learnt = (out / TRAINED_TOKENIZER / "vocab.txt").read_text()
    resumed = run(finetune_args(data / "data", out))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (out / "best" / "vocab.txt").read_text() == learnt
