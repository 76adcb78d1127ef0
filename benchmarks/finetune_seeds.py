"""How large is the noise? The fine-tuning benchmark's comparison repeated over seeds.

`finetune_glue.py` runs each task once (seed 42), so "lmforge within noise of the Trainer" needs
a noise estimate: this script runs chosen tasks with several seeds on both sides (the seed sets the
new head's initial weights, dropout and data order on each side), same data, sizes and
hyper-parameters as `finetune_glue.py`, and reports mean, std and the lmforge - Trainer gap in
units of the Trainer's seed std.

    .venv/bin/python benchmarks/finetune_seeds.py                         # SST-2 and CoNLL-2003, seeds 1,2,3 (~15 min)
    .venv/bin/python benchmarks/finetune_seeds.py --only RTE --seeds 1 2 3 4 5

Writes benchmarks/results/finetune_seeds.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import finetune_glue as glue  # noqa: E402
import torch  # noqa: E402

from lmforge import hardware  # noqa: E402
from lmforge.runfolder import library_versions  # noqa: E402


def score(task: glue.Task, metrics: dict) -> float:
    value = metrics[task.metric]
    return value if task.task == "qa" else 100 * value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=["SST-2", "CoNLL-2003"], help="task names (default: SST-2 CoNLL-2003)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[1, 2, 3])
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--squad-size", type=int, default=1200)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    glue.HPARAMS["epochs"] = args.epochs
    work = Path(tempfile.mkdtemp(prefix="lmforge-seeds-"))
    results = {"machine": hardware.describe(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "versions": library_versions(), "hyper_parameters": {k: v for k, v in glue.HPARAMS.items() if k != "seed"},
               "seeds": args.seeds, "command": "python benchmarks/finetune_seeds.py " + " ".join(sys.argv[1:]), "tasks": {}}
    for task in glue.tasks(False, args.train_size, args.squad_size):
        if task.name not in args.only:
            continue
        train, valid = glue.materialise(task, work)
        runs = {"lmforge": [], "trainer": []}
        for i, seed in enumerate(args.seeds):
            glue.HPARAMS["seed"] = seed
            config = glue.lmforge_config(task, train, valid, work / f"{task.name}-lmforge-{seed}")
            sides = [("lmforge", lambda: glue.run_lmforge(config)), ("trainer", lambda: glue.run_trainer(config, work / f"{task.name}-trainer-{seed}"))]
            for side, go in (sides if i % 2 == 0 else sides[::-1]):
                print(f"=== {task.name} seed {seed}: {side}", flush=True)
                out = go()
                runs[side].append({"seed": seed, "score": score(task, out["metrics"]), "wall_seconds": out["wall_seconds"]})
        summary = {}
        for side, rows in runs.items():
            scores = [r["score"] for r in rows]
            summary[side] = {"runs": rows, "mean": statistics.fmean(scores), "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                             "mean_wall_seconds": statistics.fmean(r["wall_seconds"] for r in rows)}
        gap = summary["lmforge"]["mean"] - summary["trainer"]["mean"]
        summary.update(metric=task.metric, train_size=task.train_size, gap=gap,
                       gap_in_trainer_std=gap / summary["trainer"]["std"] if summary["trainer"]["std"] else None,
                       speedup=summary["trainer"]["mean_wall_seconds"] / summary["lmforge"]["mean_wall_seconds"])
        results["tasks"][task.name] = summary
        write(results)
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = ["# Fine-tuning: seed noise, lmforge vs Trainer", "",
             f"- machine: {results['machine']}; date: {results['date']}",
             f"- versions: torch {results['versions'].get('torch')}, transformers {results['versions'].get('transformers')}",
             f"- command: `{results['command']}`",
             f"- hyper-parameters (both sides, as in finetune_glue.py): `{json.dumps(results['hyper_parameters'])}`; seeds {results['seeds']}",
             "", "| task | metric | train | lmforge mean ± std | Trainer mean ± std | gap | gap / Trainer std | lmforge s | Trainer s | speed-up |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, t in results["tasks"].items():
        ratio = f"{t['gap_in_trainer_std']:+.2f}" if t["gap_in_trainer_std"] is not None else "-"
        lines.append(f"| {name} | {t['metric']} | {t['train_size']} | {t['lmforge']['mean']:.1f} ± {t['lmforge']['std']:.1f} | "
                     f"{t['trainer']['mean']:.1f} ± {t['trainer']['std']:.1f} | {t['gap']:+.1f} | {ratio} | "
                     f"{t['lmforge']['mean_wall_seconds']:.1f} | {t['trainer']['mean_wall_seconds']:.1f} | {t['speedup']:.2f}x |")
    lines += ["", "Per seed (lmforge / Trainer):", ""]
    for name, t in results["tasks"].items():
        pairs = ", ".join(f"seed {a['seed']}: {a['score']:.1f} / {b['score']:.1f}" for a, b in zip(t["lmforge"]["runs"], t["trainer"]["runs"]))
        lines.append(f"- {name}: {pairs}")
    return "\n".join(lines) + "\n"


def write(results: dict) -> None:
    glue.RESULTS.mkdir(parents=True, exist_ok=True)
    (glue.RESULTS / "finetune_seeds.json").write_text(json.dumps(results, indent=2) + "\n")
    (glue.RESULTS / "finetune_seeds.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
