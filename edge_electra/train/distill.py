"""Distil a teacher into an ELECTRA student, or fine-tune one on labels alone (`finetune` = no teacher).

Loss = ce_weight·CE(hard labels) + kd_weight·T²·KL(teacher/T ‖ student/T) + hidden_weight·MSE of the
students' [CLS] states, projected by learned linear maps, against the teacher's (layers evenly mapped),
plus the slot CE when the data has tags (joint intent + slot model). Without a teacher: CE only.
Evaluates on the validation split, keeps the best checkpoint (by accuracy), stops early, resumes.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
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
from edge_electra.train.checkpoint import load_pretrained, save_pretrained
from edge_electra.train.config import preset as model_preset
from edge_electra.errors import ConfigError, DataError
from edge_electra.train.model import Electra
from edge_electra.runtime.tokenizer import Tokenizer, load_tokenizer
from edge_electra.train import curves, labelled, loop, placement
from edge_electra.train.evaluate import classification_report, slot_f1
from edge_electra.train.optim import adamw, warmup_linear
from edge_electra.train.options import config_from_cli, trained_tokenizer
from edge_electra.train.teacher import BACKENDS, teacher_outputs


@dataclass
class DistillConfig(placement.RunSettings):
    data: str                          # a dataset folder (train/validation/test .jsonl) or a training file
    out: str = "runs/distill"
    validation: str | None = None      # default: the folder's validation split, else 10% of train
    test: str | None = None
    teacher: str | None = None         # None: plain fine-tuning
    teacher_backend: Literal["auto", "edge_electra", "transformers"] = "auto"
    init: str | None = None            # student checkpoint; None: a fresh `preset` model
    preset: str = "small"
    num_layers: int | None = None      # keep this many encoder layers
    layer_selection: Literal["even", "first"] = "even"
    tokenizer: str | None = None       # for a fresh student: vocab.txt, tokenizer.json or a folder
    unlabelled: list[str] = field(default_factory=list)  # in-domain text the teacher labels
    temperature: float = 2.0
    kd_weight: float = 0.5
    ce_weight: float = 0.5
    hidden_weight: float = 0.0
    max_length: int = 64
    epochs: int = 3
    max_steps: int = 0                 # stop (and end the schedule) after this many steps; 0 = all epochs
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    eval_every: int = 0                # steps; 0 = at the end of each epoch
    patience: int = 3                  # evaluations without improvement before stopping; 0 = never stop
    save_every: int = 200
    log_every: int = 50

    def __post_init__(self):
        if self.teacher_backend not in BACKENDS:
            raise ConfigError(f"teacher_backend must be one of {list(BACKENDS)}")
        if self.teacher is None and self.unlabelled:
            raise ConfigError("unlabelled text needs a teacher to label it; pass --teacher")
        if self.epochs < 1 or self.batch_size < 1 or self.max_length < 8:
            raise ConfigError("epochs and batch_size must be ≥ 1 and max_length ≥ 8")


def _splits(cfg: DistillConfig) -> dict[str, data_io.Dataset]:
    path = Path(cfg.data)
    splits = data_io.load_folder(path) if path.is_dir() and (path / "train.jsonl").exists() else {
        "train": data_io.load(path)}
    train = splits["train"]
    for name in ("validation", "test"):
        if getattr(cfg, name):
            splits[name] = data_io.load(getattr(cfg, name), train.labels, train.slot_labels)
    if "validation" not in splits:
        order = np.random.default_rng(cfg.seed).permutation(len(train))
        held = max(1, len(train) // 10)
        pick = lambda rows: data_io.Dataset([train.examples[i] for i in rows], train.labels, train.slot_labels)
        splits["validation"], splits["train"] = pick(order[:held]), pick(order[held:])
        if not len(splits["train"]):
            raise DataError(f"{path} holds {len(train)} row(s): too few to hold out a validation split and "
                            "train on the rest; add rows, or pass --validation")
    return splits


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
    heads = dict(task=task, labels=train.labels, slot_labels=train.slot_labels)
    if cfg.init:
        model, report = load_pretrained(cfg.init, **heads)
        tokenizer = load_tokenizer(cfg.tokenizer or report["source"])
    else:
        tokenizer = _fresh_tokenizer(cfg, train.texts)
        shape = model_preset(cfg.preset)
        model = Electra(shape.replace(vocab_size=tokenizer.vocab_size, max_position=max(shape.max_position, cfg.max_length),
                                      **heads))
    if cfg.num_layers:
        model = select_layers(model, cfg.num_layers, cfg.layer_selection)
    if cfg.max_length > model.config.max_position:
        raise ConfigError(f"max_length {cfg.max_length} exceeds the model's {model.config.max_position} positions")
    return model, tokenizer


class Student(nn.Module):
    """The student plus the linear maps from its [CLS] states to the teacher's (hidden-state loss only)."""

    def __init__(self, model: Electra, teacher_hidden: int | None):
        super().__init__()
        self.model = model
        self.project = nn.ModuleList(nn.Linear(model.config.hidden_size, teacher_hidden)
                                     for _ in range(model.config.num_layers)) if teacher_hidden else None

    def forward(self, input_ids, attention_mask, token_type_ids):
        if self.project is None:
            return self.model(input_ids, attention_mask, token_type_ids), None
        logits, hidden = self.model(input_ids, attention_mask, token_type_ids, output_hidden_states=True)
        return logits, [proj(h[:, 0]) for proj, h in zip(self.project, hidden[1:])]


