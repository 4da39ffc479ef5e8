"""The one training loop that pre-training, fine-tuning/distillation and quantization-aware training share.

A workflow supplies its model, optimizer and schedule, a `step` function (a batch in, its loss terms out)
and, if it evaluates, an `evaluate` function; the loop does the rest the same way for all three:
mixed precision and DistributedDataParallel (through placement), gradient clipping, logged windows of
metrics (metrics.jsonl, averaged over processes), evaluation every N steps keeping the best state, early
stopping, a time limit every process agrees on, and state checkpoints that resume exactly (state.py).
"""
from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from edge_electra.atomic import atomic_file
from edge_electra.train import curves, placement, state

log = logging.getLogger(__name__)

# (trainer, batch, steps done so far) -> loss terms, with the total under "loss"
Step = Callable[[torch.nn.Module, Any, int], dict[str, torch.Tensor]]
# the saved data position (None at the start) -> (batch, data position after it), without end
Batches = Callable[[dict | None], Iterator[tuple[Any, dict]]]
RUN_RECORD = "run.json"


@dataclass
class LoopSettings:
    steps: int
    log_every: int = 50
    save_every: int = 0               # steps between state checkpoints (also after each evaluation and at the end)
    eval_every: int = 0               # steps between evaluations (and one at the end); 0: never evaluate
    patience: int = 0                 # evaluations without improvement before stopping; 0: never stop early
    max_grad_norm: float = 0.0        # 0: no clipping
    time_limit_s: float = 0.0         # stop cleanly at the first log step after this; 0: never
    evaluate_first: bool = False      # the untrained model is the first candidate for the best state
    tokens_per_step: int = 0          # per process; adds tokens_per_s to the logged rows


@dataclass
class LoopState:
    """What the loop knows besides the weights; saved with the state so a resumed run carries on with it."""
    step: int = 0
    best_score: Any = None            # whatever `evaluate` scores with (a float, or a tuple compared in order)
    best_step: int | None = None
    best_report: dict | None = None
    stale: int = 0                    # evaluations since the last improvement
    stopped: str = ""                 # "", "done", "patience" or "time limit"
    best_state: dict | None = field(default=None, repr=False)   # in memory, when no keep_best is given


def window_means(window: list[dict]) -> dict[str, float]:
    """The mean of each single-number term over the steps of a window that have it."""
    sums: dict[str, list[float]] = {}
    for terms in window:
        for name, value in terms.items():
            if isinstance(value, float) or (isinstance(value, torch.Tensor) and value.ndim == 0):
                sums.setdefault(name, []).append(float(value))
    return {name: sum(values) / len(values) for name, values in sums.items()}


