"""ELECTRA pre-training by replaced-token detection (Clark et al., 2020).

A small masked-LM generator fills 15% masked positions with samples from its softmax; the
discriminator learns which tokens were replaced. Both share one embeddings module and train
together: loss = MLM + λ·RTD. Text is streamed and packed into full blocks; a state checkpoint
(models, optimizer, schedule, RNGs, stream position) lets a killed run continue with no lost steps.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import click
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_electra import dataclass_io
from edge_electra.cli_options import dataclass_options, option_field
from edge_electra.train.checkpoint import load_pretrained, save_pretrained
from edge_electra.train.config import preset as model_preset
from edge_electra.data import read_text_lines
from edge_electra.errors import ConfigError
from edge_electra.train.model import Electra
from edge_electra.runtime.tokenizer import Tokenizer, load_tokenizer
from edge_electra.train import curves, embed_distill, loop, placement
from edge_electra.train.evaluate import roc_auc
from edge_electra.train.optim import adamw, warmup_linear
from edge_electra.train.options import config_from_cli, trained_tokenizer
from edge_electra.train.packing import Packer, batches

logger = logging.getLogger(__name__)

@dataclass
class PretrainConfig(placement.RunSettings):
    """Defaults follow the ELECTRA-Small recipe of the paper (Table 6). Each field is also a flag."""
    corpus: list[str] = option_field(default_factory=list, hidden=True,
                                     help="Text files (one utterance a line) or JSONL with 'text'.")
    out: str = option_field("runs/pretrain", help="Run folder (state, metrics, final checkpoints).")
    init: str | None = option_field(None, help="Continue from this discriminator checkpoint (domain adaptation).")
    preset: str = option_field("small", help="Model shape when training from scratch: small, mini, tiny or base.")
    num_layers: int | None = option_field(
        None, help="Encoder layers of a model trained from scratch (default: the preset's).")
    tokenizer: str | None = option_field(None, names=("--tokenizer", "--vocab"),
                                         help="vocab.txt, tokenizer.json or folder (default: init's, else trained).")
    vocab_size: int = option_field(30522, help="Size of a vocabulary trained from the corpus.")
    generator_ratio: float = option_field(0.25, help="Generator width / discriminator width.")
    mask_prob: float = option_field(0.15, help="Share of the tokens the generator fills in.")
    rtd_weight: float = option_field(50.0, help="λ, the weight of the replaced-token-detection loss.")
    seq_len: int = option_field(128, help="Tokens per packed block.")
    batch_size: int = option_field(128, help="Sequences per step and process.")
    steps: int = option_field(1_000_000, help="Optimizer steps.")
    lr: float = option_field(5e-4, help="Peak learning rate.")
    warmup_steps: int = option_field(10_000, help="Steps of linear warm-up (then linear decay to 0).")
    weight_decay: float = option_field(0.01, help="AdamW weight decay (not on biases and LayerNorm).")
    adam_eps: float = option_field(1e-6, help="AdamW epsilon.")
    max_grad_norm: float = option_field(1.0, help="Gradient clipping norm.")
    save_every: int = option_field(1000, help="Steps between state checkpoints.")
    log_every: int = option_field(100, help="Steps between logged metric rows.")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = option_field(
        "default", help="torch.compile mode; reduce-overhead also captures CUDA graphs.")
    time_limit_s: float = option_field(0.0, names=("--time-limit",), help=(
        "Seconds after which to stop cleanly at the next log step, saving the state and the weights (0: no limit)."))
    embed_teacher: str | None = option_field(None, help=(
        "Also distil this sentence-embedding model's mean-pooled embeddings of the corpus sentences into the "
        "[CLS] state (e.g. all-MiniLM-L6-v2)."))
    embed_weight: float = option_field(1.0, help="Weight of the embedding term (with --rtd-weight 0: it alone).")
    embed_word_weight: float = option_field(0.0, help=(
        "Weight of the per-word term: each word's teacher vector (its last hidden states, averaged over the "
        "word's pieces) distilled into the student's through a second projection (0: off)."))
    embed_sentences: int = option_field(50_000, help="Corpus sentences embedded by the teacher (once, cached).")
    embed_batch_size: int = option_field(64, help="Sentences per step for the embedding term.")
    embed_max_length: int = option_field(64, help="Tokens per sentence for the embedding term.")
    embed_cache: str | None = option_field(
        None, help="Folder of the cached teacher embeddings (default: OUT/teacher_cache).")

    def __post_init__(self):
        if not 0 < self.mask_prob < 1:
            raise ConfigError(f"mask_prob must be between 0 and 1, got {self.mask_prob}")
        if self.steps < 1 or self.batch_size < 1 or self.seq_len < 8:
            raise ConfigError("steps and batch_size must be ≥ 1 and seq_len ≥ 8")
        if self.time_limit_s < 0:
            raise ConfigError(f"time_limit_s must be ≥ 0 (0: no limit), got {self.time_limit_s}")
        if not self.rtd_weight and not self.embed_teacher:
            raise ConfigError("rtd_weight 0 leaves nothing to train without an embed_teacher")
        if self.num_layers is not None and (self.num_layers < 1 or self.init):
            raise ConfigError("num_layers must be ≥ 1 and applies to a model trained from scratch; "
                              "to shorten a checkpoint, distill or finetune it with --num-layers")


def choose_masked(input_ids: torch.Tensor, special_ids: torch.Tensor, mask_prob: float):
    """(positions, valid): round(mask_prob · seq) positions per row, drawn uniformly among the non-special
    tokens. Exactly that many per row (packed rows have no padding), so every shape stays static; `valid` is
    False where a row had fewer non-special tokens than that."""
    k = max(1, round(mask_prob * input_ids.shape[1]))
    scores = torch.rand(input_ids.shape, device=input_ids.device)
    scores = scores.masked_fill(torch.isin(input_ids, special_ids), -1.0)
    masked_scores, positions = scores.topk(k, dim=1)
    return positions, masked_scores >= 0


class ReplacedTokenDetection(nn.Module):
    """Generator and discriminator with one shared embeddings module; forward returns the loss and its parts."""

    def __init__(self, discriminator: Electra, generator: Electra, special_ids: list[int], mask_id: int,
                 mask_prob: float = 0.15, rtd_weight: float = 50.0):
        super().__init__()
        if generator.config.embedding_size != discriminator.config.embedding_size:
            raise ConfigError("the generator's embedding_size must equal the discriminator's to share embeddings")
        generator.encoder.embeddings = discriminator.encoder.embeddings
        generator.head.word_embeddings = discriminator.encoder.embeddings.word
        self.discriminator, self.generator = discriminator, generator
        self.register_buffer("special_ids", torch.tensor(special_ids), persistent=False)
        self.mask_id, self.mask_prob, self.rtd_weight = mask_id, mask_prob, rtd_weight

    def forward(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        positions, valid = choose_masked(input_ids, self.special_ids, self.mask_prob)
        originals = input_ids.gather(1, positions)
        masked = input_ids.scatter(1, positions, torch.where(valid, self.mask_id, originals))

        hidden = self.generator.encoder(masked)
        at_masked = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
        mlm_logits = self.generator.head(at_masked).float()
        weights = valid.float() / valid.sum().clamp_min(1)  # masked means, no boolean indexing: shapes stay static
        mlm = (F.cross_entropy(mlm_logits.transpose(1, 2), originals, reduction="none") * weights).sum()
        with torch.no_grad():  # Gumbel-max: a sample from the generator's softmax, no gradient through it
            gumbel = -torch.log((-torch.log(torch.rand_like(mlm_logits).clamp_min(1e-9))).clamp_min(1e-9))
            sampled = torch.where(valid, (mlm_logits + gumbel).argmax(-1), originals)
        corrupted = input_ids.scatter(1, positions, sampled)
        replaced = (corrupted != input_ids).float()  # a sample equal to the original counts as original
        disc_logits = self.discriminator(corrupted).float()
        rtd = F.binary_cross_entropy_with_logits(disc_logits, replaced)
        return {"loss": mlm + self.rtd_weight * rtd, "mlm": mlm, "rtd": rtd,
                "gen_correct": ((mlm_logits.argmax(-1) == originals).float() * weights).sum(),
                "disc_logits": disc_logits.detach(), "replaced": replaced}


def generator_origin(cfg: PretrainConfig) -> str:
    """Where the generator's weights come from: a saved generator continues; otherwise it starts random,
    sharing the discriminator's embeddings (ReplacedTokenDetection ties them). A trained discriminator's
    layers cannot seed it: the generator is narrower."""
    if not cfg.init:
        return "random (trained from scratch with the discriminator)"
    beside = Path(cfg.init).parent / "generator"
    if beside.is_dir():
        return f"continued from {beside}"
    return (f"random layers with the discriminator's embeddings: no generator/ beside {cfg.init}; "
            "its first samples are near-uniform tokens, easy to spot, until it learns the corpus")


def build(cfg: PretrainConfig, rt: placement.Runtime | None = None) -> tuple[Electra, Electra, Tokenizer]:
    """(discriminator, generator, tokenizer) from `init` or from scratch; `rt`: the processes it is built in."""
    say = rt.log if rt is not None else logger.info
    # Word-level distillation teaches every token's state, and such an encoder is read best through their mean
    # (benchmarks/training.md §9, §10): its config says so, and fine-tuning follows it.
    reading = {"pooling": "mean"} if cfg.embed_teacher and cfg.embed_word_weight > 0 else {}
    if cfg.init:
        discriminator, report = load_pretrained(cfg.init, task="discriminator", labels=[], slot_labels=[], **reading)
        tokenizer = load_tokenizer(cfg.tokenizer or report["source"])
        if tokenizer.vocab_size != discriminator.config.vocab_size:
            raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} tokens but {cfg.init} expects "
                              f"{discriminator.config.vocab_size}; use the checkpoint's own tokenizer")
    else:
        if cfg.tokenizer:
            tokenizer = load_tokenizer(cfg.tokenizer)
        else:
            say(f"training a {cfg.vocab_size}-token WordPiece vocabulary on the corpus")
            tokenizer = trained_tokenizer(read_text_lines(cfg.corpus), cfg.vocab_size, cfg.out, cfg.resume, rt)
        shape = model_preset(cfg.preset, **({"num_layers": cfg.num_layers} if cfg.num_layers else {}))
        discriminator = Electra(shape.replace(vocab_size=tokenizer.vocab_size, task="discriminator",
                                              max_position=max(shape.max_position, cfg.seq_len), **reading))
    if cfg.seq_len > discriminator.config.max_position:
        raise ConfigError(f"seq_len {cfg.seq_len} exceeds the model's {discriminator.config.max_position} positions")
    generator = Electra(discriminator.config.generator(cfg.generator_ratio))
    origin = generator_origin(cfg)
    if origin.startswith("continued"):
        generator, _ = load_pretrained(Path(cfg.init).parent / "generator")
    elif cfg.init and (rt is None or rt.is_main):
        logger.warning("pretrain: the generator starts with %s", origin)
    return discriminator, generator, tokenizer


def pretrain(cfg: PretrainConfig) -> Path:
    """Run (or resume) pre-training; return the folder of the final discriminator checkpoint."""
    if not cfg.corpus:
        raise ConfigError("give at least one corpus file (text, one utterance a line, or JSONL with 'text')")
    with placement.session(cfg.device, cfg.precision, cfg.threads) as rt:
        return _train(cfg, rt)


def _train(cfg: PretrainConfig, rt: placement.Runtime) -> Path:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)   # the same initial weights in every process
    discriminator, generator, tokenizer = build(cfg, rt)
    model = ReplacedTokenDetection(discriminator, generator, [tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id],
                                   tokenizer.mask_id, cfg.mask_prob, cfg.rtd_weight)
    sentences = None
    if cfg.embed_teacher:  # a submodule of `model`, so the optimizer and the state checkpoint include it
        if rt.world_size > 1:
            raise ConfigError("embedding distillation runs in one process; drop torchrun or --embed-teacher")
        model.embedding_distillation, sentences = embed_distill.build(cfg, discriminator.config.hidden_size,
                                                                      tokenizer, out)
    model.to(rt.device)
    optimizer = adamw(model, cfg.lr, cfg.weight_decay, eps=cfg.adam_eps)
    scheduler = warmup_linear(optimizer, cfg.warmup_steps, cfg.steps)
    if rt.is_main:
        dataclass_io.save(cfg, out / "config.toml")
        tokenizer.save_pretrained(out)
    rt.log(f"pretrain: discriminator {discriminator.num_parameters():,} params, generator "
           f"{generator.num_parameters():,}; {cfg.steps} steps of {cfg.batch_size * rt.world_size}×{cfg.seq_len} "
           f"tokens on {rt.device} ({rt.precision}, {rt.world_size} process(es))")

    def step(trainer, input_ids, done):
        result = trainer(input_ids.to(rt.device, non_blocking=True)) if cfg.rtd_weight else {"loss": 0.0}
        if sentences is not None:
            parts = model.embedding_distillation(discriminator.encoder, *(t.to(rt.device) for t in sentences(done)))
            loss = result["loss"] + cfg.embed_weight * parts["embed"]
            if "embed_word" in parts:
                loss = loss + cfg.embed_word_weight * parts["embed_word"]
            result = {**result, **parts, "loss": loss}
        return result

    def stream(position):
        return batches(Packer(cfg.corpus, tokenizer, cfg.seq_len, position), cfg.batch_size, rt.rank, rt.world_size)

    settings = loop.LoopSettings(steps=cfg.steps, log_every=cfg.log_every, save_every=cfg.save_every,
                                 max_grad_norm=cfg.max_grad_norm, time_limit_s=cfg.time_limit_s,
                                 tokens_per_step=cfg.batch_size * cfg.seq_len)
    model.train()
    loop.Loop(model, optimizer, scheduler, settings, rt, folder=out, resume=cfg.resume, seed=cfg.seed,
              compile_mode=cfg.compile_mode if cfg.compile else None, summarize=_summarize,
              metadata={"workflow": "pretrain", "generator": generator_origin(cfg)}).run(step, stream)
    final = out / "discriminator"
    if rt.is_main:
        save_pretrained(discriminator, final, tokenizer)
        save_pretrained(generator, out / "generator", tokenizer)
        if cfg.plot:
            curves.plot(curves.read_rows(out / curves.METRICS_LOG),
                        ["loss", "mlm", "rtd", "embed", "embed_word", "gen_accuracy", "disc_accuracy", "disc_auc"],
                        out / "curves.png", title="ELECTRA pre-training")
        rt.log(f"discriminator checkpoint: {final}")
    return final


def _summarize(window: list[dict], step: int) -> dict[str, float]:
    """The window's mean losses, and the generator's and the discriminator's accuracies over it."""
    row = {k: v for k, v in loop.window_means(window).items() if k != "gen_correct"}
    if "disc_logits" in window[0]:
        logits = torch.cat([r["disc_logits"].flatten() for r in window]).cpu().numpy()
        replaced = torch.cat([r["replaced"].flatten() for r in window]).cpu().numpy()
        row.update(gen_accuracy=float(np.mean([r["gen_correct"].item() for r in window])),
                   disc_accuracy=float(((logits > 0) == (replaced > 0.5)).mean()),
                   disc_auc=roc_auc(logits, replaced))
    return row


@click.command("pretrain")
@click.argument("corpus", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="A TOML/JSON PretrainConfig; flags override it.")
@dataclass_options(PretrainConfig, exclude=("corpus",), overlay=True)
def command(corpus, config_file, **flags):
    """Pre-train an ELECTRA discriminator on CORPUS files; run under torchrun for several GPUs."""
    click.echo(pretrain(config_from_cli(PretrainConfig, config_file, {"corpus": corpus, **flags})))


if __name__ == "__main__":  # `torchrun -m edge_electra.train.pretrain ...`
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    command()
