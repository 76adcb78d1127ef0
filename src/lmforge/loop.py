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
import json
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

import torch
import torch.distributed as dist

from lmforge import attention as attention_mod
from lmforge import checkpoint, hardware, optim, publish
from lmforge.config import option
from lmforge.errors import LmforgeError, RunInterrupted


LOWER_IS_BETTER = ("loss", "mse", "mae", "error", "perplexity")


@dataclass
class TrainConfig:
    objective: Literal["clm", "mlm"] = option("clm", "clm: next-token prediction (decoders); mlm: masked tokens (encoders)")
    batch_size: int = option(32, "global batch in sequences per optimizer step (all processes, all accumulation steps)")
    micro_batch_size: Optional[int] = option(None, "sequences per forward pass in one process; default: batch_size / processes (no accumulation)")
    lr: float = option(1e-3, "peak learning rate")
    min_lr: float = option(1e-4, "learning rate at the end of the budget")
    warmup_steps: int = option(100, "linear warm-up steps (ended earlier by warmup_fraction)")
    warmup_fraction: float = option(0.1, "warm-up ends by this fraction of the budget at the latest, so a short time, token or FLOP budget still ends annealed (1: no cap)")
    schedule: Literal["cosine", "linear", "constant"] = option("cosine", "decay from lr to min_lr over the budget")
    weight_decay: float = option(0.1, "AdamW weight decay on matrices (not on biases or norms)")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.99, "AdamW beta2")
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0 disables)")
    layer_decay: float = option(1.0, "layer-wise LR decay: the block k below the top trains at lr x layer_decay^k (1: off)")
    max_steps: Optional[int] = option(None, "budget: optimizer steps")
    max_tokens: Optional[int] = option(None, "budget: training tokens")
    max_minutes: Optional[float] = option(None, "budget: minutes of training (evaluation and checkpoint writes not counted)")
    max_flops: Optional[float] = option(None, "budget: training FLOPs (6N + attention per token)")
    stop_at_step: Optional[int] = option(None, "stop after this step as if interrupted, keeping the full budget's schedule (resume later; not saved in config.yaml)")
    eval_every: int = option(250, "evaluate on the validation split every N steps and at the end (0: only at the end)")
    eval_windows: Optional[int] = option(512, "validation windows per evaluation, evenly spread over the split (null: the whole split)")
    best_metric: Optional[str] = option(None, "keep a best/ model folder chosen by this evaluation metric (e.g. val_loss, accuracy)")
    best_mode: Literal["auto", "max", "min"] = option("auto", "whether a larger (max) or smaller (min) best_metric is better; auto: min for losses and errors (val_loss, mse, ...), else max")
    early_stopping_patience: int = option(0, "stop after this many evaluations without a better best_metric (0: never)")
    save_every: int = option(0, "write a resumable checkpoint every N steps (0: only by time and at the end)")
    save_every_minutes: float = option(10.0, "write a resumable checkpoint every N minutes of wall time (0: off); Ctrl-C and SIGTERM always write one")
    keep_last: int = option(2, "keep this many newest checkpoints")
    log_every: int = option(10, "append a metrics.jsonl row and print progress every N steps (0: first and last step only)")
    seed: int = option(1337, "seed for initialisation, data order, masking and dropout")
    device: str = option("auto", "cpu, cuda, cuda:N or auto (under torchrun, cuda means cuda:LOCAL_RANK)")
    precision: Literal["auto", "fp32", "bf16"] = option("auto", "bf16 autocast where the hardware supports it (auto), or force fp32 / bf16")
    compile: Literal[True, False, "auto"] = option(False, "torch.compile the model: true, false, or auto (compile, time steps both ways on the run's own batch, keep the faster)")
    attention: attention_mod.Kernel = option("auto", "attention kernel; auto: under bf16 on CPU, time sdpa, sdpa in fp32 and eager on the first micro-batch and keep the fastest (else the model's default)")
    mlm_probability: float = option(0.15, "mlm: fraction of tokens masked")
    sparse_prediction: bool = option(True, "mlm: send only masked rows through the vocabulary projection (Cramming)")

    def budget(self) -> optim.Budget:
        return optim.Budget(self.max_steps, self.max_tokens, self.max_minutes * 60 if self.max_minutes else None, self.max_flops)

    def larger_is_better(self) -> bool:
        """Direction of `best_metric`: `auto` treats losses and errors (val_loss, mse, ...) as lower-is-better."""
        if self.best_mode != "auto":
            return self.best_mode == "max"
        return not any(word in (self.best_metric or "") for word in LOWER_IS_BETTER)


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
    """This process's place in a torchrun job (rank 0 of 1 without torchrun) and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_env(cls, device: torch.device) -> "Process":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if world > 1 and not dist.is_initialized():
            # NCCL reduces CUDA tensors only; gloo the CPU ones (see `sum`, `from_main`)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(int(os.environ.get("RANK", "0")), world, device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def from_main(self, value: int) -> int:
        """Rank 0's `value` on every process (so all ranks make rank 0's choice)."""
        if self.world == 1:
            return value
        tensor = torch.tensor([value], device=self._comm_device)
        dist.broadcast(tensor, src=0)
        return int(tensor.cpu())

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return value
        value = value.to(self._comm_device, copy=True)
        dist.all_reduce(value)
        return value.cpu()

    def any(self, *flags: bool) -> list[bool]:
        """Each flag, true on every process if it is true on any (one small all-reduce)."""
        if self.world == 1:
            return list(flags)
        tensor = torch.tensor([int(f) for f in flags], device=self._comm_device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return [bool(v) for v in tensor.cpu().tolist()]

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
            loss = module(**_device_batch(part, runtime.device))
        total += torch.tensor([float(loss), count], dtype=torch.float64)
    module.train()
    total = proc.sum(total)
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")


@dataclass
class LoopState:
    """What a checkpoint's `training_state/state.json` holds, and what the loop updates each step."""

    step: int = 0
    tokens: int = 0
    seconds: float = 0.0  # training time only (no evaluation, no checkpoint writes)
    eval_seconds: float = 0.0
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
    def from_dict(cls, data: dict) -> "LoopState":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def as_dict(self) -> dict:
        import dataclasses

        return dataclasses.asdict(self)


