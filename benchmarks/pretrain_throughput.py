"""Pretraining throughput: lmforge's training loop vs a plain Hugging Face `Trainer`.

Same model (built by `lmforge.model.build`, i.e. the stock transformers class and config),
same tokenizer and token shards (the ones lmforge caches), same batch size and step count:

  clm  LlamaForCausalLM 4 layers x 4 heads x 128 wide (SwiGLU 352), context 64, batch 12,
       char tokenizer on tinyshakespeare (nanoGPT's shakespeare-char shape)
  mlm  BertForMaskedLM 4 layers x 4 heads x 256 wide, seq 128, batch 32, WordPiece 8192
       trained on the same text; the Trainer masks with DataCollatorForLanguageModeling(0.15)

Three sides per task, each in its own subprocess (so peak RSS is per side, taken from
`os.wait4`), run in rotating order and repeated, so the machine's drift and other people's
load hit every side alike:

  lmforge          `lmforge pretrain ...` with its defaults (precision auto = bf16 autocast
                   on CPUs with AVX512-BF16/AMX, sparse MLM prediction, fused AdamW)
  trainer          transformers.Trainer with its defaults (fp32 on CPU, fused AdamW)
  trainer-bf16     the same Trainer with bf16=True, to separate precision from the loop

Throughput counts training tokens only (batch x sequence per optimizer step), from the end
of a warm-up step to the last step: no start-up, tokenizer training, evaluation or saving.
Two estimates per run: `steady` (tokens / seconds over the whole post-warm-up span, the
headline) and `median window` (median of the rates over log windows, 10 steps CLM and 5 MLM, robust to bursts of load
from other processes). Ratios are lmforge / Trainer per repeat; the median is quoted.

    .venv/bin/python benchmarks/pretrain_throughput.py            # full run: 3 repeats, ~10 minutes on 2 idle cores
    .venv/bin/python benchmarks/pretrain_throughput.py --quick    # smoke run, ~2 minutes

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
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SIDES = ("lmforge", "lmforge-compile", "trainer", "trainer-bf16")
LMFORGE_SIDES = ("lmforge", "lmforge-compile")


@dataclass
class Task:
    """One comparison: lmforge overrides (dotted keys, as on its CLI) plus the measurement plan."""

    name: str
    title: str
    overrides: dict[str, str]
    steps: int
    skip_steps: int  # warm-up steps left out of the throughput
    target: float  # lmforge / Trainer tokens/s the issue asks for
    log_every: int = 10  # lmforge --train.log_every, Trainer logging_steps, and the window of the median-window rate
    seq_len: int = 0
    batch_size: int = 0
    objective: str = "clm"
    headline_side: str = "lmforge"  # the lmforge side that runs as its recipe does

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


def make_tasks(quick: bool, clm_steps: int | None, mlm_steps: int | None) -> list[Task]:
    """The two benchmark tasks; `quick` shrinks the step counts for a smoke run."""
    clm = Task(
        name="clm",
        title="CLM: Llama 4x128 (shakespeare-char), ctx 64, batch 12",
        overrides={
            "data": "builtin:tinyshakespeare", "tokenizer.kind": "char", "model.family": "llama",
            "model.layers": "4", "model.heads": "4", "model.width": "128", "model.context": "64",
            "train.batch_size": "12",
        },
        steps=clm_steps or (60 if quick else 300), skip_steps=20, target=1.5,
        headline_side="lmforge-compile",  # recipes/shakespeare_char.yaml sets train.compile: true
    )
    mlm = Task(
        name="mlm",
        title="MLM: BERT 4x256, WordPiece 8k, seq 128, batch 32",
        overrides={
            "data": "builtin:tinyshakespeare", "tokenizer.kind": "wordpiece", "tokenizer.vocab_size": "8192",
            "train.objective": "mlm", "model.family": "bert", "model.layers": "4", "model.heads": "4",
            "model.width": "256", "model.context": "128", "train.batch_size": "32",
        },
        steps=mlm_steps or (30 if quick else 60), skip_steps=10, target=2.0, log_every=5,
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
    from lmforge.loop import Process
    from lmforge.pretrain import PretrainConfig, prepare_data

    overrides = dict(task.lmforge_overrides(str(workdir / f"prepare-{task.name}")))
    overrides["data"] = [overrides["data"]]
    cfg = config_mod.resolve(PretrainConfig, None, overrides)
    started = time.perf_counter()
    tok_dir, shard_dir = prepare_data(cfg, Process.from_env(hardware.resolve_device("cpu")), documents.resolve_sources(cfg.data))
    return {"tokenizer": str(tok_dir), "shards": str(shard_dir), "prepare_seconds": round(time.perf_counter() - started, 2)}


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
    env.update(LMFORGE_CACHE=str(cache), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               TRANSFORMERS_NO_ADVISORY_WARNINGS="1", PYTHONUNBUFFERED="1")
    return env


def lmforge_command(task: Task, out: Path, compile_: bool = False) -> list[str]:
    """`lmforge pretrain` argv for one run of `task` into `out` (`--train.compile true` for the compiled side)."""
    argv = [str(REPO / ".venv" / "bin" / "lmforge"), "pretrain"]
    for key, value in task.lmforge_overrides(str(out)).items():
        argv += [f"--{key}", value]
    return argv + (["--train.compile", "true"] if compile_ else [])


def measure_peaks(peaks: dict[str, float], tries: int = 3) -> dict[str, float]:
    """Best bf16 and fp32 square-matmul FLOP/s seen so far (lmforge's own probe, repeated): the MFU denominators."""
    import torch

    from lmforge import hardware

    for dtype in (torch.bfloat16, torch.float32):
        name = str(dtype).replace("torch.", "")
        best = max(hardware.matmul_peak_flops(torch.device("cpu"), dtype) for _ in range(tries))
        peaks[name] = max(peaks.get(name, 0.0), best)
    return peaks


def run_lmforge(task: Task, workdir: Path, tag: str, env: dict[str, str], compile_: bool = False) -> dict:
    """One lmforge run in a subprocess; throughput from metrics.jsonl, MFU and params from report.json.

    The compiled side compiles before step 1 (outside the timed steps); its wall time includes it."""
    name = "lmforge-compile" if compile_ else "lmforge"
    out = workdir / f"{name}-{task.name}-{tag}"
    argv = lmforge_command(task, out, compile_)
    child = run_child(argv, workdir / f"{name}-{task.name}-{tag}.log", env)
    if child["returncode"] != 0:
        raise RuntimeError(f"lmforge run failed ({child['returncode']}); log: {workdir / f'{name}-{task.name}-{tag}.log'}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    report = json.loads((out / "report.json").read_text())
    marks = [(r["step"], r["elapsed_seconds"]) for r in rows if r.get("tokens_per_second") is not None or r["step"] == report["steps"]]
    rates = rates_from_marks(marks, task.tokens_per_step, task.skip_steps)
    return {
        **child, **rates,
        "report_mfu": round(report["mfu"], 4),
        "report_tokens_per_second": report["tokens_per_second"],
        "report_peak_rss_mb": report["peak_rss_mb"],
        "precision": report["precision"],
        "params": report["params"],
        "flops_per_token": report["flops_per_token"],
        "report_peak_flops": report["peak_flops"],
        "final_train_loss": rows[-1]["loss"],
        "val_loss": report["val_loss"],
    }


def run_trainer(task: Task, prepared: dict, workdir: Path, tag: str, bf16: bool, env: dict[str, str]) -> dict:
    """One Trainer run in a subprocess of this script (`--child trainer`)."""
    side = "trainer-bf16" if bf16 else "trainer"
    result_path = workdir / f"{side}-{task.name}-{tag}.json"
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", "trainer", "--task", task.name,
            "--steps", str(task.steps), "--tokenizer", prepared["tokenizer"], "--shards", prepared["shards"],
            "--child-out", str(workdir / f"{side}-{task.name}-{tag}"), "--result", str(result_path)]
    if bf16:
        argv.append("--bf16")
    child = run_child(argv, workdir / f"{side}-{task.name}-{tag}.log", env)
    if child["returncode"] != 0:
        raise RuntimeError(f"Trainer run failed ({child['returncode']}); log: {workdir / f'{side}-{task.name}-{tag}.log'}")
    result = json.loads(result_path.read_text())
    rates = rates_from_marks([tuple(m) for m in result.pop("marks")], task.tokens_per_step, task.skip_steps)
    return {**child, **rates, **result}


# --------------------------------------------------------------------------- the Trainer side (child process)


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
                return {"input_ids": torch.cat([torch.tensor([tokenizer.cls_token_id]), ids, torch.tensor([tokenizer.sep_token_id])])}
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
        disable_tqdm=True,
        seed=cfg.train.seed,
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg.train.mlm_probability) if mlm else None
    marks = StepMarks()
    trainer = Trainer(model=model, args=training_args, train_dataset=Windows(task.steps * task.batch_size, cfg.train.seed),
                      data_collator=collator, callbacks=[marks])
    output = trainer.train()
    result = {
        "marks": marks.marks,
        "precision": "bfloat16" if args.bf16 else "float32",
        "params": model_mod.count_parameters(model),
        # dense model FLOPs: the stock MLM head projects every position (prediction fraction 1)
        "flops_per_token": model_mod.flops_per_token(model, task.seq_len, 1.0),
        "final_train_loss": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
        "train_loss": output.training_loss,
        "optimizer": type(trainer.optimizer).__name__ + (" (fused)" if trainer.optimizer.defaults.get("fused") else ""),
        "attn_implementation": model.config._attn_implementation,
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
        "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip(),
    }


