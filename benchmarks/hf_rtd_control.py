"""The Hugging Face control for a pre-training run: ElectraForPreTraining + ElectraForMaskedLM, same everything else.

It reads the run's own config.toml, so the shape (preset, layers, generator ratio), vocabulary, packed
blocks, masking, λ, optimizer, schedule, clipping and steps are those of `edge-electra pretrain`, on the same
training loop; only the models are transformers'. The discriminator and generator are saved where
`finetune --init` and rtd_controls.py read them.

    .venv/bin/python benchmarks/hf_rtd_control.py runs/pretrain-long --out runs/pretrain-long-hf
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from edge_electra import dataclass_io
from edge_electra.runtime.tokenizer import Tokenizer
from edge_electra.train import loop
from edge_electra.train.config import preset
from edge_electra.train.optim import adamw, warmup_linear
from edge_electra.train.packing import Packer, batches
from edge_electra.train.placement import Runtime
from edge_electra.train.pretrain import PretrainConfig

from pretrain_speed import hf_step_module


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="an `edge-electra pretrain` run folder (its config.toml and tokenizer)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = dataclass_io.load(PretrainConfig, Path(args.run) / "config.toml")
    torch.manual_seed(cfg.seed)
    tokenizer = Tokenizer.from_pretrained(args.run)
    shape = preset(cfg.preset, vocab_size=tokenizer.vocab_size, **({"num_layers": cfg.num_layers} if cfg.num_layers else {}))
    disc_cfg = shape.replace(task="discriminator", max_position=max(shape.max_position, cfg.seq_len))
    model = hf_step_module(disc_cfg, disc_cfg.generator(cfg.generator_ratio), cfg.mask_prob, cfg.rtd_weight,
                           special=[tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id], mask_id=tokenizer.mask_id)
    optimizer = adamw(model, cfg.lr, cfg.weight_decay, eps=cfg.adam_eps)
    scheduler = warmup_linear(optimizer, cfg.warmup_steps, cfg.steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = loop.LoopSettings(steps=cfg.steps, log_every=cfg.log_every, save_every=cfg.save_every,
                                 max_grad_norm=cfg.max_grad_norm)
    model.train()
    loop.Loop(model, optimizer, scheduler, settings, Runtime(torch.device("cpu"), "fp32"), folder=out,
              seed=cfg.seed).run(lambda trainer, ids, done: trainer(ids),
                                 lambda position: batches(Packer(cfg.corpus, tokenizer, cfg.seq_len, position),
                                                          cfg.batch_size))
    for name, module in (("discriminator", model.discriminator), ("generator", model.generator)):
        module.save_pretrained(out / name)
        tokenizer.save_pretrained(out / name)
    print(out / "discriminator")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
