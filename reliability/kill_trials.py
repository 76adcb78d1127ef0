"""kill -9 at random moments, then resume: no corrupt folder, no failed and no inexact resume.

    python reliability/kill_trials.py                       # 20 pretraining + 10 fine-tuning trials
    python reliability/kill_trials.py --pretrain 3 --finetune 3   # the short version CI runs

Each trial starts a tiny run in a subprocess and sends it SIGKILL, either at a random moment of
its run time or the instant a write begins: a checkpoint's temp folder (`.tmp-step_*`), final/'s
(`.tmp-final*`), or the rewrite of metrics.jsonl / config.yaml on resume. It then checks the
folder as a user would find it (every checkpoint and final/ complete and loadable, no half
folder), resumes with `--resume true` (killing again at the next random moment in half of the
trials), and compares the finished run with an uninterrupted one: metrics.jsonl losses and the
final weights bit for bit, report.json and the manifest's end time present.
Prints one line per trial and a summary line; exits 1 on any corrupt, failed or inexact trial.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import ROOT, TEXT, TINY_PRETRAIN, environment, lmforge

sys.path.insert(0, str(ROOT / "tests"))
from conftest import save_tiny_encoder, sentiment_rows  # noqa: E402  the test suite's tiny encoder and task

DETERMINISTIC = "--train.precision fp32 --train.attention sdpa --train.compile false".split()
PRETRAIN = [
    "pretrain",
    *TINY_PRETRAIN,
    *"--train.max_steps 60 --train.warmup_steps 4 --train.lr 3e-3 --train.eval_every 20 --train.eval_windows 8".split(),
    *"--train.log_every 1 --train.save_every 4 --train.keep_last 2".split(),
    *DETERMINISTIC,
]
FINETUNE_MODES = [["--mode", "full"], ["--mode", "lora"], ["--mode", "head"], ["--mode", "full", "--seeds", "1,2"]]
TRIGGERS = ["random", "checkpoint", "final", "resume-rewrite"]


@dataclass
class Trial:
    """One run killed and resumed: its stage, what set off the kill, and what the checks found."""

    kind: str
    trigger: str
    kills: int = 0
    problems: list[str] = field(default_factory=list)
    verdict: str = "ok"  # ok | corrupt | failed | inexact


def run_to_end(argv: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


def started_write(out: Path, trigger: str) -> bool:
    """Whether the write `trigger` names has begun (its temp file or folder exists)."""
    # os.walk skips folders renamed away while it lists them (the run goes on while we look)
    names = [n for _, dirs, files in os.walk(out) for n in dirs + files if n.startswith(".tmp-")]
    if trigger == "checkpoint":
        return any(n.startswith(".tmp-step_") for n in names)
    if trigger == "final":
        return any(n.startswith((".tmp-final", ".tmp-best")) for n in names)
    if trigger == "resume-rewrite":
        return any(n.startswith((".tmp-metrics.jsonl", ".tmp-config.yaml")) for n in names)
    return False


def run_and_kill(
    argv: list[str], env: dict, out: Path, trigger: str, deadline: float, rng: random.Random
) -> tuple[int | None, str]:
    """Start `argv`; SIGKILL it at the trigger (or at a random moment before `deadline` seconds).
    Returns (None, "") if it was killed, else (its exit code, its stderr): it finished first."""
    with tempfile.TemporaryFile("w+") as stderr:  # a file, not a pipe: a full pipe would stall the run
        process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
        started = time.monotonic()
        kill_at = started + rng.uniform(0.3, deadline)
        while process.poll() is None:
            now = time.monotonic()
            due = now >= kill_at if trigger == "random" else started_write(out, trigger)
            if due or now - started > 600:
                process.send_signal(signal.SIGKILL)
                process.wait()
                return None, ""
            time.sleep(0.002)
        stderr.seek(0)
        return process.returncode, stderr.read()


def weights_digest(folder: Path) -> str:
    return (
        hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
        if (folder / "model.safetensors").is_file()
        else ""
    )


def losses(run: Path) -> list:
    if not (run / "metrics.jsonl").is_file():  # a seeds run keeps its logs in seed_N/
        return []
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["loss"], r.get("val_loss")) for r in rows]


def model_folders(run: Path) -> list[Path]:
    folders = [p for p in (run / "checkpoints").glob("step_*")] if (run / "checkpoints").is_dir() else []
    return folders + [p for p in (run / "final", run / "best") if p.exists()]


def integrity(run: Path, seed_dirs: list[str]) -> list[str]:
    """What a user would find broken: a model folder without its files, or an empty config.yaml.
    A LoRA folder holds adapter_config.json and adapter weights instead of config.json."""
    problems = []
    for root in [run, *(run / d for d in seed_dirs)]:
        for folder in model_folders(root):
            has_config = (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()
            if not has_config or not any(folder.glob("*.safetensors")):
                problems.append(f"{folder.relative_to(run)} lacks its config or weights")
            if folder.parent.name == "checkpoints" and not (folder / "training_state" / "state.json").is_file():
                problems.append(f"{folder.relative_to(run)} lacks training_state/state.json")
        if (root / "config.yaml").is_file() and not (root / "config.yaml").read_text().strip():
            problems.append(f"{(root / 'config.yaml').relative_to(run)} is empty")
    return problems


def leftovers(run: Path) -> list[str]:
    return [str(p.relative_to(run)) for p in run.rglob("*") if p.name.startswith((".tmp-", ".old-", ".trash"))]


def finished_checks(run: Path, reference: Path) -> list[str]:
    """The run equals the uninterrupted `reference`: same losses and final weights, and every file
    the reference ended with (final/, reports, the manifest's end time)."""
    problems = []
    if losses(run) != losses(reference):
        problems.append("losses differ from the uninterrupted run")
    if weights_digest(run / "final") != weights_digest(reference / "final"):
        problems.append("final weights differ from the uninterrupted run")
    for name in ("final/config.json", "report.json", "report.html", "manifest.json"):
        if (reference / name).is_file() and not (run / name).is_file():
            problems.append(f"{name} missing")
    if has_ended(reference) and not has_ended(run):
        problems.append("manifest has no end time")
    return problems


def has_ended(folder: Path) -> bool:
    manifest = folder / "manifest.json"
    return manifest.is_file() and bool(json.loads(manifest.read_text()).get("finished"))


def trial(
    kind: str,
    argv_fresh: list[str],
    out: Path,
    reference: Path,
    trigger: str,
    deadline: float,
    rng: random.Random,
    seed_dirs: list[str],
    env: dict,
) -> Trial:
    """Kill the run, check the folder, resume (killing again in half of the attempts), until it ends."""
    result = Trial(kind, trigger)
    resume = lmforge(argv_fresh[3], "--out", str(out), "--resume", "true")
    argv = argv_fresh
    for attempt in range(5):
        if attempt == 0:  # the first kill: at a random moment, or the instant a checkpoint / final/ write starts
            this_trigger = "random" if trigger == "resume-rewrite" else trigger
        elif attempt == 1 and trigger == "resume-rewrite":  # inside the resume's rewrite of metrics.jsonl / config.yaml
            this_trigger = trigger
        else:
            this_trigger = "random" if attempt < 3 and rng.random() < 0.5 else None
        if this_trigger is None:
            code, stderr = (done := run_to_end(argv, env)).returncode, done.stderr
        else:
            code, stderr = run_and_kill(argv, env, out, this_trigger, deadline, rng)
        if code is None:  # killed: what does a user find?
            result.kills += 1
            result.problems += [f"after kill {result.kills}: {p}" for p in integrity(out, seed_dirs)]
            argv = resume if has_checkpoint(out, seed_dirs) else argv_fresh
            continue
        if code != 0 and argv is resume and "already finished" in stderr and not finished_checks(out, reference):
            break  # killed after the end was written: a complete run, nothing to resume
        if code != 0 and argv is resume and "no checkpoint" in stderr:
            argv = argv_fresh  # killed before the first checkpoint: the message says start again
            continue
        if code != 0:
            last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
            result.problems.append(f"exit {code}: {last}")
            result.verdict = "failed"
            return result
        break
    if result.problems:
        result.verdict = "corrupt"
        return result
    problems = finished_checks(out, reference)
    for seed_dir in seed_dirs:
        problems += [f"{seed_dir}: {p}" for p in finished_checks(out / seed_dir, reference / seed_dir)]
    problems += [f"left behind: {p}" for p in leftovers(out)]
    if problems:
        result.problems, result.verdict = problems, "inexact"
    return result


def has_checkpoint(out: Path, seed_dirs: list[str]) -> bool:
    roots = [out / d for d in seed_dirs] if seed_dirs else [out]
    return any((r / "checkpoints").is_dir() and any((r / "checkpoints").glob("step_*")) for r in roots) or any(
        (out / d / "report.json").is_file() for d in seed_dirs
    )


def sentiment_files(folder: Path) -> tuple[Path, Path]:
    """The test suite's sentiment task as train/dev TSV files."""
    paths = []
    for name, n, seed in (("train.tsv", 384, 0), ("dev.tsv", 64, 1)):
        rows = "".join(f"{text}\t{label}\n" for text, label in sentiment_rows(n, seed))
        (folder / name).write_text("sentence\tlabel\n" + rows, encoding="utf-8")
        paths.append(folder / name)
    return paths[0], paths[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrain", type=int, default=20, help="pretraining trials")
    parser.add_argument("--finetune", type=int, default=10, help="fine-tuning trials (modes: see FINETUNE_MODES)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--work", default=None, help="folder for the runs (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    env = environment()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="lmforge-kill-"))
    work.mkdir(parents=True, exist_ok=True)
    trials: list[Trial] = []
    try:
        if args.pretrain:
            text = work / "text.txt"
            text.write_text(TEXT.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
            base = lmforge(*PRETRAIN, "--data", str(text))
            reference = work / "pretrain-reference"
            started = time.monotonic()
            done = run_to_end([*base, "--out", str(reference)], env)
            if done.returncode != 0:
                print(done.stderr[-2000:])
                return 1
            seconds = time.monotonic() - started
            for i in range(args.pretrain):
                out = work / f"pretrain-{i}"
                result = trial(
                    "pretrain",
                    [*base, "--out", str(out)],
                    out,
                    reference,
                    TRIGGERS[i % len(TRIGGERS)],
                    seconds,
                    rng,
                    [],
                    env,
                )
                trials.append(result)
                report(i, result)
                shutil.rmtree(out, ignore_errors=True)
        if args.finetune:
            encoder = save_tiny_encoder(work / "encoder", max_position_embeddings=128)
            train, dev = sentiment_files(work)
            references: dict[int, tuple[Path, float]] = {}
            for i in range(args.finetune):
                mode = i % len(FINETUNE_MODES)
                base = lmforge(
                    "finetune",
                    "--task",
                    "classification",
                    "--model",
                    str(encoder),
                    "--train_file",
                    str(train),
                    "--valid_file",
                    str(dev),
                    "--epochs",
                    "3",
                    "--train.batch_size",
                    "16",
                    "--train.log_every",
                    "2",
                    "--train.save_every",
                    "4",
                    *DETERMINISTIC,
                    *FINETUNE_MODES[mode],
                )
                seed_dirs = ["seed_1", "seed_2"] if "--seeds" in FINETUNE_MODES[mode] else []
                if mode not in references:
                    reference = work / f"finetune-reference-{mode}"
                    started = time.monotonic()
                    done = run_to_end([*base, "--out", str(reference)], env)
                    if done.returncode != 0:
                        print(done.stderr[-2000:])
                        return 1
                    references[mode] = (reference, time.monotonic() - started)
                reference, seconds = references[mode]
                out = work / f"finetune-{i}"
                result = trial(
                    "finetune " + " ".join(FINETUNE_MODES[mode][1::2]),
                    [*base, "--out", str(out)],
                    out,
                    reference,
                    TRIGGERS[i % 3],
                    seconds,
                    rng,
                    seed_dirs,
                    env,
                )
                trials.append(result)
                report(i, result)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    counts = {v: sum(t.verdict == v for t in trials) for v in ("corrupt", "failed", "inexact")}
    kills = sum(t.kills for t in trials)
    print(
        f"kill trials: {len(trials)} runs ({sum(t.kind == 'pretrain' for t in trials)} pretrain, "
        f"{sum(t.kind != 'pretrain' for t in trials)} finetune), {kills} kills: "
        f"{counts['corrupt']} corrupt, {counts['failed']} failed, {counts['inexact']} inexact resumes"
    )
    return 1 if any(counts.values()) else 0


def report(i: int, result: Trial) -> None:
    detail = "; ".join(result.problems[:3])
    print(
        f"  {result.kind:<22} #{i:<2} trigger {result.trigger:<14} kills {result.kills}  {result.verdict}{': ' + detail if detail else ''}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
