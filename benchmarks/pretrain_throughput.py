"""Pretraining throughput: lmforge's training loop vs a transformers `Trainer` set up as an expert would.

Same model (built by `lmforge.model.build`, i.e. the stock transformers class and config),
same tokenizer and token shards (the ones lmforge caches), same batch size and step count:

  clm  LlamaForCausalLM 4 layers x 4 heads x 128 wide (SwiGLU 352), context 64, batch 12,
       char tokenizer on tinyshakespeare (nanoGPT's shakespeare-char shape)
  mlm  BertForMaskedLM 4 layers x 4 heads x 256 wide, seq 128, batch 32, WordPiece 8192
       trained on the same text; the Trainer masks with DataCollatorForLanguageModeling(0.15)

Five sides per task, each run in its own subprocess (so peak RSS is per side, taken from `os.wait4`):

  lmforge           `lmforge pretrain ...` as its recipe runs: precision auto (bf16 autocast on CPUs
                    with AVX512-BF16/AMX), attention kernel chosen by timing, `--train.compile auto`
                    (compiles with eager attention and with the uncompiled winner, times a few steps
                    each way, keeps the fastest step). The headline side.
  lmforge-eager     the same with `--train.compile false`      (information row)
  lmforge-compiled  the same with `--train.compile true`       (information row)
  trainer-expert    transformers.Trainer with bf16=True and the fastest of {sdpa, eager} attention x
                    {torch_compile off, on}, chosen by a short probe of all four before the repeats
                    (the same kind of measurement as lmforge's own choices; probe times in the JSON).
                    The headline peer: like-for-like.
  trainer-defaults  transformers.Trainer out of the box (fp32 on CPU, sdpa, no compile, fused AdamW);
                    a second, labelled row.

Sides run in the order E D L X C, then C X L D E (lmforge and trainer-expert adjacent, each first
every other repeat), repeated, so the machine's drift and other load hit every side alike.
Throughput counts training tokens only (batch x sequence per optimizer step), from the end of
warm-up steps (compilation included there) to the last step: no start-up, tokenizer training,
evaluation or saving. Two estimates per run: `steady` (tokens / seconds over the whole post-warm-up
span, the headline) and `median window` (median of the log-window rates, 10 steps CLM and 5 MLM).
The headline is lmforge / trainer-expert steady tokens/s per repeat, then their median;
targets: CLM >= 1.3x, MLM >= 2x. Hosts of this machine kind differ (bf16 matmul peak 389-904
GFLOP/s), so the bf16 and fp32 matmul peak is probed before every repeat and stated in every row.

    .venv/bin/python benchmarks/pretrain_throughput.py            # full run: 3 repeats, ~25 minutes on 2 idle cores
    .venv/bin/python benchmarks/pretrain_throughput.py --quick    # smoke run, ~8 minutes

A run during which other processes kept more than --max-other-load cores busy (measured from
/proc/stat minus the child's own CPU time) is discarded and run again, up to --retries times.
Results: benchmarks/results/pretrain_throughput.{json,md} (not written by --quick unless --out is given).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SIDES = (
    "lmforge-eager",
    "trainer-defaults",
    "lmforge",
    "trainer-expert",
    "lmforge-compiled",
)  # even repeats; odd ones run backwards
LMFORGE_COMPILE = {
    "lmforge": None,
    "lmforge-eager": "false",
    "lmforge-compiled": "true",
}  # None: --recipe-compile (auto)
TRAINER_SIDES = ("trainer-expert", "trainer-defaults")
HEADLINE = ("lmforge", "trainer-expert")


@dataclass(frozen=True)
class TrainerSetup:
    """How one Trainer side is configured: precision, attention kernel (None: the model's default), compile."""

    bf16: bool
    attention: Optional[str]
    compile: bool

    @property
    def label(self) -> str:
        return f"{'bf16' if self.bf16 else 'fp32'}, {self.attention or 'default'} attention, {'torch_compile' if self.compile else 'no compile'}"

    def argv(self) -> list[str]:
        return (
            (["--bf16"] if self.bf16 else [])
            + (["--attn", self.attention] if self.attention else [])
            + (["--compile"] if self.compile else [])
        )


TRAINER_DEFAULTS = TrainerSetup(bf16=False, attention=None, compile=False)
EXPERT_CANDIDATES = [TrainerSetup(True, kernel, compile_) for kernel in ("sdpa", "eager") for compile_ in (False, True)]


@dataclass
class Task:
    """One comparison: lmforge overrides (dotted keys, as on its CLI) plus the measurement plan."""

    name: str
    title: str
    overrides: dict[str, str]
    steps: int
    skip_steps: int  # warm-up steps (compilation included) left out of the throughput
    probe_steps: int  # steps of each trainer-expert candidate's probe run
    target: float  # lmforge / trainer-expert tokens/s the issue asks for
    log_every: int = 10  # lmforge --train.log_every, Trainer logging_steps, and the window of the median-window rate
    seq_len: int = 0
    batch_size: int = 0
    objective: str = "clm"

    def __post_init__(self):
        self.seq_len = int(self.overrides["model.context"])
        self.batch_size = int(self.overrides["train.batch_size"])
        self.objective = self.overrides.get("train.objective", "clm")

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_size

    def lmforge_overrides(self, out: str) -> dict[str, str]:
        """The full override set of one lmforge run (also used to find its cached tokenizer/shards)."""
        return {
            **self.overrides,
            "out": out,
            "train.max_steps": str(self.steps),
            "train.warmup_steps": str(max(1, self.steps // 10)),
            "train.eval_every": "1000000",  # evaluate once, at the end (outside the timed span)
            "train.eval_windows": "64",
            "train.log_every": str(self.log_every),
        }


# both tasks: 4 layers and 4 heads on the packaged tinyshakespeare
SHARED_OVERRIDES = {"data": "builtin:tinyshakespeare", "model.layers": "4", "model.heads": "4"}


def make_tasks(quick: bool, clm_steps: int | None, mlm_steps: int | None) -> list[Task]:
    """The two benchmark tasks; `quick` shrinks the step counts for a smoke run."""
    clm = Task(
        name="clm",
        title="CLM: Llama 4x128 (shakespeare-char), ctx 64, batch 12",
        overrides=SHARED_OVERRIDES
        | {"tokenizer.kind": "char", "model.family": "llama", "model.width": "128", "model.context": "64"}
        | {"train.batch_size": "12"},
        steps=clm_steps or (60 if quick else 300),
        skip_steps=20,
        probe_steps=40 if quick else 80,
        target=1.3,
    )
    mlm = Task(
        name="mlm",
        title="MLM: BERT 4x256, WordPiece 8k, seq 128, batch 32",
        overrides=SHARED_OVERRIDES
        | {"tokenizer.kind": "wordpiece", "tokenizer.vocab_size": "8192", "train.objective": "mlm"}
        | {"model.family": "bert", "model.width": "256", "model.context": "128", "train.batch_size": "32"},
        steps=mlm_steps or (30 if quick else 60),
        skip_steps=10,
        probe_steps=15 if quick else 25,
        target=2.0,
        log_every=5,
    )
    return [clm, mlm]


# --------------------------------------------------------------------------- preparation


def prepare(task: Task, workdir: Path) -> dict[str, str]:
    """Train (or reuse) lmforge's cached tokenizer and shards for `task`, outside any timed run.

    Uses the very config the CLI builds from the same overrides, so the lmforge runs hit
    this cache and the Trainer reads the same token ids.
    """
    from lmforge import config as config_mod
    from lmforge import documents, hardware
    from lmforge.pretrain import PretrainConfig, prepare_data
    from lmforge.process import Process

    overrides = dict(task.lmforge_overrides(str(workdir / f"prepare-{task.name}")))
    overrides["data"] = [overrides["data"]]
    cfg = config_mod.resolve(PretrainConfig, None, overrides)
    started = time.perf_counter()
    tok_dir, shard_dir = prepare_data(
        cfg, Process.from_env(hardware.resolve_device("cpu")), documents.resolve_sources(cfg.data)
    )
    return {
        "tokenizer": str(tok_dir),
        "shards": str(shard_dir),
        "prepare_seconds": round(time.perf_counter() - started, 2),
    }


# --------------------------------------------------------------------------- measurement helpers


def rates_from_marks(marks: list[tuple[int, float]], tokens_per_step: int, skip_steps: int) -> dict:
    """Throughput from (step, seconds-since-start) marks taken at the end of optimizer steps.

    steady: tokens per second from the first mark at or after `skip_steps` to the last mark.
    median_window: median over consecutive post-warm-up marks of each window's tokens/s.
    """
    marks = sorted(marks)
    kept = [m for m in marks if m[0] >= skip_steps]
    if len(kept) < 2:
        raise RuntimeError(f"not enough marks after warm-up step {skip_steps}: {marks[-3:]}")
    (s0, t0), (s1, t1) = kept[0], kept[-1]
    windows = [(b[0] - a[0]) * tokens_per_step / (b[1] - a[1]) for a, b in zip(kept, kept[1:]) if b[1] > a[1]]
    return {
        "from_step": s0,
        "to_step": s1,
        "timed_seconds": round(t1 - t0, 3),
        "ms_per_step": round(1e3 * (t1 - t0) / (s1 - s0), 2),
        "tokens_per_second": round((s1 - s0) * tokens_per_step / (t1 - t0), 1),
        "median_window_tokens_per_second": round(statistics.median(windows), 1),
        "window_tokens_per_second": [round(w, 1) for w in windows],
    }


def other_cpu_load(seconds: float = 1.0) -> float:
    """Busy cores on the machine over `seconds` (from /proc/stat); nothing of ours runs meanwhile."""

    def snapshot() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields[:8]), idle

    total0, idle0 = snapshot()
    time.sleep(seconds)
    total1, idle1 = snapshot()
    busy = 1 - (idle1 - idle0) / max(total1 - total0, 1)
    return round(busy * (os.cpu_count() or 1), 2)


def wait_for_quiet(max_wait: float, threshold: float = 0.5) -> dict:
    """Wait (at most `max_wait` s) until other processes use under `threshold` cores; report what was seen."""
    started = time.perf_counter()
    load = other_cpu_load()
    while load > threshold and time.perf_counter() - started < max_wait:
        load = other_cpu_load(2.0)
    return {"busy_cores_before": load, "waited_seconds": round(time.perf_counter() - started, 1)}


def cpu_busy_seconds() -> float:
    """Core-seconds the whole machine has spent busy since boot (from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def run_child(argv: list[str], log_path: Path, env: dict[str, str]) -> dict:
    """Run a subprocess to completion; return its exit code, wall time, own rusage (peak RSS) and other load.

    `other_busy_cores` is the machine's busy core-seconds during the run minus the child's own
    CPU time, per second of wall time: how much of the CPU other processes took meanwhile.
    """
    started = time.perf_counter()
    busy0 = cpu_busy_seconds()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    own = usage.ru_utime + usage.ru_stime
    return {
        "returncode": proc.returncode,
        "wall_seconds": round(wall, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "cpu_seconds": round(own, 2),
        "other_busy_cores": round(max(cpu_busy_seconds() - busy0 - own, 0.0) / max(wall, 1e-9), 2),
    }


def child_env(cache: Path) -> dict[str, str]:
    """The environment of every child: the shared lmforge cache, quiet progress bars, no tokenizer threads."""
    env = dict(os.environ)
    env.update(
        LMFORGE_CACHE=str(cache),
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_NO_ADVISORY_WARNINGS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def measure_peaks(tries: int = 3) -> dict[str, float]:
    """The machine's bf16 and fp32 square-matmul GFLOP/s now (lmforge's probe, best of `tries`)."""
    import torch

    from lmforge import hardware

    return {
        str(dtype).replace("torch.", ""): round(
            max(hardware.matmul_peak_flops(torch.device("cpu"), dtype) for _ in range(tries)) / 1e9, 1
        )
        for dtype in (torch.bfloat16, torch.float32)
    }


def measured(label: str, go: Callable[[str], dict], args: argparse.Namespace) -> list[dict]:
    """Every attempt of one run: `go(tag)` again while other processes' load spoiled it (at most
    --retries extra attempts); the last attempt is the one used (`used: true`)."""
    attempts = []
    for attempt in range(args.retries + 1):
        quiet = wait_for_quiet(args.max_wait, args.max_other_load)
        result = go(f"a{attempt}")
        contaminated = result["other_busy_cores"] > args.max_other_load
        retry = contaminated and attempt < args.retries
        result.update(attempt=attempt, contaminated=contaminated, used=not retry, **quiet)
        attempts.append(result)
        print(
            f"{label:<40} {result['tokens_per_second']:>9,.0f} tok/s steady, {result['median_window_tokens_per_second']:>9,.0f} median window, "
            f"{result['ms_per_step']:>7.1f} ms/step, peak RSS {result['peak_rss_mb']:,.0f} MiB, {result['wall_seconds']:.0f}s wall "
            f"(other load: {quiet['busy_cores_before']} cores before, {result['other_busy_cores']} during)"
            + (" -> other load too high, run again" if retry else ""),
            flush=True,
        )
        if not retry:
            break
    return attempts


# --------------------------------------------------------------------------- the lmforge sides


def lmforge_command(task: Task, out: Path, compile_setting: str) -> list[str]:
    """`lmforge pretrain` argv for one run of `task` into `out` with `--train.compile <compile_setting>`."""
    argv = [str(REPO / ".venv" / "bin" / "lmforge"), "pretrain"]
    for key, value in task.lmforge_overrides(str(out)).items():
        argv += [f"--{key}", value]
    return argv + ["--train.compile", compile_setting]


def run_lmforge(task: Task, workdir: Path, side: str, compile_setting: str, tag: str, env: dict[str, str]) -> dict:
    """One lmforge run in a subprocess; throughput from metrics.jsonl; kernel, compile choice, MFU and params from report.json.

    Compilation (and with `auto`, its timing) happens before or within the excluded warm-up steps; wall time includes it."""
    out = workdir / f"{side}-{task.name}-{tag}"
    log_path = workdir / f"{side}-{task.name}-{tag}.log"
    child = run_child(lmforge_command(task, out, compile_setting), log_path, env)
    if child["returncode"] != 0:
        raise RuntimeError(f"lmforge run failed ({child['returncode']}); log: {log_path}")
    from lmforge.metrics_log import MetricsLog

    rows = MetricsLog(out).rows()
    report = json.loads((out / "report.json").read_text())
    marks = [
        (r["step"], r["elapsed_seconds"])
        for r in rows
        if r.get("tokens_per_second") is not None or r["step"] == report["steps"]
    ]
    compile_info = report.get("compile") or {
        "setting": compile_setting,
        "choice": {"true": "compiled", "false": "eager"}.get(compile_setting),
    }
    return {
        **child,
        **rates_from_marks(marks, task.tokens_per_step, task.skip_steps),
        "report_mfu": round(report["mfu"], 4),
        "report_tokens_per_second": report["tokens_per_second"],
        "report_peak_rss_mb": report["peak_rss_mb"],
        "report_peak_flops": report["peak_flops"],
        "precision": report["precision"],
        "attention": report.get("attention"),
        "attention_ms": report.get("attention_ms"),
        "compile": compile_info,
        "params": report["params"],
        "flops_per_token": report["flops_per_token"],
        "final_train_loss": rows[-1]["loss"],
        "val_loss": report["val_loss"],
    }


# --------------------------------------------------------------------------- the Trainer sides


def run_trainer(
    task: Task,
    prepared: dict,
    workdir: Path,
    side: str,
    setup: TrainerSetup,
    tag: str,
    env: dict[str, str],
    steps: int | None = None,
) -> dict:
    """One Trainer run in a subprocess of this script (`--child trainer`), `steps` optimizer steps (default: the task's)."""
    name = f"{side}-{task.name}-{tag}"
    result_path = workdir / f"{name}.json"
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "trainer",
        "--task",
        task.name,
        "--steps",
        str(steps or task.steps),
        "--tokenizer",
        prepared["tokenizer"],
        "--shards",
        prepared["shards"],
        "--child-out",
        str(workdir / name),
        "--result",
        str(result_path),
        *setup.argv(),
    ]
    child = run_child(argv, workdir / f"{name}.log", env)
    if child["returncode"] != 0:
        raise RuntimeError(f"Trainer run failed ({child['returncode']}); log: {workdir / f'{name}.log'}")
    result = json.loads(result_path.read_text())
    rates = rates_from_marks([tuple(m) for m in result.pop("marks")], task.tokens_per_step, task.skip_steps)
    return {**child, **rates, **result, "trainer_setup": asdict(setup), "setup": setup.label}


