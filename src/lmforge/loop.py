"""The one training loop: pretraining today, fine-tuning and distillation through other objectives.

Read top to bottom: set up (device, dtype, optimizer, resume, DDP), then each step
  1. takes the step's global batch from the objective (a pure function of the step),
  2. runs this process's micro-batches under autocast, each loss divided by the global
     target count, so accumulation and any number of processes give the same gradient,
  3. clips, steps AdamW at the learning rate the budget's progress calls for,
  4. logs, evaluates and checkpoints on their cadences,
until a budget limit is spent. Multi-process runs use torch's DDP under `torchrun`.
"""

from __future__ import annotations

import collections
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

import torch
import torch.distributed as dist

from lmforge import attention as attention_mod
from lmforge import checkpoint, hardware, optim
from lmforge.config import option
from lmforge.errors import LmforgeError


@dataclass
class TrainConfig:
    objective: Literal["clm", "mlm"] = option("clm", "clm: next-token prediction (decoders); mlm: masked tokens (encoders)")
    batch_size: int = option(32, "global batch in sequences per optimizer step (all processes, all accumulation steps)")
    micro_batch_size: Optional[int] = option(None, "sequences per forward pass in one process; default: batch_size / processes (no accumulation)")
    lr: float = option(1e-3, "peak learning rate")
    min_lr: float = option(1e-4, "learning rate at the end of the budget")
    warmup_steps: int = option(100, "linear warmup steps")
    schedule: Literal["cosine", "linear", "constant"] = option("cosine", "decay from lr to min_lr over the budget")
    weight_decay: float = option(0.1, "AdamW weight decay on matrices (not on biases or norms)")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.99, "AdamW beta2")
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0 disables)")
    layer_decay: float = option(1.0, "layer-wise LR decay: the block k below the top trains at lr x layer_decay^k (1: off)")
    max_steps: Optional[int] = option(None, "budget: optimizer steps")
    max_tokens: Optional[int] = option(None, "budget: training tokens")
    max_minutes: Optional[float] = option(None, "budget: wall-clock minutes of training")
    max_flops: Optional[float] = option(None, "budget: training FLOPs (6N + attention per token)")
    stop_at_step: Optional[int] = option(None, "stop after this step as if interrupted, keeping the full budget's schedule (resume later)")
    eval_every: int = option(250, "evaluate on the validation split every N steps and at the end (0: only at the end)")
    eval_windows: Optional[int] = option(None, "at most this many validation windows per evaluation (default: the whole split)")
    best_metric: Optional[str] = option(None, "keep a best/ model folder chosen by this evaluation metric (e.g. val_loss, accuracy)")
    best_mode: Literal["max", "min"] = option("min", "whether a larger (max) or smaller (min) best_metric is better")
    early_stopping_patience: int = option(0, "stop after this many evaluations without a better best_metric (0: never)")
    save_every: int = option(0, "write a resumable checkpoint every N steps (0: only at the end)")
    keep_last: int = option(2, "keep this many newest checkpoints")
    log_every: int = option(10, "append a metrics.jsonl row and print progress every N steps (0: first and last step only)")
    seed: int = option(1337, "seed for initialisation, data order and masking")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    precision: Literal["auto", "fp32", "bf16"] = option("auto", "bf16 autocast where the hardware supports it (auto), or force fp32 / bf16")
    compile: bool = option(False, "torch.compile the model (first step compiles for seconds; pays off on larger models)")
    attention: attention_mod.Kernel = option("auto", "attention kernel; auto: under bf16 on CPU, time sdpa, sdpa in fp32 and eager on the first micro-batch and keep the fastest (else the model's default)")
    mlm_probability: float = option(0.15, "mlm: fraction of tokens masked")
    sparse_prediction: bool = option(True, "mlm: send only masked rows through the vocabulary projection (Cramming)")

    def budget(self) -> optim.Budget:
        return optim.Budget(self.max_steps, self.max_tokens, self.max_minutes * 60 if self.max_minutes else None, self.max_flops)


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
class Process:
    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls, device: torch.device) -> "Process":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(int(os.environ.get("RANK", "0")), world)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def from_main(self, value: int) -> int:
        """Rank 0's `value` on every process (so all ranks make rank 0's choice)."""
        if self.world == 1:
            return value
        tensor = torch.tensor([value])
        dist.broadcast(tensor, src=0)
        return int(tensor)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            value = value.clone()
            dist.all_reduce(value)
        return value

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


