"""The command line: lists its commands without importing torch, leaves with documented exit codes, and shows
what the library logs at the level -q / -v ask for."""
import logging
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from edge_electra import cli
from edge_electra.cli import COMMANDS, EXIT_CODES, main
from edge_electra.errors import BundleError, ConfigError, DataError, GateRefused

RAISES = {"config": ConfigError("a bad option"), "data": DataError("a bad file"), "bundle": BundleError("no bundle"),
          "gate": GateRefused("lost 3.1 points, budget 1.0"), "bug": RuntimeError("boom"), "none": None}


@click.command()
@click.argument("what")
def probe(what):
    """Logs one message at each level, then raises RAISES[what]."""
    library = logging.getLogger("edge_electra.some.module")
    library.debug("debug-message")
    library.info("info-message")
    library.warning("warning-message")
    if RAISES[what] is not None:
        raise RAISES[what]
    click.echo("done")


@pytest.fixture
def run(monkeypatch):
    """Invoke `edge-electra [flags] probe WHAT` (stdout and stderr apart)."""
    monkeypatch.setitem(COMMANDS, "probe", (f"{__name__}:probe", "A test command."))
    return lambda *args: CliRunner().invoke(main, list(args))


def test_help_lists_every_command_and_the_exit_codes():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output
    for code, meaning in EXIT_CODES.items():
        assert f"{code}  {meaning}" in result.output
    assert set(EXIT_CODES) == {0, 1, 2, 3}


def test_help_does_not_import_torch():
    code = "import sys; from edge_electra.cli import main\ntry:\n main(['--help'])\nexcept SystemExit: pass\n" \
           "assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.parametrize("what, code", [("none", 0), ("config", 2), ("data", 2), ("bundle", 2), ("gate", 3),
                                        ("bug", 1)])
def test_exit_codes(run, what, code):
    result = run("probe", what)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    if code:
        assert f"Error: {'unexpected RuntimeError: ' if what == 'bug' else ''}{RAISES[what]}\n" in result.stderr


def test_usage_errors_exit_2(run):
    assert run("probe").exit_code == 2                      # a missing argument
    assert run("probe", "none", "--nope").exit_code == 2    # an unknown option
    assert run("no-such-command").exit_code == 2


def test_an_unexpected_error_shows_its_traceback_only_with_v(run):
    assert "Traceback" not in run("probe", "bug").stderr
    verbose = run("-v", "probe", "bug")
    assert verbose.exit_code == 1
    assert "Traceback" in verbose.stderr and 'raise RAISES[what]' in verbose.stderr


@pytest.mark.parametrize("flags, shown", [([], {"info", "warning"}), (["-q"], {"warning"}),
                                          (["-v"], {"debug", "info", "warning"}),
                                          (["--quiet"], {"warning"}), (["--verbose"], {"debug", "info", "warning"})])
def test_verbosity_flags_choose_what_the_library_logs_on_stderr(run, flags, shown):
    result = run(*flags, "probe", "none")
    assert result.exit_code == 0 and result.stdout == "done\n"   # results on stdout, messages on stderr
    assert {level for level in ("debug", "info", "warning") if f"{level}-message\n" in result.stderr} == shown
    # Bare messages: no level names, logger names or times.
    assert "warning-message\n" in result.stderr.splitlines(keepends=True)


def test_the_logger_is_left_as_it_was(run):
    package = logging.getLogger("edge_electra")
    handlers, level = list(package.handlers), package.level
    run("-v", "probe", "bug")
    run("probe", "none")
    assert package.handlers == handlers and package.level == level


def test_a_root_handler_set_by_a_library_does_not_print_messages_twice(run):
    """onnxruntime's quantizer and NNCF configure the root logger; the demo then printed each line twice."""
    reached_root = []
    root_handler = logging.Handler()
    root_handler.emit = reached_root.append
    logging.getLogger().addHandler(root_handler)
    try:
        result = run("probe", "none")
    finally:
        logging.getLogger().removeHandler(root_handler)
    assert result.stderr.count("info-message") == 1
    assert [r.getMessage() for r in reached_root if r.name.startswith("edge_electra")] == []
    assert logging.getLogger("edge_electra").propagate   # left as it was


def test_exit_codes_in_a_real_process(tmp_path):
    """As a shell sees them: `python -m edge_electra.cli` with a usage error and with a missing bundle."""
    def code(*args):
        return subprocess.run([sys.executable, "-m", "edge_electra.cli", *args], capture_output=True).returncode
    assert code("--help") == 0
    assert code("targets", "--no-such-option") == 2
    assert code("info", str(tmp_path / "nope")) == 2


def test_info_on_a_missing_bundle_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["info", str(tmp_path / "nope")])
    assert result.exit_code == cli.EXIT_BAD_INPUT
    assert "Error: bundle" in result.output and "not found" in result.output
    assert "Traceback" not in result.output


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`edge-electra targets | head -1`: no error and no traceback when the pipe closes."""
    proc = subprocess.Popen([sys.executable, "-m", "edge_electra.cli", "targets"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()   # before the command has written anything
    stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == cli.EXIT_UNEXPECTED
    assert stderr == b"", stderr