def probe_expert(task: Task, prepared: dict, workdir: Path, env: dict[str, str], args: argparse.Namespace) -> dict:
    """The expert Trainer's configuration: a `task.probe_steps` run of each of {sdpa, eager} x
    {torch_compile off, on} in bf16, the fastest post-warm-up ms/step kept (a candidate that fails is
    recorded and skipped)."""
    candidates = []
    for setup in EXPERT_CANDIDATES:
        tag = f"probe-{setup.attention}-{'compiled' if setup.compile else 'eager'}"
        try:
            attempts = measured(
                f"[{task.name} probe] {setup.label}",
                lambda attempt: run_trainer(
                    task, prepared, workdir, "trainer-expert", setup, f"{tag}-{attempt}", env, task.probe_steps
                ),
                args,
            )
        except RuntimeError as err:
            print(f"[{task.name} probe] {setup.label}: failed ({err}); not a candidate", flush=True)
            candidates.append({"setup": asdict(setup), "label": setup.label, "error": str(err)})
            continue
        used = attempts[-1]
        candidates.append(
            {
                "setup": asdict(setup),
                "label": setup.label,
                "ms_per_step": used["ms_per_step"],
                "tokens_per_second": used["tokens_per_second"],
                "median_window_tokens_per_second": used["median_window_tokens_per_second"],
                "wall_seconds": used["wall_seconds"],
                "attn_implementation": used["attn_implementation"],
                "attempts": attempts,
            }
        )
    timed = [c for c in candidates if "ms_per_step" in c]
    if not timed:
        raise RuntimeError(f"[{task.name}] every trainer-expert candidate failed; logs in {workdir}")
    best = min(timed, key=lambda c: c["ms_per_step"])
    print(
        f"[{task.name}] trainer-expert: {best['label']} ("
        + ", ".join(f"{c['label']} {c.get('ms_per_step', 'failed')} ms/step" for c in candidates)
        + ")",
        flush=True,
    )
    return {
        "steps": task.probe_steps,
        "warmup_steps_excluded": task.skip_steps,
        "candidates": candidates,
        "chosen": best["setup"],
        "chosen_label": best["label"],
    }


