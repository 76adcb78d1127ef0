"""The one training loop: pretraining today, fine-tuning and distillation through other objectives.

Read top to bottom: set up (device, dtype, optimizer, resume, DDP), then each step
  1. takes the step's global batch from the objective (a pure function of the step) and seeds
     dropout from (seed, step, rank), so a resumed run draws what an uninterrupted one would,
  2. runs this process's micro-batches under autocast, each loss divided by the global
     target count, so accumulation and any number of processes give the same gradient,
  3. clips, steps AdamW at the learning rate the budget's progress calls for,
  4. logs, evaluates and checkpoints on their cadences,
until a budget limit is spent, or Ctrl-C / SIGTERM asks it to stop (it then checkpoints the step
it finished). Budgets count training time only: evaluation and checkpoint writes are timed apart.
Multi-process runs use torch's DDP under `torchrun`.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from lmforge import attention as attention_mod
from lmforge import checkpoint, hardware, optim
from lmforge.errors import LmforgeError, RunInterrupted
from lmforge.metrics_log import MetricsLog
from lmforge.process import Process, StopSignals
from lmforge.train_config import TrainConfig


class TrainingDiverged(LmforgeError):
    """The loss became NaN or infinite."""


class LossModule(torch.nn.Module):
    """model + objective as one module, so DDP and torch.compile see the whole forward."""

    def __init__(self, model: torch.nn.Module, objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, **batch):
        return self.objective.loss(self.model, batch)


@dataclass
class Runtime:
    """Where and how the loop runs; handed to evaluators so they batch and cast the same way."""

    device: torch.device
    dtype: torch.dtype
    proc: Process
    micro: int

    @classmethod
    def start(cls, cfg: TrainConfig) -> Runtime:
        """Device, dtype and process of `cfg`; joins the torchrun job (see `Process.from_env`)."""
        device = hardware.resolve_device(cfg.device)
        dtype = hardware.resolve_precision(cfg.precision, device)
        proc = Process.from_env(device)
        return cls(device, dtype, proc, cfg.micro_batch_size or cfg.batch_size // proc.world)

    def autocast(self):
        return autocast(self.device, self.dtype)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}


Evaluator = Callable[[torch.nn.Module, Runtime], dict]


def micro_batches(batch: dict[str, torch.Tensor], rank: int, world: int, micro: int) -> list[dict[str, torch.Tensor]]:
    """This process's share of the global batch, cut into micro-batches of `micro` rows."""
    rows = next(iter(batch.values())).shape[0]
    if rows % world:
        raise LmforgeError(f"train.batch_size {rows} is not divisible by the {world} processes; pick a multiple")
    share = rows // world
    mine = {k: v[rank * share : (rank + 1) * share] for k, v in batch.items()}
    return [{k: v[i : i + micro] for k, v in mine.items()} for i in range(0, share, micro)]


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16 autocast on `device`, or nothing for fp32 (the one place this choice is made)."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The dropout seed of one step on one process: resume needs no RNG state to match, and
    ranks draw different masks (one shared seed would correlate every rank's dropout)."""
    return (seed * 1_000_003 + step) * 1_009 + rank


@torch.no_grad()
def validation_loss(module: torch.nn.Module, objective, batch: dict[str, torch.Tensor], runtime: Runtime) -> float:
    """Mean loss per target over a fixed validation batch (all windows, built once with
    `objective.eval_batch`), its rows shared out across processes.

    `module` must not be DDP-wrapped: its forward would run collectives, and ranks get unequal
    row counts here (one `sum` at the end is the only collective)."""
    module.eval()
    total = torch.zeros(2, dtype=torch.float64)
    micro, proc = runtime.micro, runtime.proc
    rows = next(iter(batch.values())).shape[0]
    for start in range(proc.rank * micro, rows, micro * proc.world):
        part = {k: v[start : start + micro] for k, v in batch.items()}
        count = objective.targets(part)
        if count == 0:
            continue
        with runtime.autocast():
            loss = module(**runtime.to_device(part))
        total += torch.tensor([float(loss), count], dtype=torch.float64)
    module.train()
    total = proc.sum(total)
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")


@dataclass
class LoopState:
    """What a checkpoint's `training_state/state.json` holds (read through `read` and `restore`
    only), and what the loop updates each step."""

    step: int = 0
    tokens: int = 0
    seconds: float = 0.0  # training time only (no evaluation, no checkpoint writes)
    eval_seconds: float = 0.0
    evaluations: int = 0  # how many evaluations eval_seconds covers (an ETA for the next one)
    checkpoint_seconds: float = 0.0
    flops: float = 0.0
    warmup_end_progress: Optional[float] = None
    finished: bool = False
    best: Optional[float] = None
    best_step: Optional[int] = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    attention: Optional[str] = None
    compile: Optional[str] = None  # "compiled" or "eager", as chosen at the start

    @classmethod
    def from_dict(cls, data: dict) -> LoopState:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @classmethod
    def read(cls, folder: Path) -> LoopState:
        """The state saved in checkpoint `folder` (nothing restored)."""
        return cls.from_dict(checkpoint.read_state(folder))

    @classmethod
    def restore(cls, folder: Path, optimizer) -> LoopState:
        """The state saved in checkpoint `folder`, with the optimizer and RNG restored from it."""
        return cls.from_dict(checkpoint.load_state(folder, optimizer))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def progress(self, budget: optim.Budget) -> float:
        """The fraction of `budget` spent (1.0 or more: the run is over)."""
        return budget.progress(self.step, self.tokens, self.seconds, self.flops)

    def keep_training(self, budget: optim.Budget, stop_at: int | None) -> bool:
        """The loop's condition: budget left, no early stop, `stop_at` (a stop_at_step) not reached."""
        return self.progress(budget) < 1.0 and not self.stopped_early and (stop_at is None or self.step < stop_at)

    def advance(self, tokens: int, flops: float, seconds: float) -> None:
        """Count one finished optimizer step."""
        self.step += 1
        self.tokens += tokens
        self.flops += flops
        self.seconds += seconds

    def in_warmup(self, cfg: TrainConfig, budget: optim.Budget) -> bool:
        return self.warmup_end_progress is None and not optim.warmup_done(
            self.step, self.progress(budget), cfg.warmup_steps, cfg.warmup_fraction
        )


@dataclass
class RunSummary:
    """What `fit` returns; `as_dict()` is the core of the stage's report.json."""

    val_loss: Optional[float]
    metrics: dict  # the last evaluation's
    best: Optional[dict]  # {"metric", "value", "step", "mode"} with train.best_metric
    train_loss: Optional[float]  # mean over the last 50 steps
    steps: int
    tokens: int
    training_seconds: float
    evaluation_seconds: float
    checkpoint_seconds: float
    tokens_per_second: float
    flops: float
    mfu: float
    peak_flops: float
    precision: str
    attention: Optional[str]
    attention_ms: dict
    compile: dict
    device: str
    processes: int
    stopped_by: str  # a budget's name (max_steps, ...), early_stopping or stop_at_step
    stopped_in_warmup: bool
    finished: bool

    @classmethod
    def of(
        cls,
        state: LoopState,
        cfg: TrainConfig,
        runtime: Runtime,
        metrics: dict,
        recent: collections.deque,
        attention: dict,
        compiled: dict,
        flops_per_token: float,
        peak: float,
    ) -> RunSummary:
        tokens_per_second = state.tokens / max(state.seconds, 1e-9)
        if state.stopped_early:
            stopped_by = "early_stopping"
        elif state.finished:
            stopped_by = cfg.budget().limiting(state.step, state.tokens, state.seconds, state.flops)
        else:
            stopped_by = "stop_at_step"
        best = {
            "metric": cfg.best_metric,
            "value": state.best,
            "step": state.best_step,
            "mode": "max" if cfg.larger_is_better() else "min",
        }
        return cls(
            val_loss=metrics.get("val_loss"),
            metrics=metrics,
            best=best if cfg.best_metric else None,
            train_loss=sum(recent) / len(recent) if recent else None,
            steps=state.step,
            tokens=state.tokens,
            training_seconds=round(state.seconds, 2),
            evaluation_seconds=round(state.eval_seconds, 2),
            checkpoint_seconds=round(state.checkpoint_seconds, 2),
            tokens_per_second=round(tokens_per_second, 1),
            flops=state.flops,
            mfu=flops_per_token * tokens_per_second / peak,
            peak_flops=peak,
            precision=str(runtime.dtype).replace("torch.", ""),
            attention=attention["kernel"],
            attention_ms=attention["ms"],
            compile=compiled,
            device=str(runtime.device),
            processes=runtime.proc.world,
            stopped_by=stopped_by,
            stopped_in_warmup=state.in_warmup(cfg, cfg.budget()),
            finished=state.finished or state.stopped_early,
        )

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _track_best(
    state: LoopState, metrics: dict, cfg: TrainConfig, run_dir: Path, model, tokenizer, proc: Process
) -> None:
    """Save best/ when `cfg.best_metric` improves; count evaluations without improvement."""
    if cfg.best_metric not in metrics:
        raise LmforgeError(
            f"train.best_metric '{cfg.best_metric}' is not among the evaluation metrics ({', '.join(metrics)}); pick one of those"
        )
    value = metrics[cfg.best_metric]
    better = state.best is None or (value > state.best if cfg.larger_is_better() else value < state.best)
    if better:
        state.best, state.best_step, state.evals_without_improvement = value, state.step, 0
        if proc.main:
            checkpoint.save(run_dir / "best", model, tokenizer)
        proc.barrier()
    else:
        state.evals_without_improvement += 1
        patience = cfg.early_stopping_patience
        state.stopped_early = bool(patience) and state.evals_without_improvement >= patience


def _format_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _start_state(model, optimizer, run_dir: Path, log: MetricsLog, proc: Process, resume: bool) -> LoopState:
    """With `resume`, the newest checkpoint's state (weights, optimizer and RNG restored from it,
    metrics.jsonl cut back to its step); else a fresh state and no rows of an earlier attempt."""
    if proc.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.clean_leftovers(run_dir)
    last = checkpoint.latest(run_dir) if resume else None
    if last is None:
        log.clear()
        return LoopState()
    checkpoint.load_weights(model, last)
    state = LoopState.restore(last, optimizer)
    log.truncate_after(state.step)
    if proc.main:
        print(f"resuming from {last} (step {state.step}, {state.tokens:,} tokens)", flush=True)
    return state


def _training_module(
    loss_module: LossModule, objective, cfg: TrainConfig, runtime: Runtime, state: LoopState
) -> tuple[torch.nn.Module, dict, dict]:
    """The module the steps run, with the attention kernel and compile choice made on the first
    micro-batch (a resumed run keeps those in `state`; new ones are recorded there), DDP-wrapped
    under torchrun. Also returns the attention and compile records for the summary."""
    proc = runtime.proc
    sample = micro_batches(objective.batch(state.step), proc.rank, proc.world, runtime.micro)[0]
    attention = attention_mod.choose_attention(loss_module, sample, cfg, runtime, state.attention)
    # compile (and its trials) before DDP wraps the module: a trial that fails inside DDP would leave
    # a reduction half done; DDP over a compiled module is supported and syncs the same gradients
    module, compiled = attention_mod.choose_compile(loss_module, sample, cfg, runtime, attention, state.compile)
    state.compile = compiled["choice"]
    attention["kernel"] = compiled.get("kernel", attention["kernel"])  # compiled, another kernel may have won
    state.attention = attention["kernel"]
    if proc.world > 1:
        module = torch.nn.parallel.DistributedDataParallel(module)
    return module, attention, compiled


def _set_lr(optimizer, cfg: TrainConfig, state: LoopState, progress: float) -> float:
    """The learning rate of the coming step, set on every parameter group (times its layer-decay scale)."""
    lr = optim.learning_rate(
        state.step,
        progress,
        state.warmup_end_progress,
        cfg.lr,
        cfg.min_lr,
        cfg.warmup_steps,
        cfg.schedule,
        cfg.warmup_fraction,
    )
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr


def _train_step(module: torch.nn.Module, objective, step: int, seed: int, runtime: Runtime) -> tuple[float, int]:
    """Forward and backward of step `step`'s global batch, this process's micro-batches of it,
    leaving the gradients for the optimizer; returns (mean loss per target over all processes, tokens)."""
    proc = runtime.proc
    torch.manual_seed(step_seed(seed, step, proc.rank))
    batch = objective.batch(step)
    count = objective.targets(batch)
    parts = micro_batches(batch, proc.rank, proc.world, runtime.micro)
    step_loss = torch.zeros((), dtype=torch.float64)
    for i, part in enumerate(parts):
        sync = nullcontext() if (proc.world == 1 or i == len(parts) - 1) else module.no_sync()
        with sync:
            with runtime.autocast():
                loss_sum = module(**runtime.to_device(part))
            # / global count: every target weighs the same whatever the split; x world undoes DDP's mean
            (loss_sum * (proc.world / count)).backward()
        step_loss += loss_sum.detach().double().cpu()
    return float(proc.sum(step_loss)) / count, objective.tokens(batch)


def _check_finite(step_loss: float, step: int, optimizer, run_dir: Path) -> None:
    if not math.isfinite(step_loss):
        optimizer.zero_grad(set_to_none=True)
        last = checkpoint.latest(run_dir)
        keep = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"loss became {step_loss} at step {step + 1}; stopped without saving ({keep}); lower train.lr, raise train.warmup_steps or use train.precision fp32"
        )