def side_order(repeat: int) -> list[str]:
    """Rotate the three sides so that each one runs first, second and third across repeats."""
    shift = repeat % len(SIDES)
    return list(SIDES[shift:] + SIDES[:shift])


def summarise(task: Task, runs: list[dict], peak_flops: float) -> dict:
    """Medians per side and lmforge/Trainer ratios per repeat (then their median).

    MFU: model FLOPs per token x steady tokens/s / `peak_flops` (the machine's best bf16 matmul rate).
    """
    by_side = {side: [r for r in runs if r["side"] == side] for side in SIDES}
    sides = {}
    for side, rows in by_side.items():
        sides[side] = {
            "tokens_per_second": statistics.median(r["tokens_per_second"] for r in rows),
            "median_window_tokens_per_second": statistics.median(r["median_window_tokens_per_second"] for r in rows),
            "mfu": statistics.median(r["flops_per_token"] * r["tokens_per_second"] / peak_flops for r in rows),
            "flops_per_token": rows[0]["flops_per_token"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
            "precision": rows[0]["precision"],
            "other_busy_cores": [r["other_busy_cores"] for r in rows],
        }
        if side in LMFORGE_SIDES:
            sides[side]["report_mfu"] = statistics.median(r["report_mfu"] for r in rows)
    ratios = {}
    for ours in LMFORGE_SIDES:
        for baseline in ("trainer", "trainer-bf16"):
            for key in ("tokens_per_second", "median_window_tokens_per_second"):
                per_repeat = []
                for rep in sorted({r["repeat"] for r in runs}):
                    a = next(r for r in by_side[ours] if r["repeat"] == rep)
                    b = next(r for r in by_side[baseline] if r["repeat"] == rep)
                    per_repeat.append(round(a[key] / b[key], 3))
                ratios[f"{ours}/{baseline}:{key}"] = {"per_repeat": per_repeat, "median": round(statistics.median(per_repeat), 3)}
    headline = ratios[f"{task.headline_side}/trainer:tokens_per_second"]["median"]
    return {
        "title": task.title,
        "steps": task.steps,
        "warmup_steps_excluded": task.skip_steps,
        "tokens_per_step": task.tokens_per_step,
        "sides": sides,
        "ratios": ratios,
        "headline_side": task.headline_side,
        "target": task.target,
        "ratio": headline,
        "target_met": headline >= task.target,
    }


def table_rows(summary: dict) -> list[list[str]]:
    """Rows of the results table (one per task and side)."""
    rows = []
    for name, task in summary["tasks"].items():
        for side, s in task["sides"].items():
            if side in LMFORGE_SIDES:
                steady = task["ratios"][f"{side}/trainer:tokens_per_second"]["median"]
                ratio = f"{steady:.2f}x vs trainer"
                if side == task["headline_side"]:
                    ratio += f" (recipe setting); target {task['target']:.1f}x: {'met' if task['target_met'] else 'MISSED'}"
                mfu = f"{s['mfu']:.1%} (report {s['report_mfu']:.1%})"
            else:
                steady = task["ratios"][f"lmforge/{side}:tokens_per_second"]["median"]
                window = task["ratios"][f"lmforge/{side}:median_window_tokens_per_second"]["median"]
                ratio = f"{steady:.2f}x ({window:.2f}x)"
                mfu = f"{s['mfu']:.1%}"
            rows.append([name, side, s["precision"], f"{s['tokens_per_second']:,.0f}", f"{s['median_window_tokens_per_second']:,.0f}",
                         mfu, f"{s['peak_rss_mb']:,.0f}", ratio])
    return rows


HEADER = ["task", "side", "precision", "tokens/s steady", "tokens/s median window", "MFU", "peak RSS MiB", "lmforge / this side: steady (median window)"]


def markdown(summary: dict) -> str:
    """The results as a Markdown page."""
    m = summary["machine"]
    lines = [
        "# Pretraining throughput: lmforge vs transformers Trainer",
        "",
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), transformers {m['transformers']}, "
        f"{m['date']}, commit {m['git_commit'][:10]}.",
        "",
        f"Command: `{summary['command']}`",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(summary)]
    lines += ["", "Tasks:"]
    for name, task in summary["tasks"].items():
        lines.append(f"- **{name}**: {task['title']}; {task['steps']} steps per run, first {task['warmup_steps_excluded']} excluded, "
                     f"{task['tokens_per_step']:,} tokens/step; ratios per repeat of {task['headline_side']} (steady tokens/s): "
                     f"vs trainer {task['ratios'][task['headline_side'] + '/trainer:tokens_per_second']['per_repeat']}, "
                     f"vs trainer-bf16 {task['ratios'][task['headline_side'] + '/trainer-bf16:tokens_per_second']['per_repeat']}.")
    lines += [
        "",
        "Notes:",
        "- `trainer` is `transformers.Trainer` with its defaults (fp32 on CPU, fused AdamW); `trainer-bf16` adds `bf16=True`. "
        "lmforge runs `lmforge pretrain` with its defaults (precision auto = bf16 autocast here; MLM sends only the masked rows through the vocabulary head).",
        "- tokens/s counts batch x sequence tokens per optimizer step, from the end of the warm-up steps to the last step "
        "(start-up, tokenizer training, evaluation and saving excluded). *Steady* is tokens over that whole span; "
        "*median window* is the median of the log-window rates (10 steps CLM, 5 MLM), less sensitive to bursts of load from other processes.",
        f"- MFU = model FLOPs per token (lmforge's formula: 6 x matmul params + attention) x steady tokens/s / the best measured "
        f"bf16 matmul rate of this machine ({summary['peak_flops']['bfloat16'] / 1e9:,.0f} GFLOP/s; fp32: "
        f"{summary['peak_flops']['float32'] / 1e9:,.0f} GFLOP/s), the same denominator for every row. lmforge's MLM FLOPs count the "
        "vocabulary head for the 15% masked rows only (what it computes); the Trainer's count it for every row (what it computes). "
        "lmforge's own report.json MFU (whole run, warm-up included, its own peak probe) is in the JSON as `report_mfu`.",
        "- Peak RSS is each side's own process (`os.wait4`), including Python, torch and transformers; the largest over the repeats.",
        f"- Other processes' load during each run used (busy cores besides the benchmark's own child, in run order): "
        f"{summary['other_busy_cores_during_runs']}. This machine has {m['cores']} cores; load from others slows "
        "whichever side runs at the time, by up to 30x here (torch's 2 OpenMP threads stall whenever one is descheduled), "
        f"so a run during which others kept more than {summary['max_other_load']} cores busy was run again (at most "
        f"{summary['retries']} times): {summary['discarded_runs']} runs discarded (kept in the JSON with `used: false`), "
        f"{summary['used_runs_over_load_limit']} used runs still over the limit. Sides rotate order per repeat; medians are quoted.",
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
        table.add_row(*row)
    Console(width=180).print(table)


def orchestrate(args: argparse.Namespace) -> dict:
    """Prepare data, run every side of every task `repeats` times in rotating order, summarise."""
    tasks = [t for t in make_tasks(args.quick, args.clm_steps, args.mlm_steps) if t.name in args.tasks]
    workdir = Path(tempfile.mkdtemp(prefix="lmforge-bench-"))
    cache = Path(args.cache) if args.cache else workdir / "cache"
    os.environ["LMFORGE_CACHE"] = str(cache)
    env = child_env(cache)
    started = time.perf_counter()
    print(f"work folder {workdir}; cache {cache}", flush=True)
    prepared = {}
    for task in tasks:
        prepared[task.name] = prepare(task, workdir)
        print(f"[{task.name}] tokenizer {prepared[task.name]['tokenizer']}, shards {prepared[task.name]['shards']} "
              f"({prepared[task.name]['prepare_seconds']}s)", flush=True)
    runs: list[dict] = []
    peaks: dict[str, float] = {}
    for task in tasks:
        measure_peaks(peaks)
        for repeat in range(args.repeats):
            for side in side_order(repeat):
                for attempt in range(args.retries + 1):
                    quiet = wait_for_quiet(args.max_wait, args.max_other_load)
                    tag = f"r{repeat}a{attempt}"
                    if side in LMFORGE_SIDES:
                        result = run_lmforge(task, workdir, tag, env, compile_=side == "lmforge-compile")
                    else:
                        result = run_trainer(task, prepared[task.name], workdir, tag, side == "trainer-bf16", env)
                    contaminated = result["other_busy_cores"] > args.max_other_load
                    result.update(task=task.name, side=side, repeat=repeat, attempt=attempt, contaminated=contaminated, used=False, **quiet)
                    runs.append(result)
                    retry = contaminated and attempt < args.retries
                    print(f"[{task.name} r{repeat}] {side:<13} {result['tokens_per_second']:>9,.0f} tok/s steady, "
                          f"{result['median_window_tokens_per_second']:>9,.0f} median window, "
                          f"peak RSS {result['peak_rss_mb']:,.0f} MiB, {result['wall_seconds']:.0f}s wall "
                          f"(other load: {quiet['busy_cores_before']} cores before, {result['other_busy_cores']} during)"
                          + (" -> other load too high, run again" if retry else ""), flush=True)
                    if not retry:
                        result["used"] = True
                        break
    summary = {
        "machine": machine(),
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/pretrain_throughput.py", *args.argv]),
        "lmforge_commands": {t.name: " ".join(shlex.quote(a) for a in lmforge_command(t, Path("OUT"))) for t in tasks},
        "repeats": args.repeats,
        "retries": args.retries,
        "order": "sides rotate per repeat: " + "; ".join(",".join(side_order(r)) for r in range(args.repeats)),
        "prepared": prepared,
        "peak_flops": measure_peaks(peaks),
        "max_other_load": args.max_other_load,
        "tasks": {t.name: summarise(t, [r for r in runs if r["task"] == t.name and r["used"]], peaks["bfloat16"]) for t in tasks},
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
    parser.add_argument("--quick", action="store_true", help="smoke run: few steps, 1 repeat, results not written unless --out")
    parser.add_argument("--repeats", type=int, default=None, help="runs per side per task (default 3, quick 1)")
    parser.add_argument("--tasks", nargs="+", default=["clm", "mlm"], choices=["clm", "mlm"])
    parser.add_argument("--clm-steps", type=int, default=None, help="optimizer steps per CLM run (default 300)")
    parser.add_argument("--mlm-steps", type=int, default=None, help="optimizer steps per MLM run (default 70)")
    parser.add_argument("--max-wait", type=float, default=60.0, help="seconds to wait before each run for other load to drop")
    parser.add_argument("--max-other-load", type=float, default=0.2,
                        help="a run during which other processes kept more than this many cores busy is run again (up to --retries times)")
    parser.add_argument("--retries", type=int, default=2, help="extra attempts for a run spoiled by other load")
    parser.add_argument("--cache", default=None, help="LMFORGE_CACHE for tokenizers/shards (default: a fresh temp folder)")
    parser.add_argument("--out", default=None, help="write <out>.json and <out>.md (default benchmarks/results/pretrain_throughput)")
    # child mode (internal)
    parser.add_argument("--child", choices=["trainer"], help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("--shards", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
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
        print(f"{name}: lmforge/Trainer {task['ratio']:.2f}x (target {task['target']}x: {'met' if task['target_met'] else 'missed'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