def loss_terms(cfg: DistillConfig, logits, projected, batch, teacher: dict | None) -> dict[str, torch.Tensor]:
    intent, slots = logits if isinstance(logits, tuple) else (logits, None)
    terms = {}
    if (batch["labels"] != labelled.IGNORE).any():
        terms["ce"] = F.cross_entropy(intent.float(), batch["labels"], ignore_index=labelled.IGNORE)
    if slots is not None and (batch["slot_labels"] != labelled.IGNORE).any():
        terms["slot_ce"] = F.cross_entropy(slots.float().flatten(0, 1), batch["slot_labels"].flatten(),
                                           ignore_index=labelled.IGNORE)
    if teacher is not None:
        t = cfg.temperature
        terms["kd"] = F.kl_div(F.log_softmax(intent.float() / t, -1), F.softmax(teacher["logits"] / t, -1),
                               reduction="batchmean") * t * t
    if projected is not None:
        layers = teacher["hidden"].shape[1] - 1
        targets = [teacher["hidden"][:, round((i + 1) * layers / len(projected))] for i in range(len(projected))]
        terms["hidden"] = torch.stack([F.mse_loss(p.float(), t) for p, t in zip(projected, targets)]).mean()
    return terms


def total_loss(cfg: DistillConfig, terms: dict, distilling: bool) -> torch.Tensor:
    weights = {"ce": cfg.ce_weight if distilling else 1.0, "slot_ce": 1.0, "kd": cfg.kd_weight,
               "hidden": cfg.hidden_weight}
    return sum(weights[name] * value for name, value in terms.items())


@torch.inference_mode()
def evaluate(model: Electra, tensors: dict, dataset: data_io.Dataset, rt: placement.Runtime, batch_size: int = 128) -> dict:
    was_training = model.training
    model.eval()
    predictions, slot_predictions, slot_gold = [], [], []
    for start in range(0, len(dataset), batch_size):
        batch = labelled.take(tensors, slice(start, start + batch_size))
        with rt.autocast():
            out = model(*(batch[k].to(rt.device) for k in ("input_ids", "attention_mask", "token_type_ids")))
        intent, slots = out if isinstance(out, tuple) else (out, None)
        predictions.append(intent.argmax(-1).cpu())
        if slots is not None:
            keep = batch["slot_labels"] != labelled.IGNORE
            tags = slots.argmax(-1).cpu()
            for row in range(len(tags)):
                slot_predictions.append([dataset.slot_labels[i] for i in tags[row][keep[row]].tolist()])
                slot_gold.append([dataset.slot_labels[i] for i in batch["slot_labels"][row][keep[row]].tolist()])
    report = classification_report(np.asarray(dataset.label_ids()), torch.cat(predictions).numpy(), dataset.labels)
    if slot_gold:
        report["slot_f1"] = slot_f1(slot_gold, slot_predictions)
    model.train(was_training)
    return report


