"""Click options made from a config dataclass: one flag per field, typed from its annotation, and back again."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import click
import pytest
from click.testing import CliRunner

from edge_electra.cli_options import config_from_flags, dataclass_options, option_field, to_argv


@dataclass
class Sample:
    name: str = option_field(help="Required: no default.")
    sizes: list[int] = option_field(default_factory=lambda: [1, 8], help="Comma-separated.")
    files: list[str] = option_field(default_factory=list, help="Repeatable.")
    rate: float | None = option_field(None, help="Optional.")
    mode: Literal["fast", "exact"] = option_field("exact", help="A choice.")
    check: bool = option_field(True, help="On by default.")
    time_limit_s: float = option_field(0.0, names=("--time-limit",), help="Another flag name.")
    internal: int = field(default=3)   # no option_field: still an option, without help


def parse(args: list[str], **options) -> tuple[click.testing.Result, dict]:
    seen = {}

    @click.command()
    @dataclass_options(Sample, **options)
    def command(**flags):
        seen.update(flags)
    return CliRunner().invoke(command, args), seen


def test_each_field_becomes_a_typed_option():
    result, flags = parse(["--name", "x", "--sizes", "2,4", "--files", "a", "--files", "b", "--rate", "0.5",
                           "--mode", "fast", "--no-check", "--time-limit", "9", "--internal", "4"])
    assert result.exit_code == 0, result.output
    assert config_from_flags(Sample, flags) == Sample("x", [2, 4], ["a", "b"], 0.5, "fast", False, 9.0, 4)
    assert flags == {}   # every value was the config's


def test_defaults_come_from_the_dataclass_and_bad_values_are_usage_errors():
    result, flags = parse(["--name", "x"])
    assert config_from_flags(Sample, flags) == Sample("x")
    assert parse([])[0].exit_code == 2                                  # --name is required
    assert parse(["--name", "x", "--mode", "slow"])[0].exit_code == 2   # not a choice
    assert parse(["--name", "x", "--sizes", "1,b"])[0].exit_code == 2   # not integers
    help_text = CliRunner().invoke(click.command()(dataclass_options(Sample)(lambda **_: None)), ["--help"]).output
    assert "Comma-separated.  [default: 1,8]" in help_text and "--check / --no-check" in help_text


def test_overlay_leaves_unset_flags_none_for_a_config_file_underneath():
    result, flags = parse(["--rate", "2"], overlay=True)
    assert result.exit_code == 0, result.output
    assert flags["rate"] == 2.0 and flags["check"] is None and flags["sizes"] is None and flags["mode"] is None
    assert flags["files"] == () and flags["name"] is None


def test_only_and_exclude_choose_the_fields():
    assert parse(["--name", "x", "--rate", "1"], only=("name",))[0].exit_code == 2
    result, flags = parse(["--rate", "1"], exclude=("name",))
    assert result.exit_code == 0 and "name" not in flags


@pytest.mark.parametrize("config", [Sample("x"), Sample("y z", [3], ["p", "q r"], 1.5, "fast", False, 2.0, 7)])
def test_to_argv_reads_back_as_the_same_config(config):
    result, flags = parse(to_argv(config))
    assert result.exit_code == 0, result.output
    assert config_from_flags(Sample, flags) == config