class _Throughput:
    """Training seconds and tokens since the last logged row: that row's tokens_per_second."""

    def __init__(self):
        self.seconds, self.tokens = 0.0, 0

    def add(self, seconds: float, tokens: int) -> None:
        self.seconds += seconds
        self.tokens += tokens

    def take(self) -> float:
        """The rate since the last call, and a new window."""
        rate = round(self.tokens / max(self.seconds, 1e-9), 1)
        self.seconds, self.tokens = 0.0, 0
        return rate


def _log_row(state: LoopState, step_loss: float, lr: float, tokens_per_second: float | None) -> dict:
    """A metrics.jsonl row (evaluation metrics are added to it on evaluated steps)."""
    return {
        "step": state.step,
        "tokens": state.tokens,
        "loss": step_loss,
        "lr": lr,
        "tokens_per_second": tokens_per_second,
        "elapsed_seconds": round(state.seconds, 2),
    }


def _evaluate(
    evaluator: Evaluator,
    loss_module,
    runtime: Runtime,
    state: LoopState,
    cfg: TrainConfig,
    run_dir: Path,
    model,
    tokenizer,
) -> dict:
    """Run `evaluator`, keep best/ when `cfg.best_metric` improved; the time goes to `state.eval_seconds`."""
    started = time.perf_counter()
    mean = state.eval_seconds / state.evaluations if state.evaluations else 0.0
    if runtime.proc.main and mean >= 10:  # evaluations that take a while are announced
        print(f"step {state.step:>6} | evaluating (about {mean:.0f} s)...", flush=True)
    metrics = evaluator(loss_module, runtime)
    state.evaluations += 1
    if cfg.best_metric:
        _track_best(state, metrics, cfg, run_dir, model, tokenizer, runtime.proc)
    state.eval_seconds += time.perf_counter() - started
    return metrics


