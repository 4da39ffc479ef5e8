"""Interrupted work: `edge-electra compile` and `edge-electra quantize` SIGKILLed at a spread of moments.

Each command runs as its own process, `edge_electra.cli.main(argv)` as `python -m edge_electra.cli` runs it,
forked from a server that has already imported torch (3 s of a 7 s compile here, and 24 kills' worth of it
would not fit the time this file may take). So the kill delays, fractions of one measured full run, land in
the command's own work rather than in `import torch`. One more kill per scenario is timed to the output's
staging moment: its temporary folder (compile) or file (quantize) appearing beside --out.

Each moment is tried twice: with nothing at --out (afterwards --out is absent or a complete output, never a
partial one) and with a previous good output there (afterwards it still loads and verifies, byte for byte
the old one, unless the kill came after the new one was in place, which is then complete). Temporaries
beside --out, and compile's work folder in $TMPDIR, are allowed only until the next run, which must succeed
and sweep them (atomic.recover for bundle folders, atomic.sweep_files for single files, atomic.sweep_dead
for compile's work folders). Every kill survived is counted in KILLS; the last
test checks and prints the counts. README.md's reliability table quotes GUARANTEED_KILLS and STAGING_KILLS
(tests/test_docs.py checks that): the staging moment lasts milliseconds, and polling on a loaded machine
can miss it, so only the timed kills are guaranteed.
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from edge_electra.runtime.bundle import MANIFEST, Bundle  # noqa: E402
from edge_electra.train.checkpoint import save_pretrained  # noqa: E402
from edge_electra.cli import main  # noqa: E402
from edge_electra.build.compile import WORKDIR_PREFIX, compile_bundle  # noqa: E402
from edge_electra.build.export import ExportConfig, export_onnx  # noqa: E402
from edge_electra.runtime.predictor import Predictor  # noqa: E402

from conftest import LABELS, TEXTS, tiny_model, write_dataset  # noqa: E402

FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)
SCENARIOS = ("no previous output", "previous output")
COMMANDS = ("compile", "quantize")
GUARANTEED_KILLS = len(COMMANDS) * len(SCENARIOS) * len(FRACTIONS)
STAGING_KILLS = len(COMMANDS) * len(SCENARIOS)   # tried, one per command and scenario, but can be missed
KILLS: collections.Counter = collections.Counter()
MISSED: collections.Counter = collections.Counter()
PHASES: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

# A fork server: imports the slow modules once (single-threaded: no BLAS or ORT thread pools yet), then
# for each request forks a child that runs `edge_electra.cli.main(argv)` with its output in a log file.
# It reports each child's pid, and its exit status once it has reaped it.
FORK_SERVER = """
import json, os, sys, traceback
import torch, torch.onnx, onnx
import edge_electra.cli, edge_electra.build.compile, edge_electra.build.quantize.cli, edge_electra.build.export
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        print(json.dumps({"error": f"{threads} threads before fork"}), flush=True)
        continue
    pid = os.fork()
    if pid == 0:
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(0)
        code = 0
        try:
            edge_electra.cli.main(request["argv"], prog_name="edge-electra")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        except BaseException:
            traceback.print_exc()
            code = 1
        print("DONE", flush=True)
        os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"pid": pid, "code": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class ForkServer:
    """Command processes without the 3 s `import torch` each: forked from one that did the imports."""

    def __init__(self, folder: Path):
        self.folder, self.count = folder, 0
        (folder / "tmp").mkdir()
        env = {**os.environ, "TMPDIR": str(folder / "tmp"), "PYTHONUNBUFFERED": "1", "OPENBLAS_NUM_THREADS": "1",
               "EDGE_ELECTRA_CACHE": str(folder / "cache")}
        self.proc = subprocess.Popen([sys.executable, "-c", FORK_SERVER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=folder, env=env)
        assert self.reply() == {"ready": True}

    def reply(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, "the fork server died"
        return json.loads(line)

    def start(self, argv: list[str]) -> tuple[int, Path, float]:
        """Run `argv` in a new child: its pid, its log and the time it started."""
        self.count += 1
        log = self.folder / f"run{self.count}.log"
        log.write_text("")
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        started = time.monotonic()
        answer = self.reply()
        assert "pid" in answer, answer
        return answer["pid"], log, started

    def wait(self, pid: int) -> int:
        """The child's exit code (negative: the signal that ended it), once the server has reaped it."""
        answer = self.reply()
        assert answer["pid"] == pid, answer
        return answer["code"]

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:   # a child left running by a failed test: the server waits on it
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    forks = ForkServer(tmp_path_factory.mktemp("forks"))
    yield forks
    forks.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny checkpoint, its FP32 ONNX export, calibration text and a labelled eval file."""
    root = tmp_path_factory.mktemp("kill-inputs")
    model, tokenizer = tiny_model()
    checkpoint = save_pretrained(model, root / "ckpt", tokenizer=tokenizer)
    onnx_path = export_onnx(model, root / "fp32.onnx", ExportConfig(optimize=False)).path
    calibration = root / "calibration.txt"
    calibration.write_text("\n".join(TEXTS * 2) + "\n")
    return {"checkpoint": checkpoint, "onnx": onnx_path, "calibration": calibration,
            "eval": write_dataset(root / "eval.jsonl")}


def run_until_done(server: ForkServer, argv: list[str]) -> float:
    """One full run: its duration in seconds."""
    pid, log, start = server.start(argv)
    code = server.wait(pid)
    took = time.monotonic() - start
    assert code == 0, log.read_text()
    return took


def measure(server: ForkServer, argv: list[str]) -> float:
    """The quicker of two full runs (the first also warms the page cache)."""
    return min(run_until_done(server, argv) for _ in range(2))


def run_and_kill(server: ForkServer, argv: list[str], when) -> tuple[bool, str]:
    """Start `argv` and SIGKILL it as soon as `when(seconds since start, log path)` holds.

    Returns whether it was killed (False: it finished first) and its output up to then."""
    pid, log, start = server.start(argv)
    while Path(f"/proc/{pid}").exists() and "DONE" not in log.read_text():
        assert time.monotonic() - start < 120, log.read_text()
        if when(time.monotonic() - start, log):
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    code = server.wait(pid)
    return code == -signal.SIGKILL, log.read_text()


def leftovers(out: Path) -> list[str]:
    if not out.parent.is_dir():
        return []
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")
                  or p.name.startswith(f"..{out.name}."))


def phase(out: Path, previous: bytes | None, read) -> str:
    """Where a killed run was, judged by what it left: its staging beside --out, its new output, or neither."""
    if leftovers(out):
        return "staging"
    return "written" if out.exists() and read(out) != previous else "before staging"


def kill_at(server: ForkServer, argv: list[str], when, reset) -> tuple[bool, str]:
    """`run_and_kill` after `reset()` sets --out up; a run that ends before its moment (this machine is shared,
    so a run can beat the measured one) is tried again with its delay 40% shorter, four times at most."""
    for attempt in range(5):
        reset()
        killed, log = run_and_kill(server, argv, lambda t, log: when(t / 0.6 ** attempt, log))
        if killed:
            break
    return killed, log


def kill_moments(duration: float, staging) -> list[tuple[str, object]]:
    moments = [(f"{int(f * 100)}%", lambda t, log, d=f * duration: t >= d) for f in FRACTIONS]
    return moments + [("staging", staging)]


# ---- compile ---------------------------------------------------------------------------------------
def compile_argv(inputs, out: Path) -> list[str]:
    return ["compile", str(inputs["checkpoint"]), "--target", "x86-avx2-cpu", "--out", str(out),
            "--precision", "fp32", "--calibration", str(inputs["calibration"])]


def check_bundle(out: Path) -> bytes:
    """The bundle at `out` is complete: it verifies, loads on its backend and predicts."""
    bundle = Bundle.load(out)
    assert Predictor.load(bundle, threads=1)("turn on the lights").label in LABELS
    return (out / MANIFEST).read_bytes()


def test_killed_compile_leaves_no_partial_bundle_and_keeps_the_old_one(server, inputs, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(server.folder / "tmp"))   # the reruns here share $TMPDIR
    workdirs = lambda: sorted((server.folder / "tmp").glob(f"{WORKDIR_PREFIX}*"))
    duration = measure(server, compile_argv(inputs, tmp_path / "measured"))
    check_bundle(tmp_path / "measured")
    old = compile_bundle(inputs["checkpoint"], "x86-avx2-cpu", tmp_path / "old", precision="fp32",
                         calibration=inputs["calibration"], threads=1)
    old_manifest = check_bundle(old)
    for scenario in SCENARIOS:
        out = tmp_path / "out" / "bundle"

        def reset():
            shutil.rmtree(out.parent, ignore_errors=True)
            if scenario == "previous output":
                shutil.copytree(old, out)
        staging = lambda t, log: bool(leftovers(out))
        for name, when in kill_moments(duration, staging):
            killed, _ = kill_at(server, compile_argv(inputs, out), when, reset)
            if not killed:
                MISSED[f"compile, {scenario}"] += 1
                continue
            assert all(p.endswith(".tmp") or ".old-" in p for p in leftovers(out)), leftovers(out)   # staging only
            assert len(workdirs()) <= 1   # the killed run's work folder in $TMPDIR
            # Only ever a complete bundle, the old or the new one (check_bundle verifies every file's checksum,
            # so a mix of the two fails), and never none where there was one.
            if scenario == "previous output" or out.exists():
                check_bundle(out)
            previous = old_manifest if scenario == "previous output" else None
            PHASES["compile"][phase(out, previous, lambda p: (p / MANIFEST).read_bytes())] += 1
            # The next run succeeds and sweeps what the killed one left beside --out.
            compile_bundle(inputs["checkpoint"], "x86-avx2-cpu", out, precision="fp32",
                           calibration=inputs["calibration"], threads=1)
            check_bundle(out)
            assert leftovers(out) == [] and workdirs() == []
            KILLS[f"compile, {scenario}"] += 1
            shutil.rmtree(out.parent)


# ---- quantize --------------------------------------------------------------------------------------
def quantize_argv(inputs, out: Path, method: str = "minmax") -> list[str]:
    return ["quantize", str(inputs["onnx"]), "--checkpoint-or-tokenizer", str(inputs["checkpoint"]),
            "--eval", str(inputs["eval"]), "--calibration", str(inputs["eval"]), "--calibration-samples", "12",
            "--method", method, "--budget", "100", "--min-agreement", "0", "--out", str(out)]


def check_model(path: Path) -> bytes:
    """A complete INT8 ONNX model: onnxruntime loads and runs it."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].name == "logits"
    return path.read_bytes()


def test_killed_quantize_leaves_no_partial_model_and_keeps_the_old_one(server, inputs, tmp_path):
    duration = measure(server, quantize_argv(inputs, tmp_path / "measured.onnx"))
    check_model(tmp_path / "measured.onnx")
    # The previous output is a dynamic-INT8 model: its bytes differ from what the killed minmax run writes.
    old = tmp_path / "old.onnx"
    result = CliRunner().invoke(main, quantize_argv(inputs, old, "dynamic"))
    assert result.exit_code == 0, result.output
    old_bytes = check_model(old)
    for scenario in SCENARIOS:
        out = tmp_path / "out" / "q.onnx"
        staging = lambda t, log: bool(leftovers(out))

        def reset():
            shutil.rmtree(out.parent, ignore_errors=True)
            out.parent.mkdir()
            if scenario == "previous output":
                shutil.copyfile(old, out)
        for name, when in kill_moments(duration, staging):
            killed, _ = kill_at(server, quantize_argv(inputs, out), when, reset)
            if not killed:
                MISSED[f"quantize, {scenario}"] += 1
                continue
            stray = leftovers(out)
            previous = old_bytes if scenario == "previous output" else None
            PHASES["quantize"][phase(out, previous, Path.read_bytes)] += 1
            assert all(p.endswith(".tmp") for p in stray), stray
            if scenario == "no previous output":
                if out.exists():
                    check_model(out)
            else:
                got = check_model(out)
                assert got == old_bytes or not stray, f"killed at {name}: the old model was replaced mid-write"
            # The next run succeeds and removes the killed writer's temporaries.
            result = CliRunner().invoke(main, quantize_argv(inputs, out))
            assert result.exit_code == 0, result.output
            assert check_model(out) != old_bytes
            assert leftovers(out) == [], "the next run did not sweep the killed run's temporary files"
            KILLS[f"quantize, {scenario}"] += 1
            shutil.rmtree(out.parent)


def test_kill_counts_add_up():
    """Runs last in this file: every moment of every scenario got its kill, and each was survived."""
    # The staging moment (a temporary file that lives for milliseconds) can be missed by polling on a loaded
    # machine; every timed moment must have been hit.
    for case in (f"{c}, {s}" for c in COMMANDS for s in SCENARIOS):
        assert KILLS[case] + MISSED[case] == len(FRACTIONS) + 1 and KILLS[case] >= len(FRACTIONS), (KILLS, MISSED)
    assert GUARANTEED_KILLS <= sum(KILLS.values()) <= GUARANTEED_KILLS + STAGING_KILLS
    print(f"\nRELIABILITY kills: {sum(KILLS.values())} kills survived {dict(KILLS)}; missed {dict(MISSED)}; "
          f"phases {dict((k, dict(v)) for k, v in PHASES.items())}")
