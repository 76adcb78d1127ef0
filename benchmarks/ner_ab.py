"""NER, lmforge vs a transformers Trainer: controlled A/B runs to find what moves entity F1.

    .venv/bin/python benchmarks/ner_ab.py --datasets conll --variants lmforge trainer --seeds 1 2 3
    .venv/bin/python benchmarks/ner_ab.py --list          # the variants and what each one changes
    .venv/bin/python benchmarks/ner_ab.py --report        # rewrite ner_ab.md from the saved runs

Both sides train MiniLM-L6-H384 (`minilm`) on the same encoded features (lmforge's CoNLL reader,
tokenizer, first-sub-token labels and sentence splitting at max_length), with the same
hyper-parameters (HPARAMS: lr 1e-4, batch 16, 2 epochs, linear decay, warm-up 6% of the total
steps on both sides, weight decay 0.01, grad clip 1), and are scored once at the end with the same
function (`task.metrics`, seqeval strict IOB2). A variant switches one factor on one side.

Data (../shared/data): CoNLL-2003 - 2,000 train sentences (fixed subset, seed 0, as
finetune_glue.py), 1,000 test sentences; NCBI-disease - 2,000 train sentences (same rule), the whole
test split. Every finished run is kept in benchmarks/results/ner_ab.json (keyed by dataset, variant
and seed), so runs can be added a few at a time; ner_ab.md is rewritten from it.
Threads: 1 on both sides; on a shared machine wall times are not comparable, F1 is.
Finding (CONCLUSION below, numbers in ner_ab.md): length-grouped training batches cost ~1 F1 on
both sides; lmforge's NER training batches are now random (finetune.groups_by_length).
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from finetune_glue import (  # noqa: E402  the GLUE benchmark's settings and Trainer side
    DATA,
    HPARAMS,
    RESULTS,
    rows_of,
    subset_conll,
    trainer_arguments,
)

from lmforge import finetune, hardware  # noqa: E402
from lmforge.runfolder import git_sha, library_versions  # noqa: E402
from lmforge.tasks import backbone  # noqa: E402
from lmforge.tasks import features as task_features  # noqa: E402
from lmforge.tasks.data import FormatConfig  # noqa: E402
from lmforge.tasks.features import predict_logits  # noqa: E402

DATASETS = {  # name -> (train file, eval file, train sentences, eval sentences; None: all)
    "conll": (DATA / "conll2003/train.txt", DATA / "conll2003/test.txt", 2000, 1000),
    "ncbi": (DATA / "scibert/ncbi-disease/train.txt", DATA / "scibert/ncbi-disease/test.txt", 2000, None),
}
STEM = "ner_ab"
COMMANDS = [  # the invocations behind ner_ab.json (OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/ner_ab.py ...)
    "--datasets conll --variants trainer trainer_group lmforge lmforge_default lmforge_random lmforge_chunk2 lmforge_chunk4 lmforge_split lmforge_warmup3 --seeds 1 2 3 4 5 6",
    "--datasets conll --variants lmforge_fp32 lmforge_sdpa --seeds 1 2 3",
    "--datasets ncbi --variants trainer trainer_group lmforge lmforge_default --seeds 1 2 3 4 5 6",
    "--datasets ncbi --variants lmforge_random lmforge_split --seeds 1 2 3",
]
CONCLUSION = """
**No lmforge-only cause; one factor moves F1 on both sides: length-grouped training batches.**

- Before the fix, lmforge vs Trainer (random batches), paired by seed: CoNLL-2003 -0.28 ± 0.64 (lower in 4 of 6
  seeds), NCBI-disease -0.08 ± 0.75 (3 of 6). The seed-to-seed spread is larger (Trainer std 1.16 on CoNLL, 0.82 on
  NCBI; one Trainer seed scores 74.99, another 78.25), so issue 8's 76.5 vs 77.4 over 3 seeds is within noise.
- Length grouping (sorting within chunks of 50 batches, lmforge's old default and the Trainer's `group_by_length`)
  costs F1 wherever it is switched on: Trainer -1.33 on CoNLL and -0.92 on NCBI, lower in 6 of 6 seeds both times;
  lmforge -0.93 on CoNLL (6 of 6), -0.23 on NCBI (3 of 6, within noise). On CoNLL length is content: sentences of
  <= 8 words are results tables, datelines and headlines (32% numeric words, 0.22 entities per word vs 6% and
  0.10 for longer ones), so a grouped batch holds one kind of text. Sorting within chunks of 2 or 4 batches does not
  reliably recover it (+0.01, +0.55).