class _Checkpoints:
    """Writes checkpoints/step_N (rank 0; every rank waits), timed apart from training."""

    def __init__(self, run_dir: Path, model, tokenizer, optimizer, cfg: TrainConfig, proc: Process):
        self.run_dir, self.model, self.tokenizer = run_dir, model, tokenizer
        self.optimizer, self.cfg, self.proc = optimizer, cfg, proc
        self.last_save = time.monotonic()

    def due_by_time(self) -> bool:
        """On rank 0 (its clock decides for everyone): save_every_minutes of wall time since the last write."""
        minutes = self.cfg.save_every_minutes
        return self.proc.main and minutes > 0 and time.monotonic() - self.last_save >= 60 * minutes

    def save(self, state: LoopState) -> Path:
        started = time.perf_counter()
        folder = self.run_dir / "checkpoints" / f"step_{state.step}"
        if self.proc.main:
            checkpoint.save(folder, self.model, self.tokenizer, self.optimizer, state.as_dict())
            checkpoint.prune(self.run_dir, self.cfg.keep_last)
        self.proc.barrier()
        state.checkpoint_seconds += time.perf_counter() - started
        self.last_save = time.monotonic()
        return folder


def _progress_line(state: LoopState, row: dict, metrics: dict, progress: float) -> str:
    # the ETA is wall time: evaluation and checkpoint writes take their share of what is left too
    spent = state.seconds + state.eval_seconds + state.checkpoint_seconds
    eta = spent * (1 - progress) / progress if progress > 0 else 0
    rate_text = f"{row['tokens_per_second'] / 1000:.1f}k tok/s" if row["tokens_per_second"] else ""
    val_text = "".join(f" | {k} {v:.4f}" for k, v in metrics.items() if k in row and isinstance(v, float))
    return (
        f"step {state.step:>6} | loss {row['loss']:.4f}{val_text} | lr {row['lr']:.2e} | {rate_text} | "
        f"{_format_seconds(state.seconds)} training | ETA {_format_seconds(eta)}"
    )


