"""The command line: lists its commands without importing torch, and reports errors without tracebacks."""
import subprocess
import sys

from click.testing import CliRunner

from edge_electra.cli import COMMANDS, main


def test_help_lists_every_command():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


def test_help_does_not_import_torch():
    code = "import sys; from edge_electra.cli import main\ntry:\n main(['--help'])\nexcept SystemExit: pass\n" \
           "assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_info_on_a_missing_bundle_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["info", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "Error: bundle" in result.output and "not found" in result.output
    assert "Traceback" not in result.output
