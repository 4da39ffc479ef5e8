"""examples/*/README.md: every edge-electra command in them parses against the real CLI, and the
custom-data walkthrough runs as written (with a tiny model and short settings)."""
import shlex
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edge_electra import cli
from edge_electra.runtime.bundle import Bundle
from edge_electra.data import load
from edge_electra.build.targets import target_names

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
READMES = sorted(EXAMPLES.glob("*/README.md"))
PREFIXES = ("edge-electra ", "python -m edge_electra.cli ", "python3 -m edge_electra.cli ")


def commands(readme: Path) -> list[list[str]]:
    """The argument lists of the edge-electra commands in a README's bash blocks."""
    found, in_bash = [], False
    for line in readme.read_text().splitlines():
        if line.startswith("```"):
            in_bash = line.strip() == "```bash"
            continue
        for part in line.split("&&") if in_bash else []:
            part = part.split("  #")[0].strip()
            prefix = next((p for p in PREFIXES if part.startswith(p)), None)
            if prefix:
                found.append(shlex.split(part[len(prefix):]))
    return found


def test_each_device_readme_shows_compile_copy_and_bench():
    for name, copy in (("jetson", "scp -r "), ("android", "adb push ")):
        readme = EXAMPLES / name / "README.md"
        verbs = [args[0] for args in commands(readme)]
        assert "compile" in verbs and "bench" in verbs, name
        assert copy in readme.read_text(), name
        targets = [args[args.index("--target") + 1] for args in commands(readme) if "--target" in args]
        assert targets == [f"{'jetson-orin' if name == 'jetson' else 'android-arm64'}"]


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.parent.name)
def test_readme_commands_parse_against_the_cli(readme):
    found = commands(readme)
    assert found, f"{readme} shows no edge-electra command"
    ctx = click.Context(cli.main)
    for args in found:
        command = cli.main.get_command(ctx, args[0])
        assert command is not None, f"{readme}: unknown command {args[0]!r}"
        command.make_context(args[0], list(args[1:]))  # raises on an unknown option or a bad value
        if "--target" in args:
            assert args[args.index("--target") + 1] in target_names()


def test_sample_csv_is_a_usable_dataset():
    data = load(EXAMPLES / "custom_data" / "data.csv")
    per_label = {label: data.label_ids().count(i) for i, label in enumerate(data.labels)}
    assert len(data) >= 60 and data.out_of_scope_label == "oos"
    assert min(per_label.values()) >= 8
    assert len(set(data.texts)) == len(data)


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A random preset("tiny") ELECTRA with a vocabulary from the sample CSV: stands in for a pre-trained one."""
    torch = pytest.importorskip("torch")
    from edge_electra.train.checkpoint import save_pretrained
    from edge_electra.train.config import preset
    from edge_electra.train.model import Electra
    from edge_electra.runtime.tokenizer import Tokenizer
    torch.manual_seed(0)
    tokenizer = Tokenizer.train(load(EXAMPLES / "custom_data" / "data.csv").texts, vocab_size=300)
    model = Electra(preset("tiny", vocab_size=tokenizer.vocab_size, task="discriminator"))
    return save_pretrained(model, tmp_path / "pretrained", tokenizer)


def test_custom_data_walkthrough_runs_as_written(tmp_path, tiny_checkpoint, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(EXAMPLES / "custom_data" / "data.csv", work / "data.csv")
    monkeypatch.chdir(work)
    finetune, compile_, bench = commands(EXAMPLES / "custom_data" / "README.md")
    # Later flags win: a local tiny model instead of the Hub's, and short runs.
    extra = {"finetune": ["--init", str(tiny_checkpoint), "--epochs", "1", "--threads", "1"],
             "compile": ["--precision", "fp32"],
             "bench": ["--runs", "3", "--warmup", "1", "--batch-sizes", "1", "--seq-lens", "16", "--no-cold-start"]}
    runner = CliRunner()
    for args in (finetune, compile_, bench):
        result = runner.invoke(cli.main, [*args, *extra[args[0]]], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    bundle = Bundle.load(work / "build" / "my.bundle")
    assert bundle.manifest.labels == load(work / "data.csv").labels
    assert (work / "runs" / "mymodel" / "best" / "config.json").is_file()
    assert {"bench.json", "bench.csv", "bench.png"} <= {p.name for p in (work / "build" / "bench").iterdir()}