- No effect, within ±0.1: bf16 vs fp32 training (+0.00, 3 seeds), attention kernel (sdpa vs the timed choice,
  -0.03), inference precision (the `fp32 infer` column), loss normalisation (per batch vs the split's mean labelled
  tokens per batch, +0.11 over 6 seeds; it changes the gradient share of short CoNLL sentences from 40% to 15%),
  warm-up 3% vs 6% of the steps (-0.02). Not differences here: which sub-tokens carry labels and sentence splitting
  (both sides train on the same encoded rows; no CoNLL sentence exceeds 128 sub-tokens, 3 of 2,000 NCBI ones do).
- Fix (src/lmforge/finetune.py, `--train.group_by_length auto`): NER training batches are random (`TaskObjective(group_chunk=1)`;
  classification and QA still group by length);
  inference still sorts by length. After it (`lmforge_default`): CoNLL-2003 77.59 ± 0.61 vs Trainer 76.95 ± 1.16
  (+0.65 ± 0.91), NCBI-disease 73.98 ± 0.80 vs 73.83 ± 0.82 (+0.14 ± 1.14), 6 seeds each: within the Trainer's seed
  spread on both. Cost: a random batch pads to its longest row, 2.4x the computed tokens of grouped batches on
  CoNLL, 2.0x on NCBI.
- Side finding: with `attention auto` the kernel is chosen by timing, so under load the same seed can train with a
  different kernel and score differently (CoNLL seed 1: 77.78 with eager, 77.87 with sdpa_fp32; superseded rows in
  ner_ab.json).
"""


@dataclass
class Variant:
    """One side's settings; everything not named here is HPARAMS on both sides."""

    side: str  # lmforge | trainer
    about: str
    lmforge: dict = field(default_factory=dict)  # finetune.train_defaults fields
    objective: dict = field(
        default_factory=dict
    )  # TaskObjective arguments: group_chunk (1: random batches), normaliser
    trainer: dict = field(default_factory=dict)  # TrainingArguments fields
    warmup: float = HPARAMS["warmup"]  # warm-up as a fraction of the total optimizer steps


GROUPED = {"group_chunk": task_features.GROUP_CHUNK, "normaliser": "batch"}  # lmforge's batches before the fix
VARIANTS = {
    "trainer": Variant("trainer", "Trainer defaults: fp32, random batches, mean loss per batch"),
    "trainer_group": Variant(
        "trainer",
        "Trainer with train_sampling_strategy=group_by_length (megabatches of 50, as lmforge)",
        trainer={"train_sampling_strategy": "group_by_length"},
    ),
    "trainer_bf16": Variant(
        "trainer", "Trainer with bf16 autocast (training; predict in bf16 too)", trainer={"bf16": True}
    ),
    "lmforge": Variant(
        "lmforge",
        "lmforge before the fix: precision auto (bf16 autocast here), attention auto, length-grouped batches, "
        "loss / this batch's labelled tokens",
        objective=GROUPED,
    ),
    "lmforge_default": Variant(
        "lmforge", "lmforge after the fix, every default: precision auto (bf16), attention auto, random batches"
    ),
    "lmforge_warmup3": Variant(
        "lmforge",
        "lmforge after the fix, warm-up 3% of the steps (finetune_seeds' Trainer: 6% of one of 2 epochs)",
        warmup=0.03,
    ),
    "lmforge_fp32": Variant(
        "lmforge", "lmforge, train.precision fp32", lmforge={"precision": "fp32"}, objective=GROUPED
    ),
    "lmforge_random": Variant(
        "lmforge", "lmforge, random batches (no length grouping)", objective={"group_chunk": 1, "normaliser": "batch"}
    ),
    "lmforge_chunk2": Variant(
        "lmforge",
        "lmforge, length sorting within chunks of 2 batches (1.7x the tokens of 50 on CoNLL)",
        objective={"group_chunk": 2, "normaliser": "batch"},
    ),
    "lmforge_chunk4": Variant(
        "lmforge",
        "lmforge, length sorting within chunks of 4 batches (1.4x the tokens of 50 on CoNLL)",
        objective={"group_chunk": 4, "normaliser": "batch"},
    ),
    "lmforge_fp32_random": Variant(
        "lmforge",
        "lmforge, fp32 and random batches",
        lmforge={"precision": "fp32"},
        objective={"group_chunk": 1, "normaliser": "batch"},
    ),
    "lmforge_split": Variant(
        "lmforge",
        "lmforge, length-grouped batches, loss / the split's mean labelled tokens per batch (normaliser split)",
        objective={**GROUPED, "normaliser": "split"},
    ),
    "lmforge_sdpa": Variant(
        "lmforge",
        "lmforge bf16, train.attention sdpa (no kernel choice)",
        lmforge={"attention": "sdpa"},
        objective=GROUPED,
    ),
    "lmforge_eager": Variant(
        "lmforge", "lmforge bf16, train.attention eager", lmforge={"attention": "eager"}, objective=GROUPED
    ),
    "lmforge_sdpa_fp32": Variant(
        "lmforge", "lmforge bf16, train.attention sdpa_fp32", lmforge={"attention": "sdpa_fp32"}, objective=GROUPED
    ),
}


