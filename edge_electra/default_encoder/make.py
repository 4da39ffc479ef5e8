"""Turn a pre-training run's discriminator into the shipped encoder: fp16 weights, without the RTD head.

    python -m edge_electra.default_encoder.make runs/default-encoder/discriminator

Fine-tuning always puts a new head on the encoder, so the replaced-token-detection head is left out; the
other weights are stored in fp16 (loaded back into fp32 parameters). SHA-256 sums of the written files are
printed for PROVENANCE.md.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import click

from edge_electra.default_encoder import FILES, FOLDER


def ship(discriminator: str | Path, dest: str | Path = FOLDER) -> dict[str, str]:
    """Write config, fp16 weights and tokenizer from `discriminator` into `dest`; {file name: sha256}."""
    from safetensors.torch import save_file

    from edge_electra.atomic import atomic_file
    from edge_electra.runtime.tokenizer import Tokenizer
    from edge_electra.train.checkpoint import config_to_hf, load_pretrained, to_hf_state_dict

    model, report = load_pretrained(discriminator)
    weights = {name: tensor.half() for name, tensor in to_hf_state_dict(model).items()
               if not name.startswith("discriminator_predictions.")}
    dest = Path(dest)
    with atomic_file(dest / "model.safetensors") as tmp:
        save_file(weights, tmp, metadata={"format": "pt"})
    with atomic_file(dest / "config.json") as tmp:
        Path(tmp).write_text(json.dumps(config_to_hf(model.config), indent=2) + "\n")
    Tokenizer.from_pretrained(report["source"]).save_pretrained(dest)
    (dest / "tokenizer.json").unlink()  # vocab.txt loads the same uncased WordPiece tokenizer
    for name in FILES:
        (dest / name).chmod(0o644)  # temporaries are created private; package data must be readable
    return {name: hashlib.sha256((dest / name).read_bytes()).hexdigest() for name in FILES}


@click.command()
@click.argument("discriminator", type=click.Path(exists=True, file_okay=False))
@click.option("--dest", default=str(FOLDER), show_default=True, type=click.Path(file_okay=False))
def command(discriminator, dest):
    """Write DISCRIMINATOR (a `pretrain` run's discriminator folder) as the shipped encoder."""
    for name, digest in ship(discriminator, dest).items():
        click.echo(f"{digest}  {name}")


if __name__ == "__main__":
    command()
