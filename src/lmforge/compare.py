"""`lmforge compare`: rank candidate models on one labelled task, with intervals and verdicts.

    --candidates minilm runs/adapted runs/scratch  --modes full,head  --seeds 1,2,3
        -> OUT/runs/NAME-MODE/ (an ordinary `finetune` run folder: seed_N/, final/, report.json)
        -> OUT/report.json, OUT/report.html, a table in the terminal

Every run picks its checkpoint on --valid_file only; --test_file is scored once per seed
(test_predictions.jsonl), and those predictions are what `intervals` resamples. The baseline is
the first candidate in the first mode. Cost per row: parameters, size on disk, fine-tuning
minutes, latency at batch 1 and throughput at batch 32 on this machine, and the minutes that an
adapted or from-scratch candidate's pretraining took (read from its run folder).
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import yaml

from lmforge import checkpoint, intervals, report
from lmforge import config as config_mod
from lmforge import finetune as finetune_mod
from lmforge import tokenizer as tokenizer_mod
from lmforge.config import option
from lmforge.errors import LmforgeError
from lmforge.metrics_log import MetricsLog
from lmforge.publish import write_json_atomic
from lmforge.runfolder import RunFolder, flat, has_ended
from lmforge.tasks import TASKS, Task, TaskName, backbone, data, format_for, scoring

Mode = Literal["full", "lora", "head"]


@dataclass
class CandidateSpec:
    """One candidate: on the command line a model (`--candidates minilm runs/adapted`), in a recipe
    that or a mapping with this candidate's own settings:

        candidates:
          - minilm
          - {model: runs/adapted, name: adapted, modes: [full], train: {lr: 5e-5}}
    """

    SHORTHAND = "model"  # a bare value in the list is this field

    model: str = option("", "minilm, an HF folder or a run folder (pretrain, adapt)")
    name: Optional[str] = option(None, "the row's label and run folder name (default: from the model's path)")
    modes: Optional[list[Mode]] = option(None, "this candidate's fine-tuning modes (default: --modes)")
    epochs: Optional[float] = option(None, "this candidate's passes over the train split (default: --epochs)")
    train: dict = option({}, "this candidate's --train.* settings, e.g. {lr: 5e-5, batch_size: 16}")


@dataclass
class CompareConfig:
    task: TaskName = option("classification", "classification (CSV/TSV/JSONL), ner (CoNLL) or qa (SQuAD JSON)")
    candidates: list[CandidateSpec] = option(
        [], "models to compare: minilm, HF folders, run folders (pretrain, adapt); the first is the baseline"
    )
    modes: list[Mode] = option(["full"], "fine-tuning modes of every candidate that names none: full, lora, head")
    seeds: list[int] = option([1, 2, 3], "fine-tuning seeds of every candidate and mode")
    train_file: str = option("", "labelled training file")
    valid_file: str = option("", "labelled validation file: picks each run's checkpoint, nothing else")
    test_file: str = option("", "labelled test file: scored once per run; the comparison's result")
    out: str = option("runs/compare", "folder: runs/NAME-MODE/ per candidate and mode, report.json, report.html")
    metric: Optional[str] = option(
        None, "test metric to rank by (default: the task's: accuracy, ner f1, qa f1); e.g. f1_micro, mcc"
    )
    resume: bool = option(False, "keep finished runs in --out and do only the missing ones")
    resamples: int = option(1000, "bootstrap replicates (seeds and test examples resampled) per interval")
    latency_examples: int = option(16, "test examples timed one at a time for the batch-1 latency")
    epochs: float = option(3.0, "passes over the train split in every run")
    format: data.FormatConfig = field(default_factory=data.FormatConfig)
    lora: finetune_mod.LoraOptions = field(default_factory=finetune_mod.LoraOptions)
    train: finetune_mod.FinetuneTrainConfig = field(default_factory=finetune_mod.train_defaults)


@dataclass
class Candidate:
    name: str  # OUT/runs/NAME-MODE, the table's row label
    given: str  # as on the command line
    folder: Path  # the model folder it resolves to
    modes: list[str]
    epochs: float
    train: finetune_mod.FinetuneTrainConfig


# --- gold labels ------------------------------------------------------------------------------


def gold_rows(task: Task, examples: list) -> list[dict]:
    """Rows whose predictions are the gold labels: what a metric name is checked against."""
    if task.name == "ner":
        return [{"label": s.tags, "prediction": s.tags} for s in examples]
    if task.name == "qa":
        return [{"answers": [a["text"] for a in q.answers], "prediction": (q.answers or [{"text": ""}])[0]["text"]} for q in examples]  # fmt: skip
    return [{"label": r.label, "prediction": task.gold(r.label)} for r in examples]


def labels_of(task: Task, examples: list) -> set[str]:
    """The label names a file uses (none for QA and regression)."""
    if task.name == "ner":
        return {t for s in examples for t in s.tags}
    if task.name == "classification" and task.kind != "regression":
        golds = [task.gold(r.label) for r in examples]
        return {n for g in golds for n in (g if task.kind == "multi" else [g])}
    return set()


# --- checks before any training ----------------------------------------------------------------


def candidates_of(config: CompareConfig) -> list[Candidate]:
    found, problems, names = [], [], set()
    explicit = [spec.name for spec in config.candidates if spec.name]
    if len(set(explicit)) != len(explicit):
        raise LmforgeError(f"--candidates: each name once; given {', '.join(explicit)}")
    for i, spec in enumerate(config.candidates):
        given = spec.model
        try:
            if not given:
                raise LmforgeError(
                    f"candidate {i + 1} names no model: give model: minilm, an HF folder or a run folder"
                )
            folder = backbone.resolve(given)
            tokenizer_mod.load(folder)  # the error finetune would give, now for every candidate at once
            train = config_mod.from_dict(
                finetune_mod.FinetuneTrainConfig, spec.train, f"candidates[{i}].train.", base=config.train
            )
        except LmforgeError as err:
            problems.append(str(err))
            continue
        modes = list(spec.modes or config.modes)
        if len(set(modes)) != len(modes) or not modes:
            problems.append(f"candidate {given}: give each mode once, e.g. modes: [full, head]")
        path = Path(given)
        name = spec.name or (
            given.lower()
            if given.lower() in backbone.SHORTCUTS
            else (path.parent.name if path.name == "final" else path.name)
        )
        while name in names:
            name += "_"
        names.add(name)
        epochs = config.epochs if spec.epochs is None else spec.epochs
        found.append(Candidate(name, given, folder, modes, epochs, train))
    if problems:
        raise LmforgeError("--candidates: " + "; ".join(problems))
    return found


def check(config: CompareConfig) -> tuple[list[Candidate], Task, str, dict]:
    """Everything checkable before training: candidates, files, label sets, the metric. Returns
    (candidates, the task as train defines it, metric, the files' examples)."""
    if len(config.candidates) < 1:
        raise LmforgeError("--candidates: give at least one model (minilm, an HF folder or a run folder)")
    missing = [f"--{k}" for k in ("train_file", "valid_file", "test_file") if not getattr(config, k)]
    if missing:
        raise LmforgeError(
            f"{', '.join(missing)} required: compare fine-tunes on train, selects on valid, reports test"
        )
    if len(set(config.seeds)) != len(config.seeds) or not config.seeds:
        raise LmforgeError("--seeds: give each seed once, e.g. 1,2,3")
    if len(set(config.modes)) != len(config.modes) or not config.modes:
        raise LmforgeError("--modes: give each mode once, e.g. full,head")
    candidates = candidates_of(config)
    task_cls = TASKS[config.task]
    fmt = format_for(task_cls, config.format)
    examples = {role: task_cls.read(getattr(config, f"{role}_file"), fmt, role) for role in ("train", "valid", "test")}
    examples["train"] = examples["train"][: fmt.limit]  # what finetune trains on
    task = task_cls.from_train(examples["train"], fmt)
    problems = [
        f"--{role}_file has labels the train file lacks: {', '.join(sorted(extra)[:5])}"
        for role in ("valid", "test")
        if (extra := labels_of(task, examples[role]) - set(task.labels))
    ]
    if problems:
        where = f" (in its first {fmt.limit} rows: --format.limit)" if fmt.limit else ""
        raise LmforgeError("; ".join(problems) + f"; every label must occur in --train_file{where}")
    known = task.row_metrics(gold_rows(task, examples["valid"]))
    metric = config.metric or task.default_metric
    if metric not in known:
        raise LmforgeError(f"--metric {metric}: not a {config.task} metric; choose one of: {', '.join(sorted(known))}")
    return candidates, task, metric, examples


# --- runs --------------------------------------------------------------------------------------


def finetune_config(config: CompareConfig, candidate: Candidate, mode: str, run_dir: Path, resume: bool):
    return finetune_mod.FinetuneConfig(
        task=config.task,
        model=candidate.given,
        train_file=config.train_file,
        valid_file=config.valid_file,
        test_file=config.test_file,
        out=str(run_dir),
        mode=mode,
        epochs=candidate.epochs,
        seeds=list(config.seeds),
        resume=resume,
        format=config.format,
        lora=config.lora,
        train=candidate.train,
    )


UNCOMPARED = ("resume", "train.stop_at_step")  # per invocation; everything else makes the result


def check_same_settings(config: CompareConfig, candidate: Candidate, mode: str, run_dir: Path) -> None:
    """A run folder kept by `--resume` must have been run with the settings this comparison gives
    it; a changed learning rate or file would otherwise mix old and new results in one table."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    wanted = yaml.safe_load(
        yaml.safe_dump(config_mod.to_dict(finetune_config(config, candidate, mode, run_dir, False)))
    )
    saved, wanted = flat(config_mod.load_yaml(saved_path)), flat(wanted)
    changed = [
        k for k in sorted(set(saved) | set(wanted)) if not k.startswith(UNCOMPARED) and saved.get(k) != wanted.get(k)
    ]
    if changed:
        key = changed[0]
        raise LmforgeError(
            f"{run_dir} was fine-tuned with {key}={saved.get(key)!r}, this comparison gives {wanted.get(key)!r}"
            f"{f' (and {len(changed) - 1} more settings)' if len(changed) > 1 else ''}; "
            "keep the earlier settings to resume, or choose a new --out"
        )


def run_one(config: CompareConfig, candidate: Candidate, mode: str, run_dir: Path) -> None:
    """One candidate x mode (all seeds): kept when finished, continued when a part is, else started."""
    if has_ended(run_dir) and (run_dir / "report.json").is_file():
        print(f"{run_dir}: finished already; kept", flush=True)
        return
    dirs = finetune_mod.seed_folders(run_dir, config.seeds)
    partial = any(checkpoint.latest(d) is not None or finetune_mod.finished_report(d) is not None for d in dirs)
    if run_dir.exists() and not partial:
        shutil.rmtree(run_dir)  # started but nothing kept yet: start again
    print(f"--- {candidate.name}, {mode}: seeds {','.join(map(str, config.seeds))} -> {run_dir}", flush=True)
    finetune_mod.run(finetune_config(config, candidate, mode, run_dir, resume=partial))


def test_rows(run_dir: Path, seeds: list[int]) -> list[list[dict]]:
    runs = []
    for seed_dir in finetune_mod.seed_folders(run_dir, seeds):
        path = seed_dir / finetune_mod.TEST_PREDICTIONS
        runs.append([json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()])
    return runs


# --- cost --------------------------------------------------------------------------------------


def speed(final: Path, config: CompareConfig, examples: list) -> dict:
    """Parameters, size on disk, batch-1 latency (median ms per example, tokenizing included) and
    batch-32 throughput (examples/s) of a fine-tuned model on this machine's CPU."""
    task, model, tokenizer, _ = scoring.load_task_model(str(final), config.task, config.format)
    model.eval()

    def timed(batch: list, size: int) -> float:
        started = time.perf_counter()
        scoring.score_examples(task, model, tokenizer, batch, config.format, True, "cpu", size)
        return time.perf_counter() - started

    timed(examples[:2], 1)  # warm-up
    latency = statistics.median(timed([e], 1) for e in examples[: config.latency_examples])
    many = (examples * (64 // len(examples) + 1))[:64]
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "size_mb": round(sum(f.stat().st_size for f in final.rglob("*") if f.is_file()) / 2**20, 1),
        "latency_ms": round(1000 * latency, 2),
        "throughput": round(len(many) / timed(many, 32), 1),
    }


def pretraining_minutes(candidate: Candidate) -> float | None:
    """Minutes an lmforge pretrain or adapt run spent training the candidate (None for others)."""
    run = candidate.folder.parent if candidate.folder.name == "final" else None
    if run is None or not (run / "report.json").is_file() or not (run / "manifest.json").is_file():
        return None
    stage = json.loads((run / "manifest.json").read_text()).get("stage")
    summary = json.loads((run / "report.json").read_text())
    if stage == "adapt":
        return summary.get("train_minutes")
    if stage == "pretrain" and summary.get("training_seconds") is not None:
        return round(summary["training_seconds"] / 60, 2)
    return None


# --- the stage ---------------------------------------------------------------------------------


def grid_of(candidates: list[Candidate]) -> list[tuple[Candidate, str]]:
    """(candidate, mode) in run and table order: every candidate in a mode, then the next mode; the
    first is the baseline (the first candidate in its first mode)."""
    modes = list(dict.fromkeys(m for c in candidates for m in c.modes))
    modes.remove(candidates[0].modes[0])
    return [(c, mode) for mode in [candidates[0].modes[0], *modes] for c in candidates if mode in c.modes]


def run(config: CompareConfig) -> Path:
    """`lmforge compare`: fine-tune every candidate x mode x seed, then rank them on the test file."""
    out = Path(config.out)
    candidates, task, metric, examples = check(config)
    if not config.resume and (out / "runs").exists() and any((out / "runs").iterdir()):
        raise LmforgeError(f"{out} already holds a comparison; pass --resume true to keep its finished runs, or choose a new --out")  # fmt: skip
    grid = grid_of(candidates)
    for candidate, mode in grid:  # a changed setting is refused before anything is written
        check_same_settings(config, candidate, mode, out / "runs" / f"{candidate.name}-{mode}")
    folder = RunFolder(out, "compare").start(config, [c.folder for c in candidates])
    for candidate, mode in grid:
        run_one(config, candidate, mode, out / "runs" / f"{candidate.name}-{mode}")
    scorer = task.row_scorer(metric)  # a replicate sums per-example counts where the metric allows
    prepare, score = scorer or (lambda row: row, lambda rows: task.row_metrics(rows)[metric])
    rows_of = lambda run_dir: [[prepare(r) for r in rows] for rows in test_rows(run_dir, config.seeds)]  # noqa: E731
    baseline_rows = rows_of(out / "runs" / f"{grid[0][0].name}-{grid[0][1]}")
    rows = []
    for candidate, mode in grid:
        run_dir = out / "runs" / f"{candidate.name}-{mode}"
        per_seed = rows_of(run_dir)
        values = [score(r) for r in per_seed]
        mean, std = intervals.seed_spread(values)
        ci = intervals.candidate_interval(per_seed, score, config.resamples)
        diff = intervals.difference_interval(per_seed, baseline_rows, score, config.resamples)
        summary = json.loads((run_dir / "report.json").read_text())
        rows.append(
            {
                "candidate": candidate.name,
                "model": str(candidate.folder),
                "mode": mode,
                "per_seed": dict(zip(map(str, config.seeds), values)),
                "mean": mean,
                "std": std,
                "interval": [ci.low, ci.high],
                "difference": diff.estimate,
                "difference_interval": [diff.low, diff.high],
                "verdict": "baseline" if (candidate, mode) == grid[0] else intervals.verdict(diff),
                "finetune_minutes_per_seed": round(summary.get("wall_seconds", 0) / 60 / len(config.seeds), 2),
                "pretraining_minutes": pretraining_minutes(candidate),
                **speed(run_dir / "final", config, examples["test"]),
                "run": str(run_dir),
            }
        )
    result = {
        "task": config.task,
        "metric": metric,
        "split": "test (each run's checkpoint chosen on valid)",
        "test_file": config.test_file,
        "test_examples": len(baseline_rows[0]),
        "seeds": list(config.seeds),
        "baseline": f"{grid[0][0].name} ({grid[0][1]})",
        "interval": "95%, bootstrap over seeds and test examples; differences paired on the same examples",
        "rows": rows,
    }
    html = write_report(out, result)
    write_json_atomic(out / "report.json", result)
    folder.finish(report=str(out / "report.json"))
    print_table(result)
    print(f"report: {html}", flush=True)
    return out


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['task']}: test {result['metric']} ({len(result['seeds'])} seeds)")
    for column in ("candidate", "mode", "mean ± std", "95% interval", "vs baseline", "verdict", "params", "ms/ex", "ex/s", "pretrain min"):  # fmt: skip
        table.add_column(column)
    for r in result["rows"]:
        table.add_row(
            r["candidate"],
            r["mode"],
            f"{r['mean']:.4f} ± {r['std']:.4f}",
            f"[{r['interval'][0]:.4f}, {r['interval'][1]:.4f}]",
            f"{r['difference']:+.4f} [{r['difference_interval'][0]:+.4f}, {r['difference_interval'][1]:+.4f}]",
            r["verdict"],
            f"{r['parameters'] / 1e6:.1f}M",
            f"{r['latency_ms']:.1f}",
            f"{r['throughput']:.0f}",
            "" if r["pretraining_minutes"] is None else f"{r['pretraining_minutes']:.1f}",
        )
    Console(width=160).print(table)


def charts_svg(result: dict) -> tuple[str, str]:
    """(metric bars with their intervals, quality vs batch-1 latency) as inline SVG."""
    plt = report.pyplot()
    rows = result["rows"]
    labels = [f"{r['candidate']}\n{r['mode']}" for r in rows]
    means = [r["mean"] for r in rows]
    errors = [[r["mean"] - r["interval"][0] for r in rows], [r["interval"][1] - r["mean"] for r in rows]]
    fig, ax = plt.subplots(figsize=(max(4, 1.4 * len(rows)), 3.2))
    ax.bar(range(len(rows)), means, yerr=errors, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(rows)), labels)
    ax.set_ylabel(f"test {result['metric']}")
    low = min(r["interval"][0] for r in rows)
    ax.set_ylim(max(0.0, low - 0.1 * abs(low)), None)
    bars = report.svg_figure(fig)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for r in rows:
        ax.errorbar(r["latency_ms"], r["mean"], yerr=[[r["mean"] - r["interval"][0]], [r["interval"][1] - r["mean"]]], fmt="o", capsize=3)  # fmt: skip
        ax.annotate(f"{r['candidate']} ({r['mode']})", (r["latency_ms"], r["mean"]), fontsize=8, xytext=(4, 4), textcoords="offset points")  # fmt: skip
    ax.set_xlabel("latency per example at batch 1 (ms)")
    ax.set_ylabel(f"test {result['metric']}")
    scatter = report.svg_figure(fig)
    plt.close(fig)
    return bars, scatter


