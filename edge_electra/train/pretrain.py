"""ELECTRA pre-training by replaced-token detection (Clark et al., 2020).

A small masked-LM generator fills 15% masked positions with samples from its softmax; the
discriminator learns which tokens were replaced. Both share one embeddings module and train
together: loss = MLM + λ·RTD. Text is streamed and packed into full blocks; a state checkpoint
(models, optimizer, schedule, RNGs, stream position) lets a killed run continue with no lost steps.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_electra import dataclass_io
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
    """Defaults follow the ELECTRA-Small recipe of the paper (Table 6)."""
    corpus: list[str] = field(default_factory=list)   # text files (one utterance a line) or JSONL with "text"
    out: str = "runs/pretrain"
    init: str | None = None            # continue from this discriminator checkpoint (domain adaptation)
    preset: str = "small"              # the shape of a model trained from scratch
    num_layers: int | None = None      # fewer encoder layers than the preset (from scratch only)
    tokenizer: str | None = None       # vocab.txt, tokenizer.json or a folder; default: init's, else trained
    vocab_size: int = 30522            # for a tokenizer trained from the corpus
    generator_ratio: float = 0.25      # generator width / discriminator width
    mask_prob: float = 0.15
    rtd_weight: float = 50.0           # λ
    seq_len: int = 128
    batch_size: int = 128              # per process
    steps: int = 1_000_000
    lr: float = 5e-4
    warmup_steps: int = 10_000
    weight_decay: float = 0.01
    adam_eps: float = 1e-6
    max_grad_norm: float = 1.0
    save_every: int = 1000
    log_every: int = 100
    compile_mode: str = "default"      # torch.compile mode; "reduce-overhead" also captures CUDA graphs
    time_limit_s: float = 0.0          # stop cleanly (state + weights) at the first log step after this; 0: never
    embed_teacher: str | None = None   # sentence-embedding teacher (BERT-layout folder or hub id), see embed_distill
    embed_weight: float = 1.0          # weight of its 1 − cosine term; rtd_weight 0 trains this term alone
    embed_sentences: int = 50_000      # corpus sentences with cached teacher embeddings
    embed_batch_size: int = 64
    embed_max_length: int = 64
    embed_cache: str | None = None     # folder of the cached teacher embeddings (default: OUT/teacher_cache)

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


def build(cfg: PretrainConfig, log=None) -> tuple[Electra, Electra, Tokenizer]:
    """(discriminator, generator, tokenizer) from `init` or from scratch."""
    say = log or (lambda message: logger.info(message))
    if cfg.init:
        discriminator, report = load_pretrained(cfg.init, task="discriminator", labels=[], slot_labels=[])
        tokenizer = load_tokenizer(cfg.tokenizer or report["source"])
        if tokenizer.vocab_size != discriminator.config.vocab_size:
            raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} tokens but {cfg.init} expects "
                              f"{discriminator.config.vocab_size}; use the checkpoint's own tokenizer")
    else:
        if cfg.tokenizer:
            tokenizer = load_tokenizer(cfg.tokenizer)
        else:
            say(f"training a {cfg.vocab_size}-token WordPiece vocabulary on the corpus")
            tokenizer = trained_tokenizer(read_text_lines(cfg.corpus), cfg.vocab_size, cfg.out, cfg.resume)
        shape = model_preset(cfg.preset, **({"num_layers": cfg.num_layers} if cfg.num_layers else {}))
        discriminator = Electra(shape.replace(vocab_size=tokenizer.vocab_size, task="discriminator",
                                              max_position=max(shape.max_position, cfg.seq_len)))
    if cfg.seq_len > discriminator.config.max_position:
        raise ConfigError(f"seq_len {cfg.seq_len} exceeds the model's {discriminator.config.max_position} positions")
    generator = Electra(discriminator.config.generator(cfg.generator_ratio))
    origin = generator_origin(cfg)
    if origin.startswith("continued"):
        generator, _ = load_pretrained(Path(cfg.init).parent / "generator")
    elif cfg.init:
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
    discriminator, generator, tokenizer = build(cfg, rt.log)
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
            embed = model.embedding_distillation(discriminator.encoder, *(t.to(rt.device) for t in sentences(done)))
            result = {**result, "embed": embed, "loss": result["loss"] + cfg.embed_weight * embed}
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
                        ["loss", "mlm", "rtd", "embed", "gen_accuracy", "disc_accuracy", "disc_auc"],
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
@click.option("--out", help="Run folder (state, metrics, final checkpoints).")
@click.option("--init", help="Continue from this discriminator checkpoint (domain adaptation).")
@click.option("--preset", help="Model shape when training from scratch: small, tiny or base.")
@click.option("--num-layers", type=int, help="Encoder layers of a model trained from scratch (default: the preset's).")
@click.option("--tokenizer", "--vocab", "tokenizer", help="vocab.txt, tokenizer.json or folder (default: trained).")
@click.option("--vocab-size", type=int, help="Size of a vocabulary trained from the corpus.")
@click.option("--generator-ratio", type=float)
@click.option("--mask-prob", type=float)
@click.option("--rtd-weight", type=float, help="λ, the weight of the replaced-token-detection loss.")
@click.option("--seq-len", type=int)
@click.option("--batch-size", type=int, help="Sequences per step and process.")
@click.option("--steps", type=int)
@click.option("--lr", type=float)
@click.option("--warmup-steps", type=int)
@click.option("--weight-decay", type=float)
@click.option("--save-every", type=int)
@click.option("--log-every", type=int)
@click.option("--seed", type=int)
@click.option("--device", type=click.Choice(list(placement.DEVICES)))
@click.option("--precision", type=click.Choice(list(placement.PRECISIONS)))
@click.option("--compile/--no-compile", default=None, help="torch.compile the training step.")
@click.option("--compile-mode", type=click.Choice(["default", "reduce-overhead", "max-autotune"]))
@click.option("--threads", type=int, help="CPU threads (0: torch's default).")
@click.option("--resume/--no-resume", default=None, help="Continue from OUT/state.pt if present.")
@click.option("--plot/--no-plot", default=None, help="Write curves.png at the end.")
@click.option("--time-limit", "time_limit_s", type=float,
              help="Seconds after which to stop cleanly at the next log step, saving the state and the weights "
                   "(0: no limit).")
@click.option("--embed-teacher", help="Also distil this sentence-embedding model's mean-pooled embeddings of the "
                                      "corpus sentences into the [CLS] state (e.g. all-MiniLM-L6-v2).")
@click.option("--embed-weight", type=float, help="Weight of the embedding term (with --rtd-weight 0: it alone).")
@click.option("--embed-sentences", type=int, help="Corpus sentences embedded by the teacher (once, cached).")
@click.option("--embed-batch-size", type=int, help="Sentences per step for the embedding term.")
@click.option("--embed-cache", help="Folder of the cached teacher embeddings (default: OUT/teacher_cache).")
def command(corpus, config_file, **flags):
    """Pre-train an ELECTRA discriminator on CORPUS files; run under torchrun for several GPUs."""
    click.echo(pretrain(config_from_cli(PretrainConfig, config_file, {"corpus": corpus, **flags})))


if __name__ == "__main__":  # `torchrun -m edge_electra.train.pretrain ...`
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    command()
