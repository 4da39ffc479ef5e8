"""The generated parts of README.md: the targets table and the CLI reference, rendered from the
profiles in targets/ and from the click commands themselves, so they stay true.

    python -m edge_electra.tools.docs README.md          # rewrite the generated blocks (make docs)
    python -m edge_electra.tools.docs README.md --check  # exit 1 when they are stale
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import click


def targets_markdown() -> str:
    from edge_electra.build.targets import all_targets
    rows = ["| target | device class | backend | precisions | batch | seq buckets | shapes | verified where |",
            "|---|---|---|---|---|---|---|---|"]
    for p in all_targets():
        rows.append(f"| `{p.name}` | {p.description.split(':')[0]} | {p.backend} | {', '.join(p.precisions)} | "
                    f"{p.batch.min}–{p.batch.max} | "
                    f"{', '.join(map(str, p.buckets))} | {'fixed' if p.fixed_shapes else 'dynamic'} | "
                    f"{'; '.join(p.verified)} |")
    return "\n".join(rows)


def cli_markdown() -> str:
    from edge_electra.cli import COMMANDS, EXIT_CODES, main
    parts = ["| exit code | meaning |", "|---|---|"]
    parts += [f"| {code} | {meaning} |" for code, meaning in EXIT_CODES.items()] + [""]
    # A fixed width, so the text does not depend on the terminal that ran `make docs`.
    ctx = click.Context(main, info_name="edge-electra", terminal_width=100, max_content_width=100,
                        **main.context_settings)
    parts += ["```text", main.get_help(ctx), "```"]
    for name in COMMANDS:
        command = main.get_command(ctx, name)
        sub = click.Context(command, info_name=name, parent=ctx)   # its usage line reads "edge-electra NAME"
        parts += ["", f"#### `edge-electra {name}`", "", "```text", command.get_help(sub), "```"]
    return "\n".join(parts)


BLOCKS = {"targets": targets_markdown, "cli": cli_markdown}


def render(readme: str) -> str:
    """README text with every `<!-- NAME:begin -->…<!-- NAME:end -->` block regenerated."""
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.S)
        if not pattern.search(readme):
            raise click.ClickException(f"README has no <!-- {name}:begin --> ... <!-- {name}:end --> block")
        readme = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), readme)
    return readme


@click.command()
@click.argument("readme", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--check", is_flag=True, help="Only check that the generated blocks are up to date.")
def main(readme: Path, check: bool):
    text = readme.read_text(encoding="utf-8")
    fresh = render(text)
    if check:
        if fresh != text:
            click.echo(f"{readme} is stale: run `make docs`", err=True)
            sys.exit(1)
        return
    readme.write_text(fresh, encoding="utf-8")


if __name__ == "__main__":
    main()
