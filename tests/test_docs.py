"""README.md's generated blocks (targets table, CLI reference) match the code, and its commands parse."""
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_electra.tools import docs

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_generated_blocks_are_fresh():
    # In a fresh interpreter, as `make docs` runs it: click caches each command's help option on first
    # use, so commands that other tests invoked on their own would render differently in this process.
    result = subprocess.run([sys.executable, "-m", "edge_electra.tools.docs", str(README), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_readme_opens_with_the_two_commands():
    head = README.read_text(encoding="utf-8")[:1500]
    assert "make demo" in head and "make test" in head


def test_every_command_and_target_is_in_the_readme():
    from edge_electra.cli import COMMANDS
    from edge_electra.build.targets import target_names
    text = README.read_text(encoding="utf-8")
    assert all(f"#### `edge-electra {name}`" in text for name in COMMANDS)
    assert all(f"| `{name}` |" in text for name in target_names())


def test_render_refuses_a_readme_without_the_markers():
    with pytest.raises(Exception, match="targets:begin"):
        docs.render("# nothing generated here\n")


def test_check_mode_reports_staleness(tmp_path):
    stale = tmp_path / "README.md"
    stale.write_text("<!-- targets:begin -->\nold\n<!-- targets:end -->\n<!-- cli:begin -->\n<!-- cli:end -->\n")
    result = CliRunner().invoke(docs.main, [str(stale), "--check"])
    assert result.exit_code == 1 and "make docs" in result.output
    assert CliRunner().invoke(docs.main, [str(stale)]).exit_code == 0
    assert CliRunner().invoke(docs.main, [str(stale), "--check"]).exit_code == 0
    assert "| `x86-avx2-cpu` |" in stale.read_text()