class Loop:
    """Train `model` with `optimizer` (and `scheduler`, stepped once a step) for `settings.steps` steps.

    `folder`: the run folder for state.pt, metrics.jsonl and run.json; None keeps everything in memory.
    `evaluate() -> (score, report)`: run on the main process; a higher score is better. `keep_best(step)`
    keeps an improved model (e.g. writes a checkpoint); without it the best state_dict stays in memory.
    `summarize(window, step) -> row` turns a window of step results into logged numbers (default:
    their means). `progress(step, steps)` is called after each step.
    """

    def __init__(self, model: torch.nn.Module, optimizer, scheduler, settings: LoopSettings,
                 rt: placement.Runtime, *, folder: str | Path | None = None, resume: bool = True, seed: int = 0,
                 compile_mode: str | None = None, evaluate: Callable[[], tuple[Any, dict]] | None = None,
                 keep_best: Callable[[int], None] | None = None,
                 summarize: Callable[[list[dict], int], dict] | None = None,
                 progress: Callable[[int, int], None] | None = None, metadata: dict | None = None):
        self.model, self.optimizer, self.scheduler, self.settings, self.rt = model, optimizer, scheduler, settings, rt
        self.folder = Path(folder) if folder is not None else None
        self.resume, self.seed, self.compile_mode = resume, seed, compile_mode
        self.evaluate, self.keep_best, self.progress = evaluate, keep_best, progress
        self.summarize = summarize or (lambda window, step: window_means(window))
        self.metadata = metadata or {}

    def run(self, step_fn: Step, batches: Batches) -> LoopState:
        s, rt = self.settings, self.rt
        run_state, position = self._start()
        if run_state.step >= s.steps:
            return run_state
        trainer = self.model if self.compile_mode is None else torch.compile(self.model, mode=self.compile_mode)
        trainer = rt.wrap(trainer)
        window, window_start = [], time.perf_counter()
        started = window_start
        for batch, position in batches(position):
            with rt.autocast():
                terms = step_fn(trainer, batch, run_state.step)
            self.optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            if s.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.max_grad_norm)
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            run_state.step = step = run_state.step + 1
            window.append({k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in terms.items()})
            last = step >= s.steps
            if step % s.log_every == 0 or last:
                self._log_window(window, step, time.perf_counter() - window_start)
                window, window_start = [], time.perf_counter()
                # Decided where the processes already meet, and together: one stopping alone would leave the
                # others waiting in their next all-reduce.
                if s.time_limit_s and rt.all_mean(float(window_start - started >= s.time_limit_s)) > 0:
                    run_state.stopped = "time limit"
                    rt.log(f"time limit of {s.time_limit_s:g} s reached at step {step}; `--resume` continues "
                           "from here")
            evaluated = self.evaluate is not None and (last or (s.eval_every and step % s.eval_every == 0))
            if evaluated and self._evaluate(run_state) and not run_state.stopped:
                run_state.stopped = "patience"
            if last and not run_state.stopped:
                run_state.stopped = "done"
            if evaluated or run_state.stopped or (s.save_every and step % s.save_every == 0):
                self._checkpoint(run_state, position)
            if self.progress is not None:
                self.progress(step, s.steps)
            if run_state.stopped:
                break
        rt.barrier()
        return run_state

    def _start(self) -> tuple[LoopState, dict | None]:
        """Seed this process's own random stream, or resume the saved state; log and record the start."""
        rt = self.rt
        torch.manual_seed(self.seed + rt.rank)   # processes draw different masks and dropout
        run_state, position = LoopState(), None
        saved = state.load_state(self.folder) if self.folder is not None and self.resume else None
        if saved is not None:
            state.restore(saved, modules={"model": self.model}, optimizer=self.optimizer, scheduler=self.scheduler,
                          rank=rt.rank, world_size=rt.world_size)
            run_state, position = LoopState(**{**saved["extra"], "stopped": ""}), saved["data"]
            rt.log(f"resumed from {self.folder / state.STATE_FILE} at step {run_state.step}")
        if self.folder is not None and rt.is_main:
            curves.keep_rows_until(self.folder / curves.METRICS_LOG, run_state.step)
            record = {**self.metadata, "world_size": rt.world_size, "precision": rt.precision,
                      "device": str(rt.device), "resumed_at_step": run_state.step if saved is not None else None}
            with atomic_file(self.folder / RUN_RECORD) as tmp:
                tmp.write_text(json.dumps(record, indent=2) + "\n")
        if saved is None and self.settings.evaluate_first and self.evaluate is not None:
            self._evaluate(run_state)
        return run_state, position

    def _log_window(self, window: list[dict], step: int, seconds: float) -> None:
        rt = self.rt
        lr = self.optimizer.param_groups[0]["lr"]
        summaries = rt.all_gather(self.summarize(window, step))
        names = dict.fromkeys(name for summary in summaries for name in summary)
        row = {"step": step, "lr": lr}
        for name in names:
            values = [summary[name] for summary in summaries if name in summary]
            row[name] = sum(values) / len(values)
        row["steps_per_s"] = len(window) / seconds
        if self.settings.tokens_per_step:
            row["tokens_per_s"] = row["steps_per_s"] * self.settings.tokens_per_step * rt.world_size
        if rt.is_main:
            if self.folder is not None:
                curves.append_row(self.folder / curves.METRICS_LOG, row)
            rt.log(curves.format_row(row))

    def _evaluate(self, run_state: LoopState) -> bool:
        """Evaluate on the main process and keep an improvement; True, agreed by all, when patience ran out."""
        rt, out_of_patience = self.rt, False
        if rt.is_main:
            score, report = self.evaluate()
            numbers = {f"val_{k}": v for k, v in report.items() if isinstance(v, (int, float))}
            if self.folder is not None:
                curves.append_row(self.folder / curves.METRICS_LOG, {"step": run_state.step, **numbers})
            rt.log(f"validation at step {run_state.step}: {curves.format_row(numbers)}")
            if run_state.best_score is None or score > run_state.best_score:
                run_state.best_score, run_state.best_step, run_state.best_report, run_state.stale = \
                    score, run_state.step, report, 0
                if self.keep_best is not None:
                    self.keep_best(run_state.step)
                else:
                    run_state.best_state = copy.deepcopy(self.model.state_dict())
            else:
                run_state.stale += 1
            out_of_patience = bool(self.settings.patience) and run_state.stale >= self.settings.patience
        return rt.all_mean(float(out_of_patience)) > 0

    def _checkpoint(self, run_state: LoopState, position: dict) -> None:
        if self.folder is None:
            return
        rngs = self.rt.all_gather(state.rng_states())   # every process's own streams
        if self.rt.is_main:
            extra = {k: v for k, v in vars(run_state).items() if k != "best_state"}
            state.save_state(self.folder, modules={"model": self.model}, optimizer=self.optimizer,
                             scheduler=self.scheduler, step=run_state.step, data=position, extra=extra, rng=rngs)