def materialise(dataset: str, folder: Path) -> tuple[Path, Path]:
    train, valid, train_size, eval_size = DATASETS[dataset]
    return subset_conll(train, folder / f"{dataset}_train.txt", train_size), subset_conll(
        valid, folder / f"{dataset}_eval.txt", eval_size
    )


def config_for(
    train: Path, valid: Path, out: Path, seed: int, variant: Variant, warmup_steps: int
) -> finetune.FinetuneConfig:
    training = finetune.train_defaults(
        batch_size=HPARAMS["batch_size"],
        lr=HPARAMS["lr"],
        warmup_steps=warmup_steps,
        schedule=HPARAMS["schedule"],
        weight_decay=HPARAMS["weight_decay"],
        seed=seed,
        best_metric="f1",
        eval_every=10**9,
        log_every=50,
        **variant.lmforge,
    )  # one evaluation, at the end
    return finetune.FinetuneConfig(
        task="ner",
        model="minilm",
        train_file=str(train),
        valid_file=str(valid),
        out=str(out),
        mode="full",
        epochs=HPARAMS["epochs"],
        format=FormatConfig(max_length=HPARAMS["max_length"]),
        train=training,
    )


def total_steps(rows: int) -> int:
    return int(HPARAMS["epochs"] * -(-rows // HPARAMS["batch_size"]))


def entity_scores(metrics: dict) -> dict:
    return {k: round(100 * metrics[k], 3) for k in ("f1", "precision", "recall")}


def run_lmforge(config: finetune.FinetuneConfig, variant: Variant, prepared: finetune.Prepared) -> dict:
    """finetune.run as a user would call it; the final model is also re-scored with fp32 inference."""
    finetune.TaskObjective = functools.partial(
        task_features.TaskObjective, **variant.objective
    )  # the name finetune.run_seed builds
    try:
        finetune.run(config)
    finally:
        finetune.TaskObjective = task_features.TaskObjective
    summary = json.loads((Path(config.out) / "report.json").read_text())
    model, _ = backbone.load(Path(config.out) / "final", prepared.task)
    logits, _ = predict_logits(
        model,
        prepared.valid,
        backbone.full_forward(prepared.task),
        prepared.task,
        32,
        lambda: torch.autocast("cpu", enabled=False),
    )
    return {
        **entity_scores(summary["metrics"]),
        "f1_fp32_inference": round(100 * prepared.task.metrics(logits, prepared.valid)["f1"], 3),
        "train_loss": summary["train_loss"],
        "precision_used": summary["precision"],
        "attention": summary["attention"],
        "steps": summary["steps"],
    }


def run_trainer(
    config: finetune.FinetuneConfig, variant: Variant, prepared: finetune.Prepared, seed: int, out: Path
) -> dict:
    """transformers.Trainer on lmforge's encoded rows (as finetune_glue.run_trainer), same seed and warm-up steps."""
    from transformers import DataCollatorForTokenClassification, Trainer

    task = prepared.task
    torch.manual_seed(seed)  # the new head's initial weights
    model, tokenizer = backbone.load(prepared.model_dir, task)
    args = trainer_arguments(
        out,
        seed,
        per_device_eval_batch_size=32,
        num_train_epochs=HPARAMS["epochs"],
        warmup_steps=config.train.warmup_steps,
        **variant.trainer,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=rows_of(prepared.train),
        data_collator=DataCollatorForTokenClassification(tokenizer),
    )
    result = trainer.train()
    # transformers 5 also length-groups (shuffles) the *prediction* order under group_by_length; rows must come back in order
    trainer.args.train_sampling_strategy = "random"
    predictions = torch.as_tensor(trainer.predict(rows_of(prepared.valid)).predictions).float()
    lengths = prepared.valid.lengths
    metrics = task.metrics([predictions[i, : lengths[i]] for i in range(len(lengths))], prepared.valid)
    return {**entity_scores(metrics), "train_loss": result.training_loss, "steps": result.global_step}


def run_one(dataset: str, name: str, seed: int, work: Path) -> dict:
    variant = VARIANTS[name]
    train, valid = materialise(dataset, work)
    out = work / f"{dataset}-{name}-{seed}"
    probe = config_for(train, valid, out, seed, variant, 0)
    prepared = finetune.prepare(probe)
    warmup = round(
        variant.warmup * total_steps(len(prepared.train))
    )  # the same fraction of the total steps on both sides
    config = config_for(train, valid, out, seed, variant, warmup)
    started = time.perf_counter()
    row = (
        run_lmforge(config, variant, prepared)
        if variant.side == "lmforge"
        else run_trainer(config, variant, prepared, seed, out)
    )
    return {
        "dataset": dataset,
        "variant": name,
        "seed": seed,
        "warmup_steps": warmup,
        "commit": git_sha(),
        **row,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


# --- results ---------------------------------------------------------------------------------------


def load_results() -> dict:
    path = RESULTS / f"{STEM}.json"
    if path.is_file():
        return json.loads(path.read_text())
    return {"runs": []}


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (dataset, variant): F1 per seed, mean and std (sample std over seeds)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["dataset"], run["variant"]), []).append(run)
    rows = []
    order = {name: i for i, name in enumerate(VARIANTS)}  # rows of variants this copy does not know go last
    for (dataset, name), group in sorted(
        groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], len(order)), kv[0][1])
    ):
        group = sorted(group, key=lambda r: r["seed"])
        f1 = [r["f1"] for r in group]
        known = VARIANTS.get(name, Variant("?", "?"))
        row = {
            "dataset": dataset,
            "variant": name,
            "side": known.side,
            "about": known.about,
            "seeds": [r["seed"] for r in group],
            "f1": f1,
            "mean": statistics.fmean(f1),
            "std": statistics.stdev(f1) if len(f1) > 1 else 0.0,
        }
        if all("f1_fp32_inference" in r for r in group):
            fp32 = [r["f1_fp32_inference"] for r in group]
            row.update(f1_fp32_inference=fp32, mean_fp32_inference=statistics.fmean(fp32))
        rows.append(row)
    return rows