def run(cfg: DistillConfig) -> Path:
    """Train the student; return the best checkpoint folder (HF layout, with tokenizer)."""
    with placement.session(cfg.device, cfg.precision, cfg.threads) as rt:
        return _train(cfg, rt)


def _train(cfg: DistillConfig, rt: placement.Runtime) -> Path:
    started = time.perf_counter()
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    splits = _splits(cfg)   # bad data is refused before anything is written
    train = splits["train"]
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = build_student(cfg, train)
    unlabelled = list(data_io.read_text_lines(cfg.unlabelled)) if cfg.unlabelled else []
    texts = train.texts + unlabelled
    tensors = labelled.encode(tokenizer, texts, cfg.max_length, train.label_ids() + [labelled.IGNORE] * len(unlabelled),
                              [e.tags for e in train.examples] + [None] * len(unlabelled), train.slot_labels)
    distilling = cfg.teacher is not None
    teacher = None
    if distilling:
        cached = teacher_outputs(cfg.teacher, texts, train.labels, out / "teacher_cache", backend=cfg.teacher_backend,
                                 max_length=cfg.max_length, with_hidden=cfg.hidden_weight > 0,
                                 log=lambda m: rt.log(m))
        teacher = {name: torch.from_numpy(a).float() for name, a in cached.items()}
    if rt.is_main:
        dataclass_io.save(cfg, out / "config.toml")
    evals = {name: labelled.encode(tokenizer, splits[name].texts, cfg.max_length, splits[name].label_ids(),
                                   [e.tags for e in splits[name].examples], train.slot_labels)
             for name in ("validation", "test") if name in splits}

    student = Student(model, teacher["hidden"].shape[-1] if teacher and "hidden" in teacher else None).to(rt.device)
    per_step = cfg.batch_size * rt.world_size
    steps_per_epoch = max(1, len(texts) // per_step)
    total_steps = min(steps_per_epoch * cfg.epochs, cfg.max_steps or 1 << 62)
    optimizer = adamw(student, cfg.lr, cfg.weight_decay, eps=1e-8)
    scheduler = warmup_linear(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    rt.log(f"{'distil' if distilling else 'fine-tune'}: {len(texts)} examples, {model.num_parameters():,} params, "
           f"{total_steps} steps on {rt.device} ({rt.precision}, {rt.world_size} process(es))")

    def step(trainer, rows, done):
        batch = {k: v.to(rt.device) for k, v in labelled.take(tensors, rows).items()}
        soft = {k: v[rows].to(rt.device) for k, v in teacher.items()} if teacher else None
        logits, projected = trainer(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        terms = loss_terms(cfg, logits, projected, batch, soft)
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
        report = evaluate(model, evals["validation"], splits["validation"], rt)
        return report["accuracy"], report

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
    if "test" in splits:
        model, _ = load_pretrained(best)
        metrics["test"] = evaluate(model.to(rt.device), evals["test"], splits["test"], rt)
    metrics["wall_time_s"] = round(time.perf_counter() - started, 1)
    with_atomic_json(out / "metrics.json", metrics)
    if cfg.plot:
        curves.plot(curves.read_rows(out / curves.METRICS_LOG),
                    ["loss", "kd", "ce", "val_accuracy", "val_macro_f1", "val_oos_recall"],
                    out / "curves.png", title=f"{metrics['workflow']} — {Path(cfg.data).name}")
    summary = {k: round(v, 4) for k, v in metrics.get("test", metrics["validation"]).items()
               if k in ("accuracy", "macro_f1", "oos_recall", "slot_f1")}
    rt.log(f"best checkpoint {best} (step {metrics['best_step']}); "
           f"{'test' if 'test' in metrics else 'validation'}: {summary}; {metrics['wall_time_s']} s")
    return best


def with_atomic_json(path: Path, obj) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def distill(cfg: DistillConfig) -> Path:
    if cfg.teacher is None:
        raise ConfigError("distill needs a teacher (--teacher FOLDER); without one, use finetune")
    return run(cfg)


def finetune(cfg: DistillConfig) -> Path:
    if cfg.teacher is not None:
        raise ConfigError("finetune trains without a teacher; use distill to learn from one")
    return run(cfg)


def _options(command):
    """The flags distill and finetune share; each maps onto a DistillConfig field."""
    for decorator in reversed([
        click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                     help="A TOML/JSON DistillConfig; flags override it."),
        click.option("--data", help="Dataset folder (train/validation/test.jsonl) or a training file."),
        click.option("--out", help="Run folder (checkpoints, metrics, state)."),
        click.option("--validation", help="Validation file (default: the folder's split, else 10% of train)."),
        click.option("--test", help="Test file, evaluated with the best checkpoint."),
        click.option("--init", help="Student checkpoint folder (ELECTRA or BERT, HF layout)."),
        click.option("--preset", help="Model preset for a fresh student: small, tiny or base."),
        click.option("--num-layers", type=int, help="Keep this many encoder layers."),
        click.option("--layer-selection", type=click.Choice(["even", "first"]), help="Which layers to keep."),
        click.option("--tokenizer", help="vocab.txt, tokenizer.json or folder for a fresh student."),
        click.option("--max-length", type=int), click.option("--epochs", type=int),
        click.option("--max-steps", type=int, help="Stop after this many steps (0: all epochs)."),
        click.option("--batch-size", type=int), click.option("--lr", type=float),
        click.option("--weight-decay", type=float), click.option("--warmup-ratio", type=float),
        click.option("--eval-every", type=int, help="Steps between evaluations (0: each epoch)."),
        click.option("--patience", type=int, help="Evaluations without improvement before stopping (0: never)."),
        click.option("--save-every", type=int), click.option("--log-every", type=int),
        click.option("--seed", type=int),
        click.option("--device", type=click.Choice(list(placement.DEVICES))),
        click.option("--precision", type=click.Choice(list(placement.PRECISIONS))),
        click.option("--compile/--no-compile", default=None, help="torch.compile the student."),
        click.option("--threads", type=int, help="CPU threads (0: torch's default)."),
        click.option("--resume/--no-resume", default=None, help="Continue from OUT/state.pt if present."),
        click.option("--plot/--no-plot", default=None, help="Write curves.png at the end."),
    ]):
        command = decorator(command)
    return command


@click.command("distill")
@_options
@click.option("--teacher", help="Teacher folder: an edge-electra checkpoint or a HF sequence classifier.")
@click.option("--teacher-backend", type=click.Choice(list(BACKENDS)))
@click.option("--unlabelled", multiple=True, help="In-domain text (one a line, or JSONL) for the teacher to label.")
@click.option("--temperature", type=float)
@click.option("--kd-weight", type=float)
@click.option("--ce-weight", type=float)
@click.option("--hidden-weight", type=float, help="Weight of the [CLS] hidden-state MSE (0: off).")
def distill_command(config_file, **flags):
    """Distil a teacher into an ELECTRA-Small student; prints the best checkpoint folder."""
    click.echo(distill(config_from_cli(DistillConfig, config_file, flags)))


@click.command("finetune")
@_options
def finetune_command(config_file, **flags):
    """Fine-tune a model on labelled data; prints the best checkpoint folder."""
    click.echo(finetune(config_from_cli(DistillConfig, config_file, flags)))
