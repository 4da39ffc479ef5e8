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


def test_cli_reference_names_each_command_once():
    """Each usage line reads `edge-electra NAME`, not `edge-electra edge-electra NAME`."""
    from edge_electra.cli import COMMANDS
    reference = docs.cli_markdown()
    assert "edge-electra edge-electra" not in reference
    for name in COMMANDS:
        assert f"Usage: edge-electra {name} [OPTIONS]" in reference


def test_cli_reference_documents_the_exit_codes():
    from edge_electra.cli import EXIT_CODES
    reference = docs.cli_markdown()
    for code, meaning in EXIT_CODES.items():
        assert f"| {code} | {meaning} |" in reference


def reliability_table() -> dict[str, list[str]]:
    """README.md's reliability table: first cell → [what, how many, result]."""
    section = README.read_text(encoding="utf-8").split("\n## Reliability\n")[1].split("\n## ")[0]
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells] for cells in rows[1:]}


def table_row(table: dict[str, list[str]], start: str) -> list[str]:
    found = [cells for first, cells in table.items() if first.startswith(start)]
    assert len(found) == 1, f"README's reliability table needs one row starting {start!r}"
    return found[0]


def test_reliability_table_quotes_what_the_tests_assert():
    """The table's numbers are the reliability tests' own constants, so the two cannot drift apart."""
    pytest.importorskip("torch")
    import test_reliability_configs as configs
    import test_reliability_fuzz as fuzz
    import test_reliability_kill as kill
    import test_reliability_load as load
    table = reliability_table()
    n, edge = fuzz.RELIABILITY.max_examples, fuzz.EDGE_CASES
    assert table_row(table, "text inputs fuzzed")[1] == (
        f"{n} tokenizer + {n} Predictor cases, {len(edge)} edge cases × 2 model kinds "
        f"(incl. {sum(len(t) >= 1_000_000 for t in edge)} of 1 M characters)")
    what, count, _ = table_row(table, "SIGKILLs of `compile` and `quantize`")
    assert f"at {min(kill.FRACTIONS) * 100:.0f}–{max(kill.FRACTIONS) * 100:.0f} % of a run" in what
    assert count == f"{kill.GUARANTEED_KILLS}, and up to {kill.STAGING_KILLS} more"
    assert table_row(table, "one Predictor under")[:2] == [f"one Predictor under {load.THREADS} threads",
                                                          f"{load.HAMMER_CALLS:,} calls"]
    limit_mb = load.RSS_GROWTH_LIMIT / 2**20
    assert table_row(table, "memory over") == [
        f"memory over {load.PREDICTIONS:,} predictions, after {load.WARM_UP:,} to warm up", "1 run",
        f"RSS growth < {limit_mb:g} MB, and < {limit_mb / 4:g} MB over the second half"]
    assert table_row(table, "bad configs and data")[1].startswith(f"{configs.REFUSALS} bad inputs ")