def _track_best(state: LoopState, metrics: dict, cfg: TrainConfig, run_dir: Path, model, tokenizer, proc: Process) -> None:
    """Save best/ when `cfg.best_metric` improves; count evaluations without improvement."""
    if cfg.best_metric not in metrics:
        raise LmforgeError(f"train.best_metric '{cfg.best_metric}' is not among the evaluation metrics ({', '.join(metrics)}); pick one of those")
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


class MetricsLog:
    """metrics.jsonl, appended a row at a time; on resume, cut back to the checkpoint's step
    (rewritten through a temp file and a rename, so a kill never loses the earlier rows)."""

    def __init__(self, path: Path, enabled: bool):
        self.path = path
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        if not (self.enabled and self.path.is_file()):
            return
        rows = []
        for line in self.path.read_text().splitlines():
            try:
                if line.strip() and json.loads(line)["step"] <= step:
                    rows.append(line)
            except (ValueError, KeyError):  # a row cut short by a kill mid-append
                continue
        publish.write_text_atomic(self.path, "".join(r + "\n" for r in rows))

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


def _best_step_ms(step: Callable[[], None], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return round(best * 1e3, 2)


def choose_compile(module: torch.nn.Module, sample: dict[str, torch.Tensor], cfg: TrainConfig, runtime: Runtime,
                   attention: dict, resumed: str | None = None, repeats: int = 5, rounds: int = 3) -> tuple[torch.nn.Module, dict]:
    """The module to train with, compiled or not, and {"setting", "choice", "kernel", "ms"}.

    `true` compiles (eager, with a warning, if compiling fails: no C++ compiler, an unsupported op);
    `auto` compiles, then times forward+backward of `sample` both ways and keeps the faster (on some
    hosts of one machine kind compiling made the step 7-20% slower). A resumed run keeps its choice.
    The attention kernel is chosen with it: `attention` is the uncompiled choice, and when that was
    timed (`--train.attention auto`) and is not `eager`, the compiled step is timed with `eager`
    attention too, because inductor fuses eager attention's matmuls and softmax into few kernels (at
    T=64 the compiled eager step measured 27.9 ms and the compiled SDPA one 41.3 ms; uncompiled, an
    SDPA kernel can be the fastest). The winner's kernel is left set on the model.
    Trials leave no gradients and no RNG draws behind.
    """
    setting = cfg.compile
    info = {"setting": setting, "choice": "eager", "ms": {}}
    if setting is False or (setting == "auto" and resumed == "eager"):
        return module, info
    step = lambda m: lambda: trial_step(m, sample, runtime.device, runtime.dtype)  # noqa: E731
    uncompiled_kernel = attention["kernel"]
    kernels = [uncompiled_kernel]
    if attention["ms"] and uncompiled_kernel != "eager" and "eager" in attention["ms"]:
        kernels = ["eager", uncompiled_kernel]
    race_eager = setting == "auto" and resumed is None
    timed = race_eager or len(kernels) > 1
    compiled = torch.compile(module)
    started = time.perf_counter()
    failed = False
    for kernel in kernels:  # compile every candidate (one first call each)
        if kernel is not None:
            attention_mod.use(module, kernel)
        try:
            step(compiled)()
        except Exception as err:  # noqa: BLE001 - any compiler failure means: train eagerly
            print(f"torch.compile failed ({type(err).__name__}: {str(err).splitlines()[0][:120]}); training without it", flush=True)
            failed = True
        if runtime.proc.any(failed)[0]:  # one rank's failure makes every rank train eagerly
            if uncompiled_kernel is not None:
                attention_mod.use(module, uncompiled_kernel)
            return module, info
    compile_seconds = time.perf_counter() - started
    # candidates: (compiled?, kernel); timed in interleaved rounds, best of each, so a stall of the
    # machine during one candidate's turn does not decide the race (one sequential pass picked the
    # slower side in 1 of 6 runs on a busy 2-core host)
    candidates = [(True, k) for k in kernels] + ([(False, uncompiled_kernel)] if race_eager else [])
    ms = {c: float("inf") for c in candidates}
    if timed:
        if race_eager:
            if uncompiled_kernel is not None:
                attention_mod.use(module, uncompiled_kernel)
            step(module)()  # eager warm-up
        for _ in range(rounds):
            for is_compiled, kernel in candidates:
                if kernel is not None:
                    attention_mod.use(module, kernel)
                ms[(is_compiled, kernel)] = min(ms[(is_compiled, kernel)], _best_step_ms(step(compiled if is_compiled else module), repeats))
    # rank 0's timings decide for every rank (untimed: every ms is inf, the first candidate wins)
    winner = candidates[runtime.proc.from_main(min(range(len(candidates)), key=lambda i: ms[candidates[i]]))]
    best = min(kernels, key=lambda k: ms[(True, k)])  # the fastest compiled step, for the record
    info["kernel"] = winner[1]
    if winner[1] is not None:
        attention_mod.use(module, winner[1])
    if timed:
        info["ms"] = {"compiled": ms[(True, best)]}
        if len(kernels) > 1:
            info["ms"]["compiled_by_attention"] = {str(k): ms[(True, k)] for k in kernels}
        if race_eager:
            info["ms"]["eager"] = ms[(False, uncompiled_kernel)]
    if not winner[0]:
        if runtime.proc.main:
            print(f"compile: eager is faster ({info['ms']['eager']:.1f} ms vs {info['ms']['compiled']:.1f} ms compiled per micro-batch); training without it", flush=True)
        return module, info
    info["choice"] = "compiled"
    if runtime.proc.main:
        timing = f"; {info['ms']['compiled']:.1f} ms vs {info['ms']['eager']:.1f} ms eager per micro-batch" if "eager" in info["ms"] else ""
        kernel_text = f", {winner[1]} attention" if winner[1] is not None else ""
        if len(kernels) > 1:
            kernel_text += " (compiled: " + ", ".join(f"{k} {v:.1f} ms" for k, v in info["ms"]["compiled_by_attention"].items()) + ")"
        print(f"compiled the model in {compile_seconds:.0f} s{kernel_text}{timing}", flush=True)
    return compiled, info


class StopSignals:
    """Turns the first Ctrl-C (SIGINT) or SIGTERM into a request to stop after the current step;
    a second one interrupts at once. Handlers are only installed from the main thread."""

    def __init__(self, main: bool):
        self.main = main
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            self.__exit__()
            raise KeyboardInterrupt
        self.received = signum
        if self.main:
            print(f"\n{signal.Signals(signum).name}: finishing this step and writing a checkpoint (press Ctrl-C again to stop at once)", flush=True)

    def __enter__(self) -> "StopSignals":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                break
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def _resume(model, optimizer, run_dir: Path, log: MetricsLog, proc: Process) -> LoopState | None:
    last = checkpoint.latest(run_dir)
    if last is None:
        return None
    checkpoint.load_weights(model, last)
    state = LoopState.from_dict(checkpoint.load_state(last, optimizer))
    log.truncate_after(state.step)
    if proc.main:
        print(f"resuming from {last} (step {state.step}, {state.tokens:,} tokens)", flush=True)
    return state


def _progress_line(state: LoopState, row: dict, metrics: dict, progress: float) -> str:
    eta = state.seconds * (1 - progress) / progress if progress > 0 else 0
    rate_text = f"{row['tokens_per_second'] / 1000:.1f}k tok/s" if row["tokens_per_second"] else ""
    val_text = "".join(f" | {k} {v:.4f}" for k, v in metrics.items() if k in row and isinstance(v, float))
    return (f"step {state.step:>6} | loss {row['loss']:.4f}{val_text} | lr {row['lr']:.2e} | {rate_text} | "
            f"{_format_seconds(state.seconds)} training | ETA {_format_seconds(eta)}")


def fit(model, objective, cfg: TrainConfig, run_dir: str | Path, tokenizer=None, *, evaluator: Evaluator | None = None,
        flops_per_token: float = 0.0, resume: bool = False) -> dict:
    """Train `model` on `objective` until the budget in `cfg` is spent; return the run summary.

    `evaluator(module, runtime)` returns a dict of metrics (e.g. `val_loss`), called every
    `cfg.eval_every` steps and at the end; with `cfg.best_metric`, the best model so far is kept
    in `run_dir/best/` and `cfg.early_stopping_patience` can end the run.
    Writes metrics.jsonl and checkpoints/step_N into `run_dir` (main process only).
    Raises TrainingDiverged on a non-finite loss, leaving earlier checkpoints untouched, and
    RunInterrupted after checkpointing when Ctrl-C or SIGTERM asked it to stop.
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
        checkpoint.clean_leftovers(run_dir)
    log = MetricsLog(run_dir / "metrics.jsonl", proc.main)
    state = (_resume(model, optimizer, run_dir, log, proc) if resume else None) or LoopState()
    if state.step == 0 and proc.main:  # a fresh start: no rows of an earlier attempt
        log.path.unlink(missing_ok=True)
    stop_at = cfg.stop_at_step if (cfg.stop_at_step or 0) > state.step else None  # a resumed run goes past an old stop
    runtime = Runtime(device, dtype, proc, micro)
    model.train()
    loss_module = LossModule(model, objective)
    sample = micro_batches(objective.batch(state.step), proc.rank, proc.world, micro)[0]
    attention = choose_attention(loss_module, sample, cfg, runtime, state.attention)
    # compile (and its trials) before DDP wraps the module: a trial that fails inside DDP would leave
    # a reduction half done; DDP over a compiled module is supported and syncs the same gradients
    module, compiled = choose_compile(loss_module, sample, cfg, runtime, attention, state.compile)
    state.compile = compiled["choice"]
    attention["kernel"] = compiled.get("kernel", attention["kernel"])  # compiled, another kernel may have won
    state.attention = attention["kernel"]
    if proc.world > 1:
        module = torch.nn.parallel.DistributedDataParallel(module)
    peak = hardware.peak_flops(device, dtype) * proc.world
    recent = collections.deque(maxlen=50)
    metrics: dict = {}
    window_seconds, window_tokens = 0.0, 0
    last_save = time.monotonic()

    def progress() -> float:
        return budget.progress(state.step, state.tokens, state.seconds, state.flops)

    def in_warmup() -> bool:
        return state.warmup_end_progress is None and not optim.warmup_done(state.step, progress(), cfg.warmup_steps, cfg.warmup_fraction)

    def save_checkpoint() -> Path:
        nonlocal last_save
        started = time.perf_counter()
        folder = run_dir / "checkpoints" / f"step_{state.step}"
        if proc.main:
            checkpoint.save(folder, model, tokenizer, optimizer, state.as_dict())
            checkpoint.prune(run_dir, cfg.keep_last)
        proc.barrier()
        state.checkpoint_seconds += time.perf_counter() - started
        last_save = time.monotonic()
        return folder

    signals = StopSignals(proc.main)
    with signals:
        while progress() < 1.0 and not state.stopped_early and (stop_at is None or state.step < stop_at):
            step_started = time.perf_counter()
            step = state.step
            lr = optim.learning_rate(step, progress(), state.warmup_end_progress, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.schedule,
                                     cfg.warmup_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            torch.manual_seed(step_seed(cfg.seed, step, proc.rank))
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
                        loss_sum = module(**_device_batch(part, device))
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
            state.step += 1
            state.tokens += tokens_per_step
            state.flops += flops_per_token * tokens_per_step
            step_seconds = time.perf_counter() - step_started
            state.seconds += step_seconds
            window_seconds += step_seconds
            window_tokens += tokens_per_step
            if state.warmup_end_progress is None and optim.warmup_done(state.step, progress(), cfg.warmup_steps, cfg.warmup_fraction):
                state.warmup_end_progress = progress()
            recent.append(step_loss)
            done = progress() >= 1.0
            interrupted = state.step == stop_at  # as if killed here: a checkpoint, no extra log or eval row
            row = None
            if (cfg.log_every and state.step % cfg.log_every == 0) or state.step == 1 or done:
                row = {"step": state.step, "tokens": state.tokens, "loss": step_loss, "lr": lr,
                       "tokens_per_second": round(window_tokens / max(window_seconds, 1e-9), 1), "elapsed_seconds": round(state.seconds, 2)}
                window_seconds, window_tokens = 0.0, 0
            if evaluator is not None and ((cfg.eval_every and state.step % cfg.eval_every == 0) or done):
                eval_started = time.perf_counter()
                metrics = evaluator(loss_module, runtime)
                row = row or {"step": state.step, "tokens": state.tokens, "loss": step_loss, "lr": lr,
                              "tokens_per_second": None, "elapsed_seconds": round(state.seconds, 2)}
                row.update(metrics)
                if cfg.best_metric:
                    _track_best(state, metrics, cfg, run_dir, model, tokenizer, proc)
                    done = done or state.stopped_early
                state.eval_seconds += time.perf_counter() - eval_started
            if row is not None:
                log.append(row)
                if proc.main:
                    print(_progress_line(state, row, metrics, progress()), flush=True)
            state.finished = progress() >= 1.0 or state.stopped_early
            # rank 0's clock decides for everyone; any rank's signal stops every rank at this step
            by_time = proc.main and cfg.save_every_minutes > 0 and time.monotonic() - last_save >= 60 * cfg.save_every_minutes
            stop_requested, by_time = proc.any(signals.received is not None, by_time)
            if (cfg.save_every and state.step % cfg.save_every == 0) or done or interrupted or by_time or stop_requested:
                save_checkpoint()
            if stop_requested and not done:
                raise RunInterrupted(state.step, run_dir / "checkpoints" / f"step_{state.step}")

    if evaluator is not None and not metrics and state.finished:  # resumed a finished run whose end a kill cut short
        metrics = evaluator(loss_module, runtime)
    if in_warmup() and proc.main:
        print(f"note: the run stopped at step {state.step}, inside warm-up (the learning rate was still rising); "
              "resume with a larger budget, or lower train.warmup_steps", flush=True)
    tokens_per_second = state.tokens / max(state.seconds, 1e-9)
    if state.stopped_early:
        stopped_by = "early_stopping"
    elif state.finished:
        stopped_by = budget.limiting(state.step, state.tokens, state.seconds, state.flops)
    else:
        stopped_by = "stop_at_step"
    return {
        "val_loss": metrics.get("val_loss"),
        "metrics": metrics,
        "best": {"metric": cfg.best_metric, "value": state.best, "step": state.best_step,
                 "mode": "max" if cfg.larger_is_better() else "min"} if cfg.best_metric else None,
        "train_loss": sum(recent) / len(recent) if recent else None,
        "steps": state.step,
        "tokens": state.tokens,
        "training_seconds": round(state.seconds, 2),
        "evaluation_seconds": round(state.eval_seconds, 2),
        "checkpoint_seconds": round(state.checkpoint_seconds, 2),
        "tokens_per_second": round(tokens_per_second, 1),
        "flops": state.flops,
        "mfu": flops_per_token * tokens_per_second / peak,
        "peak_flops": peak,
        "precision": str(dtype).replace("torch.", ""),
        "attention": attention["kernel"],
        "attention_ms": attention["ms"],
        "compile": compiled,
        "device": str(device),
        "processes": proc.world,
        "stopped_by": stopped_by,
        "stopped_in_warmup": in_warmup(),
        "finished": state.finished or state.stopped_early,
    }