PAIRS = [  # (variant, reference): one factor apart; differences are paired by seed (same head initialisation on both sides)
    ("lmforge", "trainer"),
    ("lmforge_default", "trainer"),
    ("lmforge_random", "trainer"),
    ("trainer_group", "trainer"),
    ("lmforge_random", "lmforge"),
    ("lmforge_chunk2", "lmforge"),
    ("lmforge_chunk4", "lmforge"),
    ("lmforge_split", "lmforge"),
    ("lmforge_fp32", "lmforge"),
    ("lmforge_sdpa", "lmforge"),
    ("lmforge_default", "lmforge"),
    ("lmforge_default", "lmforge_random"),
    ("lmforge_warmup3", "lmforge_default"),
]


def paired(runs: list[dict]) -> list[dict]:
    """Per dataset and pair: mean and std of the per-seed F1 difference, and how many seeds went which way."""
    f1 = {(r["dataset"], r["variant"], r["seed"]): r["f1"] for r in runs}
    rows = []
    for dataset in DATASETS:
        for variant, reference in PAIRS:
            seeds = sorted(s for d, v, s in f1 if d == dataset and v == variant and (dataset, reference, s) in f1)
            if not seeds:
                continue
            diffs = [f1[(dataset, variant, s)] - f1[(dataset, reference, s)] for s in seeds]
            rows.append(
                {
                    "dataset": dataset,
                    "variant": variant,
                    "reference": reference,
                    "seeds": seeds,
                    "mean": statistics.fmean(diffs),
                    "std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                    "higher": sum(d > 0 for d in diffs),
                    "lower": sum(d < 0 for d in diffs),
                }
            )
    return rows