def trainer_child(args: argparse.Namespace) -> None:
    """Train the task's model with a stock transformers Trainer; write per-step time marks and facts to --result."""
    import numpy as np
    import torch
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    from lmforge import config as config_mod
    from lmforge import hardware
    from lmforge import model as model_mod
    from lmforge import tokenizer as tokenizer_mod
    from lmforge.pretrain import PretrainConfig
    from lmforge.shards import TokenShards

    task = next(t for t in make_tasks(False, args.steps, args.steps) if t.name == args.task)
    overrides = task.lmforge_overrides(args.child_out)
    overrides["data"] = [overrides["data"]]
    cfg = config_mod.resolve(PretrainConfig, None, overrides)
    tokenizer = tokenizer_mod.load(args.tokenizer)
    tokens = TokenShards.open(args.shards).train
    torch.manual_seed(cfg.train.seed)
    model = model_mod.build(cfg.model, tokenizer, cfg.train.objective)  # the same stock class and config as lmforge's
    if args.attn:
        model.set_attn_implementation(args.attn)

    mlm = task.objective == "mlm"
    span = task.seq_len - 2 if mlm else task.seq_len  # mlm: [CLS] + span + [SEP] = seq_len, as lmforge packs it

    class Windows(torch.utils.data.Dataset):
        """Random windows of the packed token stream (uniform offsets, like lmforge's batches)."""

        def __init__(self, count: int, seed: int):
            self.offsets = np.random.default_rng(seed).integers(0, len(tokens) - span + 1, size=count)

        def __len__(self) -> int:
            return len(self.offsets)

        def __getitem__(self, i: int) -> dict:
            ids = torch.from_numpy(np.asarray(tokens[self.offsets[i] : self.offsets[i] + span], dtype=np.int64))
            if mlm:
                return {
                    "input_ids": torch.cat(
                        [torch.tensor([tokenizer.cls_token_id]), ids, torch.tensor([tokenizer.sep_token_id])]
                    )
                }
            return {"input_ids": ids, "labels": ids.clone()}

    class StepMarks(TrainerCallback):
        """perf_counter at the end of every optimizer step (the same point where lmforge stamps elapsed_seconds)."""

        def __init__(self):
            self.started = time.perf_counter()
            self.marks: list[tuple[int, float]] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % task.log_every == 0 or state.global_step == args.max_steps:
                self.marks.append((state.global_step, time.perf_counter() - self.started))

    training_args = TrainingArguments(
        output_dir=args.child_out,
        per_device_train_batch_size=task.batch_size,
        max_steps=task.steps,
        learning_rate=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        warmup_steps=cfg.train.warmup_steps,
        lr_scheduler_type="cosine",
        logging_steps=task.log_every,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        use_cpu=True,
        bf16=args.bf16,
        torch_compile=args.compile,
        disable_tqdm=True,
        seed=cfg.train.seed,
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg.train.mlm_probability) if mlm else None
    marks = StepMarks()
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=Windows(task.steps * task.batch_size, cfg.train.seed),
        data_collator=collator,
        callbacks=[marks],
    )
    output = trainer.train()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # inside accelerate's wrapper
    result = {
        "marks": marks.marks,
        "precision": "bfloat16" if args.bf16 else "float32",
        "params": model_mod.count_parameters(model),
        # dense model FLOPs: the stock MLM head projects every position (prediction fraction 1)
        "flops_per_token": model_mod.flops_per_token(model, task.seq_len, 1.0),
        "final_train_loss": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
        "train_loss": output.training_loss,
        "optimizer": type(optimizer).__name__ + (" (fused)" if optimizer.defaults.get("fused") else ""),
        "attn_implementation": model.config._attn_implementation,
        "torch_compile": args.compile,
        "threads": torch.get_num_threads(),
        "self_peak_rss_mb": round(hardware.peak_rss_mb(), 1),
    }
    Path(args.result).write_text(json.dumps(result))


