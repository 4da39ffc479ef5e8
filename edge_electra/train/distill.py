"""Distil a teacher into an ELECTRA student, or fine-tune one on labels alone (`finetune` = no teacher).

The recipe (`distill`): a teacher that is a bare pre-trained encoder is first fine-tuned on the data (early
stopping on validation; kept in OUT/teacher and reused); the student starts, unless `init` says otherwise,
from the teacher's own encoder cut to `num_layers` layers; the training set is grown with augmented copies
the teacher labels (augment.py).
Loss = ce_weight·CE(hard labels, intents and slot tags) + kd_weight·T²·KL(teacher/T ‖ student/T) (intents,
and each word's slot tag for joint data) + hidden_weight·MSE(hidden states) + attention_weight·KL(attention)
of the student's layers against the teacher's layers mapped to them (signals.py). Without a teacher: CE only.
Evaluates on the validation split, keeps the best checkpoint (by accuracy; by the mean of accuracy and slot F1
for joint data), stops early, resumes; then chooses the out-of-scope threshold on validation and reports the
test split with it (metrics.json `test`).
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import click
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_electra import data as data_io
from edge_electra import dataclass_io
from edge_electra.atomic import atomic_file
from edge_electra.cli_options import dataclass_options, option_field
from edge_electra.train.checkpoint import load_pretrained, save_pretrained
from edge_electra.default_encoder import default_init
from edge_electra.train.config import preset as model_preset
from edge_electra.errors import ConfigError
from edge_electra.train.model import Electra
from edge_electra.runtime.tokenizer import Tokenizer, load_tokenizer
from edge_electra.train import augment, curves, labelled, loop, placement, scoring
from edge_electra.train.optim import adamw, warmup_linear
from edge_electra.train.options import config_from_cli, trained_tokenizer
from edge_electra.train.signals import Intermediate
from edge_electra.train.teacher import BACKENDS, has_task_head, teacher_outputs, word_slots

# DistillConfig fields only distill has as flags, not finetune
TEACHER_ONLY = ("teacher", "teacher_backend", "unlabelled", "temperature", "kd_weight", "ce_weight", "hidden_weight",
                "attention_weight", "augment", "augment_generator", "teacher_epochs", "teacher_lr", "teacher_patience")
TEACHER_FOLDER = "teacher"             # OUT/teacher: the fine-tuned teacher of a bare-encoder --teacher


@dataclass
class DistillConfig(placement.RunSettings):
    """Each field is also a flag of `distill` (all) and `finetune` (all but the teacher's)."""
    data: str = option_field(help="Dataset folder (train/validation/test.jsonl) or a training file.")
    out: str = option_field("runs/distill", help="Run folder (checkpoints, metrics, state).")
    validation: str | None = option_field(
        None, help="Validation file (default: the folder's validation split, else 10% of train).")
    test: str | None = option_field(None, help="Test file, evaluated with the best checkpoint.")
    teacher: str | None = option_field(
        None, help="Teacher folder: an edge-electra checkpoint or a HF sequence classifier (none: fine-tuning).")
    teacher_backend: Literal["auto", "edge_electra", "transformers"] = option_field(
        "auto", help="How to run the teacher.")
    init: str | None = option_field(None, help=(
        "Student checkpoint folder (ELECTRA or BERT, HF layout); none: the shipped encoder, or a fresh "
        "--preset model."))
    preset: str | None = option_field(None, help=(
        "Model preset for a fresh student: small, tiny, mini or base (default small when a tokenizer is given; "
        "without --init and --preset: the shipped pre-trained encoder)."))
    num_layers: int | None = option_field(None, help="Keep this many encoder layers.")
    freeze_embeddings: bool = option_field(False, help=(
        "Keep the word embeddings as initialised, so that words the training set never uses stay beside "
        "the ones it does."))
    layer_selection: Literal["even", "first"] = option_field("even", help="Which layers to keep.")
    pooling: Literal["cls", "mean"] | None = option_field(None, help=(
        "What the intent head reads: the [CLS] state, or the mean of the real tokens' states. Default: what the "
        "initial checkpoint says (the shipped encoder, whose every word state was distilled: mean), else cls."))
    tokenizer: str | None = option_field(None, help="vocab.txt, tokenizer.json or folder for a fresh student.")
    unlabelled: list[str] = option_field(
        default_factory=list, help="In-domain text (one a line, or JSONL) for the teacher to label.")
    temperature: float = option_field(2.0, help="Distillation temperature T.")
    kd_weight: float = option_field(0.5, help="Weight of the distillation term.")
    ce_weight: float = option_field(0.5, help="Weight of the hard-label cross-entropy when distilling.")
    hidden_weight: float = option_field(0.0, help="Weight of the hidden-state MSE, layer to mapped layer (0: off).")
    attention_weight: float = option_field(0.0, help="Weight of the attention-distribution KL (0: off).")
    augment: int = option_field(0, help="Augmented copies of each training utterance for the teacher to label.")
    augment_generator: str | None = option_field(None, help=(
        "pretrain generator folder that proposes the replacements of --augment (default: the teacher's "
        "embedding neighbours)."))
    # 3 epochs at 3e-4 converge all-MiniLM-L6-v2 on SNIPS/CLINC150 inside the recipe's time (training.md §8)
    teacher_epochs: int = option_field(3, help="At most this many epochs to fine-tune a bare-encoder teacher.")
    teacher_lr: float = option_field(3e-4, help="Learning rate of that fine-tuning.")
    teacher_patience: int = option_field(
        2, help="Half-epoch evaluations without improvement before the teacher's fine-tuning stops.")
    max_length: int = option_field(64, help="Tokens per utterance.")
    epochs: int = option_field(4, help="Passes over the training set.")
    max_steps: int = option_field(0, help="Stop (and end the schedule) after this many steps (0: all epochs).")
    batch_size: int = option_field(32, help="Utterances per step and process.")
    # small students learn slots several times faster at 5e-4 than at 1e-4 (training.md §8)
    lr: float = option_field(5e-4, help="Peak learning rate.")
    weight_decay: float = option_field(0.01, help="AdamW weight decay (not on biases and LayerNorm).")
    warmup_ratio: float = option_field(0.1, help="Share of the steps spent warming up.")
    eval_every: int = option_field(0, help="Steps between evaluations (0: each epoch).")
    patience: int = option_field(3, help="Evaluations without improvement before stopping (0: never).")
    oos_max_in_scope_loss: float = option_field(1.0, help=(
        "Points of validation in-scope accuracy the out-of-scope threshold may cost; within them, the threshold "
        "with the highest OOS recall is chosen."))
    save_every: int = option_field(200, help="Steps between state checkpoints.")
    log_every: int = option_field(50, help="Steps between logged metric rows.")

    def __post_init__(self):
        if self.teacher_backend not in BACKENDS:
            raise ConfigError(f"teacher_backend must be one of {list(BACKENDS)}")
        if self.teacher is None and self.unlabelled:
            raise ConfigError("unlabelled text needs a teacher to label it; pass --teacher")
        if self.augment_generator and not self.augment:
            raise ConfigError("augment_generator proposes the words of augmented copies; set --augment too")
        if self.epochs < 1 or self.batch_size < 1 or self.max_length < 8:
            raise ConfigError("epochs and batch_size must be ≥ 1 and max_length ≥ 8")


def _splits(cfg: DistillConfig) -> dict[str, data_io.Dataset]:
    return labelled.load_splits(cfg.data, cfg.validation, cfg.test, cfg.seed)


def select_layers(model: Electra, count: int, how: str = "even") -> Electra:
    """Keep `count` of the encoder's layers: the first ones, or evenly spaced ones ending with the last."""
    total = len(model.encoder.layers)
    if not 1 <= count <= total:
        raise ConfigError(f"num_layers must be between 1 and {total} for this model, got {count}")
    keep = list(range(count)) if how == "first" else [round((i + 1) * total / count) - 1 for i in range(count)]
    model.encoder.layers = nn.ModuleList(model.encoder.layers[i] for i in keep)
    model.config = model.config.replace(num_layers=count)
    return model


def _fresh_tokenizer(cfg: DistillConfig, texts: list[str]) -> Tokenizer:
    source = cfg.tokenizer or cfg.teacher
    return load_tokenizer(source) if source else trained_tokenizer(texts, 8000, cfg.out, cfg.resume)


def build_student(cfg: DistillConfig, train: data_io.Dataset) -> tuple[Electra, Tokenizer]:
    task = "joint" if train.slot_labels else "sequence"
    heads = dict(task=task, labels=train.labels, slot_labels=train.slot_labels,
                 **({"pooling": cfg.pooling} if cfg.pooling else {}))
    init = default_init(cfg.init, cfg.preset, cfg.tokenizer)
    if init:
        model, report = load_pretrained(init, **heads)
        tokenizer = load_tokenizer(cfg.tokenizer or report["source"])
    else:
        tokenizer = _fresh_tokenizer(cfg, train.texts)
        shape = model_preset(cfg.preset or "small")
        model = Electra(shape.replace(vocab_size=tokenizer.vocab_size, max_position=max(shape.max_position, cfg.max_length),
                                      **heads))
    if cfg.num_layers:
        model = select_layers(model, cfg.num_layers, cfg.layer_selection)
    if cfg.max_length > model.config.max_position:
        raise ConfigError(f"max_length {cfg.max_length} exceeds the model's {model.config.max_position} positions")
    return model, tokenizer


class Student(nn.Module):
    """The student, plus what its intermediate-layer losses train (projections), when they are on."""

    def __init__(self, model: Electra, intermediate: Intermediate | None):
        super().__init__()
        self.model = model
        self.intermediate = intermediate

    def forward(self, input_ids, attention_mask, token_type_ids, targets=None):
        if self.intermediate is None:
            return self.model(input_ids, attention_mask, token_type_ids), {}
        logits, hidden = self.model(input_ids, attention_mask, token_type_ids, output_hidden_states=True)
        return logits, self.intermediate(self.model, hidden, attention_mask, targets)


def _kd(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """T²·KL(teacher/T ‖ student/T) per row (the last dimension holds the classes)."""
    return (F.softmax(teacher / t, -1) * (F.log_softmax(teacher / t, -1) - F.log_softmax(student.float() / t, -1))
            ).sum(-1) * t * t


def loss_terms(cfg: DistillConfig, logits, intermediate: dict, batch, teacher: dict | None) -> dict[str, torch.Tensor]:
    intent, slots = logits if isinstance(logits, tuple) else (logits, None)
    terms = dict(intermediate)
    if (batch["labels"] != labelled.IGNORE).any():
        terms["ce"] = F.cross_entropy(intent.float(), batch["labels"], ignore_index=labelled.IGNORE)
    if slots is not None and (batch["slot_labels"] != labelled.IGNORE).any():
        terms["slot_ce"] = F.cross_entropy(slots.float().flatten(0, 1), batch["slot_labels"].flatten(),
                                           ignore_index=labelled.IGNORE)
    if teacher is not None:
        terms["kd"] = _kd(intent, teacher["logits"], cfg.temperature).mean()
        if slots is not None and "slots" in teacher:
            positions = batch["word_positions"]
            per_word = _kd(word_slots(slots, positions), teacher["slots"][:, :positions.shape[1]], cfg.temperature)
            terms["slot_kd"] = per_word[positions >= 0].mean()
    return terms


def total_loss(cfg: DistillConfig, terms: dict, distilling: bool) -> torch.Tensor:
    ce = cfg.ce_weight if distilling else 1.0
    weights = {"ce": ce, "slot_ce": ce, "kd": cfg.kd_weight, "slot_kd": cfg.kd_weight,
               "hidden": cfg.hidden_weight, "attention": cfg.attention_weight}
    return sum(weights[name] * value for name, value in terms.items())


def run(cfg: DistillConfig) -> Path:
    """Train the student; return the best checkpoint folder (HF layout, with tokenizer)."""
    with placement.session(cfg.device, cfg.precision, cfg.threads) as rt:
        return _train(cfg, rt)


def _teacher_signals(cfg: DistillConfig, rt, train: data_io.Dataset, texts: list[str],
                     tokenizer: Tokenizer) -> dict[str, torch.Tensor]:
    """The teacher's cached outputs on `texts`; for intermediate-layer losses, checks that the student shares
    the teacher's vocabulary (the teacher then runs on the student's token ids)."""
    cached = teacher_outputs(cfg.teacher, texts, train.labels, Path(cfg.out) / "teacher_cache",
                             backend=cfg.teacher_backend, max_length=cfg.max_length, slot_labels=train.slot_labels,
                             log=rt.log)
    sample = texts[:64]
    if (cfg.hidden_weight or cfg.attention_weight) and not np.array_equal(
            load_tokenizer(cfg.teacher)(sample, max_length=cfg.max_length).input_ids,
            tokenizer(sample, max_length=cfg.max_length).input_ids):
        raise ConfigError("intermediate-layer distillation (--hidden-weight/--attention-weight) needs the student "
                          "to share the teacher's vocabulary; start it from the teacher (no --init) or set them to 0")
    return {name: torch.from_numpy(a).float() for name, a in cached.items()}


def _train(cfg: DistillConfig, rt: placement.Runtime) -> Path:
    started = time.perf_counter()
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    splits = _splits(cfg)   # bad data is refused before anything is written
    train = splits["train"]
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = build_student(cfg, train)
    model.encoder.embeddings.word.weight.requires_grad_(not cfg.freeze_embeddings)
    distilling = cfg.teacher is not None
    intermediate_on = distilling and bool(cfg.hidden_weight or cfg.attention_weight)
    teacher_model = (load_pretrained(cfg.teacher)[0].eval().to(rt.device)
                     if distilling and (cfg.augment or intermediate_on) else None)
    unlabelled = list(data_io.read_text_lines(cfg.unlabelled)) if cfg.unlabelled else []
    if distilling and cfg.augment:
        unlabelled += augment.augmented_texts(train, cfg.teacher, teacher_model.encoder.embeddings.word.weight,
                                              augment.AugmentSettings(copies=cfg.augment), cfg.seed,
                                              generator=cfg.augment_generator, device=rt.device)
    texts = train.texts + unlabelled
    tensors = labelled.encode(tokenizer, texts, cfg.max_length, train.label_ids() + [labelled.IGNORE] * len(unlabelled),
                              [e.tags for e in train.examples] + [None] * len(unlabelled), train.slot_labels)
    teacher = _teacher_signals(cfg, rt, train, texts, tokenizer) if distilling else None
    intermediate = Intermediate(model, teacher_model, cfg.attention_weight > 0) if intermediate_on else None
    if intermediate is None:
        teacher_model = None
    if rt.is_main:
        dataclass_io.save(cfg, out / "config.toml")
    evals = {name: labelled.encode(tokenizer, splits[name].texts, cfg.max_length, splits[name].label_ids(),
                                   [e.tags for e in splits[name].examples], train.slot_labels)
             for name in ("validation", "test") if name in splits}

    student = Student(model, intermediate).to(rt.device)
    per_step = cfg.batch_size * rt.world_size
    steps_per_epoch = max(1, len(texts) // per_step)
    total_steps = min(steps_per_epoch * cfg.epochs, cfg.max_steps or 1 << 62)
    optimizer = adamw(student, cfg.lr, cfg.weight_decay, eps=1e-8)
    scheduler = warmup_linear(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    rt.log(f"{'distil' if distilling else 'fine-tune'}: {len(train)} examples + {len(unlabelled)} for the teacher "
           f"to label, {model.num_parameters():,} params, {total_steps} steps on {rt.device} ({rt.precision}, "
           f"{rt.world_size} process(es))")

    def step(trainer, rows, done):
        batch = {k: v.to(rt.device) for k, v in labelled.take(tensors, rows).items()}
        soft = {k: v[rows].to(rt.device) for k, v in teacher.items()} if teacher else None
        inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        targets = None
        if teacher_model is not None:
            with torch.no_grad():
                _, hidden = teacher_model(*inputs, output_hidden_states=True)
                targets = intermediate.teacher_targets(teacher_model, hidden, batch["attention_mask"])
        logits, inner = trainer(*inputs, targets)
        terms = loss_terms(cfg, logits, inner, batch, soft)
        return {"loss": total_loss(cfg, terms, distilling), **terms}

    def shuffled(position):
        """Each epoch a fresh order of the texts; each process takes its slice of every global batch."""
        done = position["step"] if position else 0
        while True:
            epoch, index = divmod(done, steps_per_epoch)
            order = torch.from_numpy(np.random.default_rng(cfg.seed + epoch).permutation(len(texts)))
            done += 1
            yield order[index * per_step + rt.rank * cfg.batch_size:][:cfg.batch_size], {"step": done}

    def validate():
        report = scoring.evaluate(model, evals["validation"], splits["validation"], rt)
        return scoring.selection_score(report), report

    settings = loop.LoopSettings(steps=total_steps, log_every=cfg.log_every, save_every=cfg.save_every,
                                 eval_every=cfg.eval_every or steps_per_epoch, patience=cfg.patience,
                                 max_grad_norm=1.0)
    student.train()
    outcome = loop.Loop(student, optimizer, scheduler, settings, rt, folder=out, resume=cfg.resume, seed=cfg.seed,
                        compile_mode="default" if cfg.compile else None, evaluate=validate,
                        keep_best=lambda _: save_pretrained(model, out / "best", tokenizer),
                        summarize=lambda window, done: {"epoch": done / steps_per_epoch, **loop.window_means(window)},
                        metadata={"workflow": "distill" if distilling else "finetune"}).run(step, shuffled)
    return _finish(cfg, rt, splits, evals, outcome, started)


def _finish(cfg, rt, splits, evals, outcome: loop.LoopState, started: float) -> Path:
    out = Path(cfg.out)
    best = out / "best"
    if not rt.is_main:
        return best
    metrics = {"workflow": "distill" if cfg.teacher else "finetune", "teacher": cfg.teacher,
               "best_step": outcome.best_step, "train_examples": len(splits["train"]),
               "validation": outcome.best_report}
    model = load_pretrained(best)[0].to(rt.device)
    validation = scoring.predict(model, evals["validation"], splits["validation"], rt)
    threshold = scoring.choose_oos_threshold(validation[0], splits["validation"].labels,
                                             splits["validation"].label_ids(), cfg.oos_max_in_scope_loss)
    if threshold is not None:
        scoring.store_oos_threshold(best, threshold)
        metrics["validation"] = scoring.report(splits["validation"], validation, threshold)
    if "test" in splits:
        predicted = scoring.predict(model, evals["test"], splits["test"], rt)
        metrics["test"] = scoring.report(splits["test"], predicted, threshold)
        if threshold is not None:
            metrics["test_without_threshold"] = {k: v for k, v in scoring.report(splits["test"], predicted).items()
                                                 if k != "per_class"}
    metrics["wall_time_s"] = round(time.perf_counter() - started, 1)
    with_atomic_json(out / "metrics.json", metrics)
    if cfg.plot:
        curves.plot(curves.read_rows(out / curves.METRICS_LOG),
                    ["loss", "kd", "ce", "val_accuracy", "val_macro_f1", "val_oos_recall"],
                    out / "curves.png", title=f"{metrics['workflow']} — {Path(cfg.data).name}")
    summary = {k: round(v, 4) for k, v in metrics.get("test", metrics["validation"]).items()
               if k in ("accuracy", "macro_f1", "oos_recall", "in_scope_accuracy", "slot_f1", "oos_threshold")}
    rt.log(f"best checkpoint {best} (step {metrics['best_step']}); "
           f"{'test' if 'test' in metrics else 'validation'}: {summary}; {metrics['wall_time_s']} s")
    return best


def with_atomic_json(path: Path, obj) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def prepared_teacher(cfg: DistillConfig) -> Path:
    """The teacher checkpoint: `cfg.teacher` if it has a task head; else `cfg.teacher` fine-tuned on the data
    (OUT/teacher; a finished one is reused, an interrupted one resumed)."""
    if has_task_head(cfg.teacher):
        return Path(cfg.teacher)
    folder = Path(cfg.out) / TEACHER_FOLDER
    if (folder / "metrics.json").exists() and (folder / "best" / "config.json").exists():
        placement.log.info(f"teacher: reusing {folder / 'best'} (fine-tuned from {cfg.teacher})")
        return folder / "best"
    placement.log.info(f"teacher: {cfg.teacher} has no task head; fine-tuning it on {cfg.data} first")
    teacher_cfg = dataclasses.replace(
        cfg, out=str(folder), teacher=None, init=cfg.teacher, preset=None, num_layers=None, tokenizer=None,
        unlabelled=[], hidden_weight=0.0, attention_weight=0.0, augment=0, augment_generator=None,
        epochs=cfg.teacher_epochs, max_steps=0, lr=cfg.teacher_lr, patience=cfg.teacher_patience, eval_every=0,
        plot=False)
    teacher_cfg.eval_every = max(1, len(_splits(teacher_cfg)["train"]) // (2 * cfg.batch_size))
    return run(teacher_cfg)


def distill(cfg: DistillConfig) -> Path:
    if cfg.teacher is None:
        raise ConfigError("distill needs a teacher (--teacher FOLDER); without one, use finetune")
    if cfg.augment_generator:   # a bad folder is refused before the teacher's fine-tuning writes to OUT
        augment.load_generator(cfg.augment_generator)
    encoder = cfg.teacher
    teacher = prepared_teacher(cfg)
    # No --init: the student is the teacher's own pre-trained encoder, cut to num_layers by select_layers.
    return run(dataclasses.replace(cfg, teacher=str(teacher), init=cfg.init or encoder))


def finetune(cfg: DistillConfig) -> Path:
    if cfg.teacher is not None:
        raise ConfigError("finetune trains without a teacher; use distill to learn from one")
    return run(cfg)


_CONFIG_FILE = click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                            help="A TOML/JSON DistillConfig; flags override it.")


@click.command("distill")
@_CONFIG_FILE
@dataclass_options(DistillConfig, overlay=True)
def distill_command(config_file, **flags):
    """Distil a teacher into an ELECTRA-Small student; prints the best checkpoint folder."""
    click.echo(distill(config_from_cli(DistillConfig, config_file, flags)))


@click.command("finetune")
@_CONFIG_FILE
@dataclass_options(DistillConfig, exclude=TEACHER_ONLY, overlay=True)
def finetune_command(config_file, **flags):
    """Fine-tune a model on labelled data; prints the best checkpoint folder."""
    click.echo(finetune(config_from_cli(DistillConfig, config_file, flags)))