def fit(
    model,
    objective,
    cfg: TrainConfig,
    run_dir: str | Path,
    tokenizer=None,
    *,
    evaluator: Evaluator | None = None,
    flops_per_token: float = 0.0,
    resume: bool = False,
    tensorboard: bool = False,
) -> RunSummary:
    """Train `model` on `objective` until the budget in `cfg` is spent; return the run summary.

    `evaluator(module, runtime)` returns a dict of metrics (e.g. `val_loss`), called every
    `cfg.eval_every` steps and at the end; with `cfg.best_metric`, the best model so far is kept
    in `run_dir/best/` and `cfg.early_stopping_patience` can end the run.
    Writes metrics.jsonl and checkpoints/step_N into `run_dir` (main process only).
    Raises TrainingDiverged on a non-finite loss, leaving earlier checkpoints untouched, and
    RunInterrupted after checkpointing when Ctrl-C or SIGTERM asked it to stop.
    """
    cfg.check_ready()  # before joining a torchrun job or touching the device
    run_dir = Path(run_dir)
    runtime = Runtime.start(cfg)
    proc, budget = runtime.proc, cfg.budget()
    torch.manual_seed(cfg.seed)
    model.to(runtime.device)
    optimizer = optim.adamw(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), layer_decay=cfg.layer_decay)
    log = MetricsLog(run_dir, proc.main, tensorboard)
    state = _start_state(model, optimizer, run_dir, log, proc, resume)
    stop_at = cfg.stop_at_step if (cfg.stop_at_step or 0) > state.step else None  # a resumed run goes past an old stop
    model.train()
    loss_module = LossModule(model, objective)
    module, attention, compiled = _training_module(loss_module, objective, cfg, runtime, state)
    peak = hardware.peak_flops(runtime.device, runtime.dtype) * proc.world
    recent = collections.deque(maxlen=50)  # the summary's train_loss
    throughput = _Throughput()
    checkpoints = _Checkpoints(run_dir, model, tokenizer, optimizer, cfg, proc)
    metrics: dict = {}

    with StopSignals(proc.main) as signals:
        while state.keep_training(budget, stop_at):
            step_started = time.perf_counter()
            lr = _set_lr(optimizer, cfg, state, state.progress(budget))
            step_loss, tokens = _train_step(module, objective, state.step, cfg.seed, runtime)
            _check_finite(step_loss, state.step, optimizer, run_dir)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step_seconds = time.perf_counter() - step_started
            state.advance(tokens, flops_per_token * tokens, step_seconds)
            throughput.add(step_seconds, tokens)
            if state.warmup_end_progress is None and not state.in_warmup(cfg, budget):  # warm-up ended at this step
                state.warmup_end_progress = state.progress(budget)
            recent.append(step_loss)
            done = state.progress(budget) >= 1.0
            interrupted = state.step == stop_at  # as if killed here: a checkpoint, no extra log or eval row
            logged = (cfg.log_every and state.step % cfg.log_every == 0) or state.step == 1 or done
            evaluated = evaluator is not None and ((cfg.eval_every and state.step % cfg.eval_every == 0) or done)
            if logged or evaluated:
                row = _log_row(state, step_loss, lr, throughput.take() if logged else None)
                if evaluated:
                    metrics = _evaluate(evaluator, loss_module, runtime, state, cfg, run_dir, model, tokenizer)
                    row.update(metrics)
                    done = done or state.stopped_early
                log.append(row)
                if proc.main:
                    print(_progress_line(state, row, metrics, state.progress(budget)), flush=True)
            state.finished = state.progress(budget) >= 1.0 or state.stopped_early
            # any rank's signal stops every rank at this step
            stop_requested, by_time = proc.any(signals.received is not None, checkpoints.due_by_time())
            if (
                (cfg.save_every and state.step % cfg.save_every == 0)
                or done
                or interrupted
                or by_time
                or stop_requested
            ):
                checkpoints.save(state)
            if stop_requested and not done:
                raise RunInterrupted(state.step, run_dir / "checkpoints" / f"step_{state.step}")

    if evaluator is not None and not metrics and state.finished:  # resumed a finished run whose end a kill cut short
        metrics = evaluator(loss_module, runtime)
    if state.in_warmup(cfg, budget) and proc.main:
        print(
            f"note: the run stopped at step {state.step}, inside warm-up (the learning rate was still rising); "
            "resume with a larger budget, or lower train.warmup_steps",
            flush=True,
        )
    log.close()
    return RunSummary.of(state, cfg, runtime, metrics, recent, attention, compiled, flops_per_token, peak)