# --------------------------------------------------------------------------- orchestration and reporting


def machine() -> dict:
    """CPU model, cores, library versions and the date."""
    import torch
    import transformers

    cpu = "unknown"
    flags = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and cpu == "unknown":
            cpu = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = line
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
    }


def side_order(repeat: int) -> list[str]:
    """SIDES forwards on even repeats, backwards on odd ones: lmforge and trainer-expert stay adjacent
    and take turns going first; every side sees early and late positions."""
    return list(SIDES if repeat % 2 == 0 else SIDES[::-1])


def tally(values: list) -> str:
    """`sdpa` when every run made the same choice, else `sdpa x2, eager x1`."""
    counts = Counter(str(v) for v in values)
    return next(iter(counts)) if len(counts) == 1 else ", ".join(f"{k} x{n}" for k, n in counts.most_common())


def side_setup(rows: list[dict]) -> str:
    """What a side ran with, in words (lmforge: the kernel and compile choices its runs made)."""
    first = rows[0]
    if "trainer_setup" in first:
        setup = TrainerSetup(**first["trainer_setup"])
        kernel = setup.attention or f"{tally([r['attn_implementation'] for r in rows])} (the model's default)"
        return f"{'bf16' if setup.bf16 else 'fp32'}, {kernel} attention, {'torch_compile' if setup.compile else 'no compile'}, {first['optimizer']}"
    compile_ms = [r["compile"].get("ms") for r in rows if r["compile"].get("ms")]
    timed = ""
    if compile_ms:

        def one(ms: dict) -> str:
            by_kernel = ms.get("compiled_by_attention")
            compiled = (
                (" / compiled " + ", ".join(f"{k} {v:.1f}" for k, v in by_kernel.items()))
                if by_kernel
                else f" / compiled {ms.get('compiled', 0):.1f}"
            )
            return (f"eager {ms['eager']:.1f}" if "eager" in ms else "") + compiled + " ms"

        timed = " (per micro-batch: " + "; ".join(one(ms) for ms in compile_ms) + ")"
    return (
        f"{first['precision']}, {tally([r['attention'] for r in rows])} attention (timed), "
        f"compile {str(first['compile']['setting']).lower()}: {tally([r['compile'].get('choice') or '?' for r in rows])}{timed}"
    )