@dataclass
class Runtime:
    """Where and how the loop runs; handed to evaluators so they batch and cast the same way."""

    device: torch.device
    dtype: torch.dtype
    proc: Process
    micro: int

    def autocast(self):
        return autocast(self.device, self.dtype)


Evaluator = Callable[[torch.nn.Module, Runtime], dict]


def micro_batches(batch: dict[str, torch.Tensor], rank: int, world: int, micro: int) -> list[dict[str, torch.Tensor]]:
    """This process's share of the global batch, cut into micro-batches of `micro` rows."""
    rows = next(iter(batch.values())).shape[0]
    if rows % world:
        raise LmforgeError(f"train.batch_size {rows} is not divisible by the {world} processes; pick a multiple")
    share = rows // world
    mine = {k: v[rank * share : (rank + 1) * share] for k, v in batch.items()}
    return [{k: v[i : i + micro] for k, v in mine.items()} for i in range(0, share, micro)]


def _device_batch(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16 autocast on `device`, or nothing for fp32 (the one place this choice is made)."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def validation_loss(module: torch.nn.Module, objective, windows: torch.Tensor, runtime: Runtime) -> float:
    """Mean loss per target over the validation windows, the windows shared out across processes."""
    module.eval()
    total = torch.zeros(2, dtype=torch.float64)
    micro, proc = runtime.micro, runtime.proc
    for start in range(proc.rank * micro, windows.shape[0], micro * proc.world):
        batch = objective.eval_batch(windows[start : start + micro])
        count = objective.targets(batch)
        if count == 0:
            continue
        with runtime.autocast():
            loss = module(**_device_batch(batch, runtime.device))
        total += torch.tensor([float(loss), count], dtype=torch.float64)
    module.train()
    total = proc.sum(total)
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")


def _track_best(state: dict, metrics: dict, cfg: TrainConfig, run_dir: Path, model, tokenizer, proc: Process) -> None:
    """Save best/ when `cfg.best_metric` improves; count evaluations without improvement."""
    if cfg.best_metric not in metrics:
        raise LmforgeError(f"train.best_metric '{cfg.best_metric}' is not among the evaluation metrics ({', '.join(metrics)}); pick one of those")
    value = metrics[cfg.best_metric]
    better = state["best"] is None or (value > state["best"] if cfg.best_mode == "max" else value < state["best"])
    if better:
        state.update(best=value, best_step=state["step"], evals_without_improvement=0)
        if proc.main:
            checkpoint.save(run_dir / "best", model, tokenizer)
        proc.barrier()
    else:
        state["evals_without_improvement"] += 1
        patience = cfg.early_stopping_patience
        state["stopped_early"] = bool(patience) and state["evals_without_improvement"] >= patience


def _format_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class MetricsLog:
    """metrics.jsonl, appended a row at a time; on resume, cut back to the checkpoint's step."""

    def __init__(self, path: Path, enabled: bool):
        self.path = path
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        if not (self.enabled and self.path.is_file()):
            return
        rows = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        self.path.write_text("".join(r + "\n" for r in rows))

    def append(self, row: dict) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")


def trial_step(module: torch.nn.Module, sample: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> None:
    """One forward+backward of `sample` that leaves no gradients and no RNG draws behind."""
    try:
        with torch.random.fork_rng(devices=[]):
            with autocast(device, dtype):
                loss = module(**_device_batch(sample, device))
            loss.backward()
    finally:
        for param in module.parameters():
            param.grad = None


def choose_attention(module: torch.nn.Module, sample: dict[str, torch.Tensor], cfg: "TrainConfig", runtime: Runtime,
                     resumed: str | None = None) -> dict:
    """Set the attention kernel `cfg.attention` names, or with `auto` the fastest on `sample`
    (rank 0 times, every rank follows); a resumed run keeps the kernel it chose (`resumed`), so its
    numbers match an uninterrupted run. Returns {"kernel": name or None, "ms": {kernel: ms}}."""
    fixed = cfg.attention if cfg.attention != "auto" else resumed
    if fixed is not None:
        attention_mod.use(module, fixed)
        return {"kernel": fixed, "ms": {}}
    kernel, times = attention_mod.choose(module, lambda: trial_step(module, sample, runtime.device, runtime.dtype), runtime.dtype, runtime.device)
    if kernel is None:
        return {"kernel": None, "ms": {}}
    names = list(attention_mod.KERNELS)
    kernel = names[runtime.proc.from_main(names.index(kernel))]
    attention_mod.use(module, kernel)
    if runtime.proc.main:
        print(f"attention: {kernel} (forward+backward of one micro-batch: " + ", ".join(f"{k} {v:.1f} ms" for k, v in times.items()) + ")", flush=True)
    return {"kernel": kernel, "ms": times}


def compiled_or_eager(module: torch.nn.Module, sample: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype, main: bool) -> torch.nn.Module:
    """`torch.compile(module)`, tried on one micro-batch; eager, with a warning, if compiling fails
    (no C++ compiler, an unsupported op). The trial leaves no gradients and no RNG draws behind."""
    compiled = torch.compile(module)
    started = time.perf_counter()
    try:
        trial_step(compiled, sample, device, dtype)
    except Exception as err:  # noqa: BLE001 - any compiler failure means: train eagerly
        print(f"torch.compile failed ({type(err).__name__}: {str(err).splitlines()[0][:120]}); training without it", flush=True)
        compiled = module
    if main and compiled is not module:
        print(f"compiled the model in {time.perf_counter() - started:.0f} s", flush=True)
    return compiled


def fit(model, objective, cfg: TrainConfig, run_dir: str | Path, tokenizer=None, *, evaluator: Evaluator | None = None,
        flops_per_token: float = 0.0, resume: bool = False) -> dict:
    """Train `model` on `objective` until the budget in `cfg` is spent; return the run summary.

    `evaluator(module, runtime)` returns a dict of metrics (e.g. `val_loss`), called every
    `cfg.eval_every` steps and at the end; with `cfg.best_metric`, the best model so far is kept
    in `run_dir/best/` and `cfg.early_stopping_patience` can end the run.
    Writes metrics.jsonl and checkpoints/step_N into `run_dir` (main process only).
    Raises TrainingDiverged on a non-finite loss, leaving earlier checkpoints untouched.
    """
    run_dir = Path(run_dir)
    device = hardware.resolve_device(cfg.device)
    dtype = hardware.resolve_precision(cfg.precision, device)
    proc = Process.from_env(device)
    budget = cfg.budget()
    if not budget.is_set():
        raise LmforgeError("no budget set: give one of --train.max_steps, --train.max_tokens, --train.max_minutes, --train.max_flops")
    micro = cfg.micro_batch_size or cfg.batch_size // proc.world
    torch.manual_seed(cfg.seed)
    model.to(device)
    optimizer = optim.adamw(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), layer_decay=cfg.layer_decay)
    if proc.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(run_dir / "metrics.jsonl", proc.main)
    state = {"step": 0, "tokens": 0, "seconds": 0.0, "flops": 0.0, "warmup_end_progress": None, "finished": False,
             "best": None, "best_step": None, "evals_without_improvement": 0, "stopped_early": False}
    if resume and (last := checkpoint.latest(run_dir)) is not None:
        checkpoint.load_weights(model, last)
        state = checkpoint.load_state(last, optimizer)
        log.truncate_after(state["step"])
        if proc.main:
            print(f"resuming from {last} (step {state['step']}, {state['tokens']:,} tokens)", flush=True)
    elif proc.main:  # a fresh start (or a resume with nothing saved yet): no rows of an earlier attempt
        log.path.unlink(missing_ok=True)
    runtime = Runtime(device, dtype, proc, micro)
    model.train()
    module: torch.nn.Module = LossModule(model, objective)
    sample = micro_batches(objective.batch(state["step"]), proc.rank, proc.world, micro)[0]
    attention = choose_attention(module, sample, cfg, runtime, state.get("attention"))
    state["attention"] = attention["kernel"]
    if proc.world > 1:
        module = torch.nn.parallel.DistributedDataParallel(module)
    forward = compiled_or_eager(module, sample, device, dtype, proc.main) if cfg.compile else module
    peak = hardware.peak_flops(device, dtype) * proc.world
    recent = collections.deque(maxlen=50)
    metrics: dict = {}
    started = time.perf_counter() - state["seconds"]
    window_started, window_tokens = time.perf_counter(), 0

    def progress() -> float:
        return budget.progress(state["step"], state["tokens"], state["seconds"], state["flops"])

    while progress() < 1.0 and not state["stopped_early"] and (cfg.stop_at_step is None or state["step"] < cfg.stop_at_step):
        step = state["step"]
        lr = optim.learning_rate(step, progress(), state["warmup_end_progress"], cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        batch = objective.batch(step)
        count = objective.targets(batch)
        tokens_per_step = objective.tokens(batch)
        parts = micro_batches(batch, proc.rank, proc.world, micro)
        step_loss = torch.zeros((), dtype=torch.float64)
        for i, part in enumerate(parts):
            last_part = i == len(parts) - 1
            sync = nullcontext() if (proc.world == 1 or last_part) else module.no_sync()
            with sync:
                with autocast(device, dtype):
                    loss_sum = forward(**_device_batch(part, device))
                # / global count: every target weighs the same whatever the split; x world undoes DDP's mean
                (loss_sum * (proc.world / count)).backward()
            step_loss += loss_sum.detach().double().cpu()
        step_loss = float(proc.sum(step_loss)) / count
        if not math.isfinite(step_loss):
            optimizer.zero_grad(set_to_none=True)
            last = checkpoint.latest(run_dir)
            keep = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
            raise TrainingDiverged(f"loss became {step_loss} at step {step + 1}; stopped without saving ({keep}); lower train.lr, raise train.warmup_steps or use train.precision fp32")
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["tokens"] += tokens_per_step
        state["flops"] += flops_per_token * tokens_per_step
        state["seconds"] = time.perf_counter() - started
        window_tokens += tokens_per_step
        if state["warmup_end_progress"] is None and state["step"] >= cfg.warmup_steps:
            state["warmup_end_progress"] = progress()
        recent.append(step_loss)
        done = progress() >= 1.0
        interrupted = state["step"] == cfg.stop_at_step  # as if killed here: a checkpoint, no extra log or eval row
        row = None
        if (cfg.log_every and state["step"] % cfg.log_every == 0) or state["step"] == 1 or done:
            now = time.perf_counter()
            rate = window_tokens / max(now - window_started, 1e-9)
            window_started, window_tokens = now, 0
            row = {"step": state["step"], "tokens": state["tokens"], "loss": step_loss, "lr": lr,
                   "tokens_per_second": round(rate, 1), "elapsed_seconds": round(state["seconds"], 2)}
        if evaluator is not None and ((cfg.eval_every and state["step"] % cfg.eval_every == 0) or done):
            metrics = evaluator(module, runtime)
            row = row or {"step": state["step"], "tokens": state["tokens"], "loss": step_loss, "lr": lr,
                          "tokens_per_second": None, "elapsed_seconds": round(state["seconds"], 2)}
            row.update(metrics)
            if cfg.best_metric:
                _track_best(state, metrics, cfg, run_dir, model, tokenizer, proc)
                done = done or state["stopped_early"]
        if row is not None:
            log.append(row)
            if proc.main:
                p = progress()
                eta = state["seconds"] * (1 - p) / p if p > 0 else 0
                rate_text = f"{row['tokens_per_second'] / 1000:.1f}k tok/s" if row["tokens_per_second"] else ""
                val_text = "".join(f" | {k} {v:.4f}" for k, v in metrics.items() if k in row and isinstance(v, float))
                print(f"step {state['step']:>6} | loss {step_loss:.4f}{val_text} | lr {lr:.2e} | {rate_text} | "
                      f"{_format_seconds(state['seconds'])} elapsed | ETA {_format_seconds(eta)}", flush=True)
        state["finished"] = progress() >= 1.0 or state["stopped_early"]
        if (cfg.save_every and state["step"] % cfg.save_every == 0) or done or interrupted:
            if proc.main:
                checkpoint.save(run_dir / "checkpoints" / f"step_{state['step']}", model, tokenizer, optimizer, state)
                checkpoint.prune(run_dir, cfg.keep_last)
            proc.barrier()

    tokens_per_second = state["tokens"] / max(state["seconds"], 1e-9)
    if state["stopped_early"]:
        stopped_by = "early_stopping"
    elif state["finished"]:
        stopped_by = budget.limiting(state["step"], state["tokens"], state["seconds"], state["flops"])
    else:
        stopped_by = "stop_at_step"
    return {
        "val_loss": metrics.get("val_loss"),
        "metrics": metrics,
        "best": {"metric": cfg.best_metric, "value": state["best"], "step": state["best_step"]} if cfg.best_metric else None,
        "train_loss": sum(recent) / len(recent) if recent else None,
        "steps": state["step"],
        "tokens": state["tokens"],
        "training_seconds": round(state["seconds"], 2),
        "tokens_per_second": round(tokens_per_second, 1),
        "flops": state["flops"],
        "mfu": flops_per_token * tokens_per_second / peak,
        "peak_flops": peak,
        "precision": str(dtype).replace("torch.", ""),
        "attention": attention["kernel"],
        "attention_ms": attention["ms"],
        "device": str(device),
        "processes": proc.world,
        "stopped_by": stopped_by,
        "finished": state["finished"] or state["stopped_early"],
    }