def curves_svg(result: dict) -> str:
    """The validation metric over steps of each candidate and mode (first seed)."""
    plt = report.pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for r in result["rows"]:
        first = finetune_mod.seed_folders(Path(r["run"]), result["seeds"])[0]
        points = [(row["step"], row[result["metric"]]) for row in MetricsLog(first).rows() if result["metric"] in row]
        if points:
            ax.plot(*zip(*points), marker=".", label=f"{r['candidate']} ({r['mode']})")
    ax.set_xlabel("step")
    ax.set_ylabel(f"valid {result['metric']}")
    ax.legend(fontsize=8)
    svg = report.svg_figure(fig)
    plt.close(fig)
    return svg


def write_report(out: Path, result: dict) -> Path:
    rows = result["rows"]
    best = max(rows, key=lambda r: r["mean"])
    lead = report.Lead(
        f"Which model for {result['task']}? {len(rows)} candidate x mode rows, {len(result['seeds'])} seeds each",
        f"best: {best['candidate']} ({best['mode']}), test {result['metric']} {best['mean']:.4f} ({best['verdict']})",
        f"{result['test_file']}, {result['test_examples']:,} examples, scored once per run; {result['interval']}",
        {"baseline": result["baseline"]},
    )
    table = {f"{r['candidate']} ({r['mode']})": shown_row(r) for r in rows}
    bars, scatter = charts_svg(result)
    sections = [
        ("Test metric with 95% intervals", bars),
        ("Table", report.grid_html(table)),
        ("Quality against latency", scatter),
        ("Learning curves (valid, first seed)", curves_svg(result)),
    ]
    return report.write_html(out / "report.html", f"lmforge compare: {out.name}", sections, lead)


def shown_row(r: dict) -> dict:
    """One row of report.html's table, rounded as people read it."""
    pretrain = r["pretraining_minutes"]
    return {
        "test (mean ± std)": f"{r['mean']:.4f} ± {r['std']:.4f}",
        "95% interval": f"[{r['interval'][0]:.4f}, {r['interval'][1]:.4f}]",
        "vs baseline [95%]": f"{r['difference']:+.4f} [{r['difference_interval'][0]:+.4f}, {r['difference_interval'][1]:+.4f}]",
        "verdict": r["verdict"],
        "params": f"{r['parameters'] / 1e6:.1f}M",
        "MB": r["size_mb"],
        "ms/example (batch 1)": r["latency_ms"],
        "examples/s (batch 32)": r["throughput"],
        "fine-tune min/seed": r["finetune_minutes_per_seed"],
        "pretrain min": "" if pretrain is None else pretrain,
    }