def markdown(results: dict) -> str:
    names = {
        "conll": "CoNLL-2003 (2,000 train, 1,000 test sentences)",
        "ncbi": "NCBI-disease (2,000 train sentences, whole test split)",
    }
    lines = [
        "# NER A/B: lmforge vs transformers Trainer",
        "",
        f"- machine: {results['machine']}; versions: torch {results['versions'].get('torch')}, transformers {results['versions'].get('transformers')}",
        "- commands (`OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/ner_ab.py ...`; each run is one row of ner_ab.json): "
        + "; ".join(f"`{c}`" for c in COMMANDS),
        f"- hyper-parameters, both sides: `{json.dumps(HPARAMS)}`; warm-up = 6% of the total optimizer steps on both sides; "
        "one evaluation at the end, scored with `task.metrics` (seqeval strict IOB2, entity F1 x 100)",
        "- every run used 1 torch thread on a shared 2-core machine while other jobs ran: wall times are not comparable and are not reported; F1 is",
        "- `fp32 infer`: the lmforge run's final model re-scored with fp32 inference (lmforge's own evaluation runs under its training precision)",
        "",
    ]
    for dataset in DATASETS:
        rows = [r for r in results["summary"] if r["dataset"] == dataset]
        if not rows:
            continue
        trainer = next((r for r in rows if r["variant"] == "trainer"), None)
        lines += [
            f"## {names[dataset]}",
            "",
            "| variant | side | what changes | seeds | F1 per seed | mean ± std | vs Trainer | fp32 infer mean |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            gap = f"{r['mean'] - trainer['mean']:+.2f}" if trainer and r is not trainer else "-"
            fp32 = f"{r['mean_fp32_inference']:.2f}" if "mean_fp32_inference" in r else "-"
            lines.append(
                f"| {r['variant']} | {r['side']} | {r['about']} | {','.join(map(str, r['seeds']))} | "
                f"{' / '.join(f'{v:.2f}' for v in r['f1'])} | {r['mean']:.2f} ± {r['std']:.2f} | {gap} | {fp32} |"
            )
        lines.append("")
        pairs = [p for p in results.get("paired", []) if p["dataset"] == dataset]
        if pairs:
            lines += [
                "Paired by seed (variant - reference, F1 points):",
                "",
                "| variant | reference | seeds | mean ± std of the difference | seeds higher / lower |",
                "|---|---|---|---|---|",
            ]
            lines += [
                f"| {p['variant']} | {p['reference']} | {len(p['seeds'])} | {p['mean']:+.2f} ± {p['std']:.2f} | {p['higher']} / {p['lower']} |"
                for p in pairs
            ]
            lines.append("")
    if CONCLUSION:
        lines += ["## Conclusion", "", CONCLUSION.strip(), ""]
    return "\n".join(lines)


def write(results: dict) -> None:
    results["summary"] = summarise(results["runs"])
    results["paired"] = paired(results["runs"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{STEM}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{STEM}.md").write_text(markdown(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--variants", nargs="*", default=["trainer", "lmforge"], choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[1, 2, 3])
    parser.add_argument("--again", action="store_true", help="rerun runs already in ner_ab.json (default: skip them)")
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    parser.add_argument(
        "--report",
        action="store_true",
        help="rewrite ner_ab.md (and the summary in ner_ab.json) from the saved runs, and exit",
    )
    args = parser.parse_args()
    if args.list:
        for name, variant in VARIANTS.items():
            print(f"{name:22s} {variant.side:8s} {variant.about}")
        return
    torch.set_num_threads(1)
    results = load_results()
    if args.report:
        results.pop("command", None)
        results["commands"] = [
            "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/ner_ab.py " + c for c in COMMANDS
        ]
        write(results)
        return print(markdown(results))
    results.update(
        machine=hardware.describe(),
        versions=library_versions(),
        threads=1,
        commands=["OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/ner_ab.py " + c for c in COMMANDS],
    )
    results.pop("command", None)
    work = Path(tempfile.mkdtemp(prefix="lmforge-ner-ab-"))
    for dataset in args.datasets:
        for seed in args.seeds:
            for name in args.variants:
                key = (dataset, name, seed)
                if not args.again and any((r["dataset"], r["variant"], r["seed"]) == key for r in results["runs"]):
                    continue
                print(f"=== {dataset} {name} seed {seed}", flush=True)
                row = run_one(dataset, name, seed, work)
                with open(
                    Path(tempfile.gettempdir()) / f"{STEM}.lock", "w"
                ) as lock:  # several invocations may run side by side
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    results = {**load_results(), **{k: v for k, v in results.items() if k != "runs"}}
                    replaced = [r for r in results["runs"] if (r["dataset"], r["variant"], r["seed"]) == key]
                    results["superseded"] = (
                        results.get("superseded", []) + replaced
                    )  # kept for the record, not summarised
                    results["runs"] = [r for r in results["runs"] if (r["dataset"], r["variant"], r["seed"]) != key] + [
                        row
                    ]
                    results["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
                    write(results)
                print(f"=== {dataset} {name} seed {seed}: F1 {row['f1']:.2f}", flush=True)
    print(markdown(results))


if __name__ == "__main__":
    main()
