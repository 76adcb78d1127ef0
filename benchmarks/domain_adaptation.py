"""Pretrained, adapted, or from scratch? The demonstration of `lmforge adapt` + `lmforge compare`.

Candidates, each fully fine-tuned with the same settings and seeds (the first also head-only):
  (1) MiniLM-L6 as it is, full and head-only;
  (2) MiniLM-L6 after `lmforge adapt` on biomedical text: ../shared/data/pubmed-abstracts plus the
      tasks' train text (task-adaptive), no dev or test text; WikiText-2 valid scored for forgetting;
  (3) a BERT of MiniLM-L6's shape (6 layers, width 384, 12 heads) pretrained from scratch by
      `lmforge pretrain` on the same text for the minutes (2)'s training took.
Tasks: ChemProt (classification, micro-F1) and NCBI-disease (NER, entity F1), SciBERT's splits.

    .venv/bin/python benchmarks/domain_adaptation.py --data ../shared/data            # hours on 2 cores
    .venv/bin/python benchmarks/domain_adaptation.py --data ../shared/data --quick --out /tmp/da  # smoke run

Results: benchmarks/results/domain_adaptation.{json,md} (with --quick only when --out is given), and
the compare reports under the work folder. Run it alone on the machine (2 cores).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LMFORGE = [sys.executable, "-m", "lmforge"]
TASKS = {
    "chemprot": ("classification", "scibert/chemprot", "{}.jsonl", "f1_micro"),
    "ncbi-disease": ("ner", "scibert/ncbi-disease", "{}.txt", "f1"),
}


def lmforge(*args: str) -> None:
    command = [*LMFORGE, *map(str, args)]
    print("$ " + " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="the shared data folder")
    parser.add_argument("--work", default=str(ROOT / "runs" / "domain_adaptation"), help="run folders")
    parser.add_argument("--adapt_minutes", type=float, default=20.0, help="training minutes of adapt")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--epochs", default="2")
    parser.add_argument(
        "--limit",
        type=lambda text: dict(part.split("=") for part in text.split(",") if part),
        default={},
        help="train on the first N examples of a task, e.g. ncbi-disease=2500 (dev and test stay whole)",
    )
    parser.add_argument("--quick", action="store_true", help="minutes and steps cut to a smoke run")
    parser.add_argument("--out", default=None, help="results path without suffix")
    args = parser.parse_args()
    data, work = Path(args.data), Path(args.work)
    for name, (_, folder, pattern, _) in TASKS.items():
        if not (data / folder / pattern.format("train")).is_file():
            sys.exit(f"{data / folder}: {name} is not there; pass --data with the shared data folder")
    minutes = 0.5 if args.quick else args.adapt_minutes
    quick = ["--format.limit", "200", "--train.max_steps", "10"] if args.quick else []
    started = time.time()

    task_train = [data / folder / pattern.format("train") for _, folder, pattern, _ in TASKS.values()]
    adapted = work / "adapted"
    if not (adapted / "report.json").is_file():
        again = ["--resume", "true"] if (adapted / "config.yaml").is_file() else []  # a killed benchmark goes on
        lmforge(
            "adapt", "--model", "minilm", "--data", data / "pubmed-abstracts" / "abstracts.jsonl", *task_train,
            "--eval_general", data / "wikitext-2" / "valid.txt", "--train.max_minutes", minutes, "--out", adapted,
            *again,
        )  # fmt: skip
    adaptation = json.loads((adapted / "report.json").read_text())

    scratch = work / "scratch"
    if not (scratch / "report.json").is_file():
        again = ["--resume", "true"] if any(scratch.glob("checkpoints/step_*")) else []
        if scratch.exists() and not again:
            shutil.rmtree(scratch)  # started, nothing kept: start again
        text = [data / "pubmed-abstracts" / "abstracts.jsonl", *sorted((adapted / "task_text").glob("*.jsonl"))]
        text += [p for p in task_train if p.suffix == ".jsonl"]  # ChemProt's JSONL is read as is by adapt too
        lmforge(
            "pretrain", "--data", *text, "--train.objective", "mlm", "--model.family", "bert",
            "--model.layers", 6, "--model.width", 384, "--model.heads", 12, "--model.intermediate", 1536,
            "--model.context", 128, "--tokenizer.kind", "wordpiece", "--tokenizer.vocab_size", 30522,
            "--tokenizer.lowercase", "true", "--train.batch_size", 32,
            "--train.max_minutes", adaptation["train_minutes"], "--out", scratch, *again,
        )  # fmt: skip

    results = {}
    for name, (task, folder, pattern, metric) in TASKS.items():
        out = work / f"compare-{name}"
        files = [data / folder / pattern.format(split) for split in ("train", "dev", "test")]
        recipe = {  # head-only for the model as it is; every candidate fully fine-tuned
            "candidates": [
                {"model": "minilm", "modes": ["full", "head"]},
                {"model": str(adapted), "name": "adapted"},
                {"model": str(scratch), "name": "scratch"},
            ],
            "modes": ["full"],
        }
        work.mkdir(parents=True, exist_ok=True)
        (work / f"compare-{name}.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        flags = ["--resume", "true"] if (out / "runs").exists() else []
        limit = args.limit.get(name)
        flags += ["--format.limit", str(limit)] if limit else []
        lmforge(
            "compare", "--config", work / f"compare-{name}.yaml", "--task", task, "--seeds", args.seeds,
            "--epochs", args.epochs, "--metric", metric, "--train_file", files[0], "--valid_file", files[1],
            "--test_file", files[2], "--out", out, *flags, *quick,
        )  # fmt: skip
        results[name] = json.loads((out / "report.json").read_text())

    from lmforge.hardware import describe

    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": describe(),
        "quick": args.quick,
        "adaptation": {
            k: adaptation[k] for k in ("before", "after", "train_minutes", "training", "scored_tokens", "base")
        },
        "scratch_training_minutes": round(
            json.loads((scratch / "report.json").read_text())["training_seconds"] / 60, 2
        ),
        "tasks": results,
        "wall_minutes": round((time.time() - started) / 60, 1),
    }
    out = args.out or (None if args.quick else str(ROOT / "benchmarks" / "results" / "domain_adaptation"))
    print(markdown(result))
    if out:
        Path(out + ".json").write_text(json.dumps(result, indent=2) + "\n")
        Path(out + ".md").write_text(markdown(result))


def markdown(result: dict) -> str:
    lines = [
        "# Pretrained, adapted or from scratch (benchmarks/domain_adaptation.py)",
        "",
        f"- {result['date']}, {result['machine']}{' (quick smoke run: not a result)' if result['quick'] else ''}",
        f"- adaptation: {result['adaptation']['train_minutes']} training minutes; from scratch: "
        f"{result['scratch_training_minutes']} minutes",
        "",
        "| text | metric | before | after |",
        "| --- | --- | --- | --- |",
    ]
    for text, after in result["adaptation"]["after"].items():
        before = result["adaptation"]["before"][text]
        for key in ("masked_accuracy", "pseudo_perplexity"):
            lines.append(f"| {text} | {key} | {before[key]:.4g} | {after[key]:.4g} |")
    for name, compared in result["tasks"].items():
        lines += [
            "",
            f"## {name}: test {compared['metric']}, {len(compared['seeds'])} seeds, {compared['interval']}",
            "",
            "| candidate | mode | mean ± std | 95% interval | vs baseline | verdict | ms/example | fine-tune min/seed | pretrain min |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in compared["rows"]:
            lines.append(
                f"| {r['candidate']} | {r['mode']} | {r['mean']:.4f} ± {r['std']:.4f} | "
                f"[{r['interval'][0]:.4f}, {r['interval'][1]:.4f}] | {r['difference']:+.4f} "
                f"[{r['difference_interval'][0]:+.4f}, {r['difference_interval'][1]:+.4f}] | {r['verdict']} | "
                f"{r['latency_ms']:.1f} | {r['finetune_minutes_per_seed']} | {r['pretraining_minutes'] or ''} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