def summarise(task: Task, runs: list[dict], peak_bf16_gflops: float, probe: dict) -> dict:
    """Medians per side and lmforge/Trainer ratios per repeat (then their median).

    MFU: model FLOPs per token x steady tokens/s / `peak_bf16_gflops` (the best bf16 matmul rate of the run).
    """
    by_side = {side: sorted((r for r in runs if r["side"] == side), key=lambda r: r["repeat"]) for side in SIDES}
    sides = {}
    for side, rows in by_side.items():
        sides[side] = {
            "setup": side_setup(rows),
            "tokens_per_second": statistics.median(r["tokens_per_second"] for r in rows),
            "median_window_tokens_per_second": statistics.median(r["median_window_tokens_per_second"] for r in rows),
            "ms_per_step": statistics.median(r["ms_per_step"] for r in rows),
            "mfu": statistics.median(
                r["flops_per_token"] * r["tokens_per_second"] / (peak_bf16_gflops * 1e9) for r in rows
            ),
            "flops_per_token": rows[0]["flops_per_token"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
            "precision": rows[0]["precision"],
            "matmul_peak_gflops": [r["matmul_peak_gflops"] for r in rows],
            "other_busy_cores": [r["other_busy_cores"] for r in rows],
        }
        if side in LMFORGE_COMPILE:
            sides[side].update(
                report_mfu=statistics.median(r["report_mfu"] for r in rows),
                attention=[r["attention"] for r in rows],
                compile=[r["compile"] for r in rows],
            )
    ratios = {}
    for ours in LMFORGE_COMPILE:
        for baseline in TRAINER_SIDES:
            for key in ("tokens_per_second", "median_window_tokens_per_second"):
                per_repeat = [round(a[key] / b[key], 3) for a, b in zip(by_side[ours], by_side[baseline])]
                ratios[f"{ours}/{baseline}:{key}"] = {
                    "per_repeat": per_repeat,
                    "median": round(statistics.median(per_repeat), 3),
                }
    headline = ratios[f"{HEADLINE[0]}/{HEADLINE[1]}:tokens_per_second"]
    return {
        "title": task.title,
        "steps": task.steps,
        "warmup_steps_excluded": task.skip_steps,
        "tokens_per_step": task.tokens_per_step,
        "trainer_expert_probe": probe,
        "sides": sides,
        "ratios": ratios,
        "headline": f"{HEADLINE[0]} / {HEADLINE[1]}, steady tokens/s",
        "target": task.target,
        "ratio_per_repeat": headline["per_repeat"],
        "ratio": headline["median"],
        "target_met": headline["median"] >= task.target,
    }


def ratio_text(task: dict, side: str) -> str:
    """The ratio cell of one row: lmforge sides vs trainer-expert; Trainer sides as lmforge (recipe) / this side."""
    if side in LMFORGE_COMPILE:
        r = task["ratios"][f"{side}/trainer-expert:tokens_per_second"]
        text = f"{r['median']:.2f}x vs trainer-expert {r['per_repeat']}"
        if side == HEADLINE[0]:
            text = f"**{text}**; target {task['target']:.1f}x: {'met' if task['target_met'] else 'MISSED'}"
        return text
    steady = task["ratios"][f"lmforge/{side}:tokens_per_second"]
    window = task["ratios"][f"lmforge/{side}:median_window_tokens_per_second"]["median"]
    return f"lmforge {steady['median']:.2f}x this {steady['per_repeat']} (median window {window:.2f}x)"


def table_rows(summary: dict) -> list[list[str]]:
    """Rows of the results table (one per task and side)."""
    rows = []
    for name, task in summary["tasks"].items():
        for side, s in task["sides"].items():
            mfu = f"{s['mfu']:.1%}" + (f" (report {s['report_mfu']:.1%})" if "report_mfu" in s else "")
            peaks = ", ".join(f"{p['bfloat16']:.0f}/{p['float32']:.0f}" for p in s["matmul_peak_gflops"])
            label = (
                f"{side} (out of the box)"
                if side == "trainer-defaults"
                else f"{side} (like-for-like peer)"
                if side == "trainer-expert"
                else side
            )
            rows.append(
                [
                    name,
                    label,
                    s["setup"],
                    f"{s['tokens_per_second']:,.0f}",
                    f"{s['median_window_tokens_per_second']:,.0f}",
                    mfu,
                    f"{s['peak_rss_mb']:,.0f}",
                    peaks,
                    ratio_text(task, side),
                ]
            )
    return rows


HEADER = [
    "task",
    "side",
    "setup",
    "tokens/s steady",
    "tokens/s median window",
    "MFU",
    "peak RSS MiB",
    "matmul peak bf16/fp32 GFLOP/s per repeat",
    "lmforge / Trainer: median [per repeat]",
]


def peak_range(summary: dict, dtype: str) -> str:
    values = [p[dtype] for p in summary["matmul_peaks"]]
    return f"{min(values):,.0f}-{max(values):,.0f}" if min(values) != max(values) else f"{values[0]:,.0f}"


def probe_lines(summary: dict) -> list[str]:
    """The trainer-expert probe of each task as a small table."""
    lines = [
        "",
        "trainer-expert probe (bf16; one run of each candidate before the repeats; post-warm-up ms per optimizer step; the fastest is kept):",
        "",
        "| task | candidate | ms/step | tokens/s | chosen |",
        "|---|---|---|---|---|",
    ]
    for name, task in summary["tasks"].items():
        probe = task["trainer_expert_probe"]
        for c in probe["candidates"]:
            timing = (f"{c['ms_per_step']:.1f} | {c['tokens_per_second']:,.0f}") if "ms_per_step" in c else "failed | -"
            lines.append(
                f"| {name} ({probe['steps']} steps, first {probe['warmup_steps_excluded']} excluded) | {c['label']} | {timing} | "
                f"{'yes' if c['label'] == probe['chosen_label'] else ''} |"
            )
    return lines


def markdown(summary: dict) -> str:
    """The results as a Markdown page."""
    m = summary["machine"]
    lines = [
        "# Pretraining throughput: lmforge vs transformers Trainer",
        "",
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), transformers {m['transformers']}, "
        f"{m['date']}, commit {m['git_commit'][:10]}. Matmul peak probe of this host (2048^3, best of 3 x 0.4 s, before every repeat): "
        f"bf16 {peak_range(summary, 'bfloat16')} GFLOP/s, fp32 {peak_range(summary, 'float32')} GFLOP/s "
        "(hosts of this kind measured 389-904 bf16: compare sides within one run only).",
        "",
        f"Command: `{summary['command']}`",
        "",
        "Headline (like-for-like): lmforge as its recipe runs / trainer-expert, steady tokens/s, per repeat and median: "
        + "; ".join(
            f"**{name}** {t['ratio']:.2f}x {t['ratio_per_repeat']} (target {t['target']:.1f}x: {'met' if t['target_met'] else 'MISSED'})"
            for name, t in summary["tasks"].items()
        )
        + ".",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(summary)]
    lines += probe_lines(summary)
    lines += ["", "Tasks:"]
    for name, task in summary["tasks"].items():
        lines.append(
            f"- **{name}**: {task['title']}; {task['steps']} steps per run, first {task['warmup_steps_excluded']} excluded, "
            f"{task['tokens_per_step']:,} tokens/step; trainer-expert = {task['trainer_expert_probe']['chosen_label']}."
        )
    lines += [
        "",
        "Notes:",
        f"- `lmforge` runs `lmforge pretrain` as the recipe does: precision auto (bf16 autocast here), attention kernel timed "
        f"(`--train.attention auto`), `--train.compile {summary['recipe_compile']}`; MLM sends only the masked rows through the vocabulary head. "
        "`lmforge-eager` / `lmforge-compiled` pin compile off / on (information rows). "
        "`trainer-expert` is `transformers.Trainer` with `bf16=True` and the fastest of sdpa/eager attention x torch_compile off/on (probe above); "
        "`trainer-defaults` is the Trainer out of the box (fp32 on CPU, the model's default attention, no compile), a second row the headline does not use. "
        "Both Trainer sides use its default fused AdamW and the same model, token windows, batch, sequence length, steps and learning-rate schedule as lmforge.",
        "- tokens/s counts batch x sequence tokens per optimizer step, from the end of the warm-up steps (compilation happens there) to the last step "
        "(start-up, tokenizer training, evaluation and saving excluded). *Steady* is tokens over that whole span; "
        "*median window* is the median of the log-window rates (10 steps CLM, 5 MLM), less sensitive to bursts of load from other processes.",
        f"- MFU = model FLOPs per token (lmforge's formula: 6 x matmul params + attention) x steady tokens/s / the best bf16 matmul rate "
        f"probed in this run ({summary['peak_gflops']['bfloat16']:,.0f} GFLOP/s; fp32 best {summary['peak_gflops']['float32']:,.0f}), the same "
        "denominator for every row, fp32 rows included. lmforge's MLM FLOPs count the vocabulary head for the 15% masked rows only (what it computes); "
        "the Trainer's count it for every row (what it computes). lmforge's own report.json MFU (whole run, its own peak probe) is `report`.",
        "- Peak RSS is each side's own process (`os.wait4`), including Python, torch and transformers; the largest over the repeats.",
        f"- Other processes' load during each run used (busy cores besides the benchmark's own child, in run order): "
        f"{summary['other_busy_cores_during_runs']}. This machine has {m['cores']} cores; load from others slows "
        "whichever side runs at the time, by up to 30x here (torch's 2 OpenMP threads stall whenever one is descheduled), "
        f"so a run during which others kept more than {summary['max_other_load']} cores busy was run again (at most "
        f"{summary['retries']} times): {summary['discarded_runs']} runs discarded (kept in the JSON with `used: false`), "
        f"{summary['used_runs_over_load_limit']} used runs still over the limit. Order: {summary['order']}; medians are quoted.",
    ]
    return "\n".join(lines) + "\n"


def print_table(summary: dict) -> None:
    """Print the results table (rich when installed)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(" | ".join(HEADER))
        for row in table_rows(summary):
            print(" | ".join(row))
        return
    table = Table(title="Pretraining throughput: lmforge vs transformers Trainer (medians of repeats)")
    for name in HEADER:
        table.add_column(name, justify="right" if name.startswith(("tokens", "MFU", "peak")) else "left")
    for row in table_rows(summary):
        table.add_row(*(cell.replace("**", "") for cell in row))
    Console(width=220).print(table)


def check_compile_setting(setting: str) -> None:
    """Fail before any run when this lmforge does not accept `--train.compile <setting>`."""
    import typing

    from lmforge.train_config import TrainConfig

    allowed = typing.get_args(typing.get_type_hints(TrainConfig)["compile"]) or (True, False)
    if setting == "auto" and "auto" not in allowed:
        sys.exit("this lmforge has no `--train.compile auto` yet; pass --recipe-compile true or false")


def orchestrate(args: argparse.Namespace) -> dict:
    """Prepare data; per task, probe the expert Trainer's setup, then run every side `repeats` times in alternating order; summarise."""
    tasks = [t for t in make_tasks(args.quick, args.clm_steps, args.mlm_steps) if t.name in args.tasks]
    check_compile_setting(args.recipe_compile)
    workdir = Path(tempfile.mkdtemp(prefix="lmforge-bench-"))
    cache = Path(args.cache) if args.cache else workdir / "cache"
    os.environ["LMFORGE_CACHE"] = str(cache)
    env = child_env(cache)
    started = time.perf_counter()
    print(f"work folder {workdir}; cache {cache}", flush=True)
    prepared = {}
    for task in tasks:
        prepared[task.name] = prepare(task, workdir)
        print(
            f"[{task.name}] tokenizer {prepared[task.name]['tokenizer']}, shards {prepared[task.name]['shards']} "
            f"({prepared[task.name]['prepare_seconds']}s)",
            flush=True,
        )
    runs: list[dict] = []
    peaks: list[dict] = []
    probes: dict[str, dict] = {}
    for task in tasks:
        probes[task.name] = probe_expert(task, prepared[task.name], workdir, env, args)
        expert = TrainerSetup(**probes[task.name]["chosen"])
        for repeat in range(args.repeats):
            peak = measure_peaks()
            peaks.append({"task": task.name, "repeat": repeat, **peak})
            print(
                f"[{task.name} r{repeat}] matmul peak: bf16 {peak['bfloat16']:,.0f} GFLOP/s, fp32 {peak['float32']:,.0f} GFLOP/s",
                flush=True,
            )
            for side in side_order(repeat):
                label = f"[{task.name} r{repeat}] {side}"
                if side in LMFORGE_COMPILE:
                    setting = LMFORGE_COMPILE[side] or args.recipe_compile
                    attempts = measured(
                        label, lambda tag: run_lmforge(task, workdir, side, setting, f"r{repeat}{tag}", env), args
                    )
                else:
                    setup = expert if side == "trainer-expert" else TRAINER_DEFAULTS
                    attempts = measured(
                        label,
                        lambda tag: run_trainer(
                            task, prepared[task.name], workdir, side, setup, f"r{repeat}{tag}", env
                        ),
                        args,
                    )
                for result in attempts:
                    result.update(task=task.name, side=side, repeat=repeat, matmul_peak_gflops=peak)
                runs += attempts
    best_peaks = {dtype: max(p[dtype] for p in peaks) for dtype in ("bfloat16", "float32")}
    summary = {
        "machine": machine(),
        "command": " ".join(
            shlex.quote(a) for a in [".venv/bin/python", "benchmarks/pretrain_throughput.py", *args.argv]
        ),
        "lmforge_commands": {
            t.name: " ".join(shlex.quote(a) for a in lmforge_command(t, Path("OUT"), args.recipe_compile))
            for t in tasks
        },
        "recipe_compile": args.recipe_compile,
        "repeats": args.repeats,
        "retries": args.retries,
        "order": "repeat 1: " + ", ".join(side_order(0)) + "; repeat 2 backwards; and so on",
        "prepared": prepared,
        "matmul_peaks": peaks,
        "peak_gflops": best_peaks,
        "max_other_load": args.max_other_load,
        "tasks": {
            t.name: summarise(
                t, [r for r in runs if r["task"] == t.name and r["used"]], best_peaks["bfloat16"], probes[t.name]
            )
            for t in tasks
        },
        "other_busy_cores_during_runs": [r["other_busy_cores"] for r in runs if r["used"]],
        "discarded_runs": sum(not r["used"] for r in runs),
        "used_runs_over_load_limit": sum(r["used"] and r["contaminated"] for r in runs),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "runs": runs,
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: few steps, 1 repeat, results not written unless --out"
    )
    parser.add_argument("--repeats", type=int, default=None, help="runs per side per task (default 3, quick 1)")
    parser.add_argument("--tasks", nargs="+", default=["clm", "mlm"], choices=["clm", "mlm"])
    parser.add_argument("--clm-steps", type=int, default=None, help="optimizer steps per CLM run (default 300)")
    parser.add_argument("--mlm-steps", type=int, default=None, help="optimizer steps per MLM run (default 60)")
    parser.add_argument(
        "--recipe-compile",
        default="auto",
        choices=["auto", "true", "false"],
        help="--train.compile of the headline lmforge side, as the recipe sets it (default auto)",
    )
    parser.add_argument(
        "--max-wait", type=float, default=60.0, help="seconds to wait before each run for other load to drop"
    )
    parser.add_argument(
        "--max-other-load",
        type=float,
        default=0.2,
        help="a run during which other processes kept more than this many cores busy is run again (up to --retries times)",
    )
    parser.add_argument("--retries", type=int, default=2, help="extra attempts for a run spoiled by other load")
    parser.add_argument(
        "--cache", default=None, help="LMFORGE_CACHE for tokenizers/shards (default: a fresh temp folder)"
    )
    parser.add_argument(
        "--out", default=None, help="write <out>.json and <out>.md (default benchmarks/results/pretrain_throughput)"
    )
    # child mode (internal)
    parser.add_argument("--child", choices=["trainer"], help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("--shards", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--attn", choices=["sdpa", "eager"], help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.child == "trainer":
        trainer_child(args)
        return 0
    summary = orchestrate(args)
    print_table(summary)
    out = args.out or (None if args.quick else str(RESULTS / "pretrain_throughput"))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out + ".json").write_text(json.dumps(summary, indent=2) + "\n")
        Path(out + ".md").write_text(markdown(summary))
        print(f"wrote {out}.json and {out}.md")
    for name, task in summary["tasks"].items():
        print(
            f"{name}: lmforge / trainer-expert {task['ratio']:.2f}x {task['ratio_per_repeat']} "
            f"(target {task['target']}x: {'met' if task['target_met'] else 'missed'})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
