"""The bad-input table: every mistake in it must end in one line on stderr (exit 2) that names the
file or flag and says what to do, with no traceback and no existing file changed.

    python reliability/bad_inputs.py            # the whole table (about a minute)

Prints one row per case and a summary line; exits 1 if any case fails.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from itertools import product
from pathlib import Path

from common import TEXT, TINY_PRETRAIN, environment, lmforge

TINY = [*TINY_PRETRAIN, *"--train.max_steps 3 --train.eval_windows 4".split()]


def run(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(lmforge(*args), env=env, capture_output=True, text=True, timeout=300)


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def cases(work: Path) -> list[tuple[str, list[str], str]]:
    """(what, argv, a piece of the expected message)."""
    text, existing = work / "text.txt", work / "notes.txt"
    train, binary, squad = work / "train.tsv", work / "photo.tsv", work / "squad.json"
    clm, mlm = work / "clm", work / "mlm"
    ft = ["--model", "minilm", "--train_file", str(train), "--valid_file", str(train)]
    pretrain, finetune = ["pretrain", "--data", str(text), *TINY], ["finetune", *ft]
    out_is_file = [  # each command that writes a folder, up to its --out
        ["corpus", "--data", str(text)],
        pretrain,
        finetune,
        ["evaluate", "--model", str(clm), "--data", str(text)],
        ["predict", "--model", "minilm", "--text", "hi"],
    ]
    bad_numbers = [  # (what, flag, value, the message's end), each tried on pretrain and then on finetune
        ("negative learning rate", "--train.lr", "-0.001", "must be a positive number"),
        ("batch size 0", "--train.batch_size", "0", "must be at least 1"),
    ]
    return [
        *(
            (f"--out is an existing file: {command[0]}", [*command, "--out", str(existing)], "is a file, not a folder")
            for command in out_is_file
        ),
        (
            "a typo in a flag",
            ["pretrain", "--data", str(text), "--train.max_minute", "3"],
            "did you mean --train.max_minutes",
        ),
        ("an abbreviated flag", ["pretrain", "--data", str(text), "--model.l", "2"], "--model.layers"),
        *(
            (
                f"{what}: {command[0]}",
                [*command, flag, value, "--out", str(work / f"o{i}")],
                f"{flag} {value}: {message}",
            )
            for i, ((what, flag, value, message), command) in enumerate(product(bad_numbers, (pretrain, finetune)), 1)
        ),
        (
            "a binary file as finetune --train_file",
            [
                "finetune",
                "--model",
                "minilm",
                "--train_file",
                str(binary),
                "--valid_file",
                str(train),
                "--out",
                str(work / "o5"),
            ],
            "photo.tsv",
        ),
        (
            "evaluate --context past the model's positions",
            ["evaluate", "--model", str(clm), "--data", str(text), "--context", "4096", "--out", str(work / "o6")],
            "built for at most 32 positions",
        ),
        (
            "predict --input of a missing file",
            ["predict", "--model", "minilm", "--input", str(work / "missing.tsv"), "--out", str(work / "o7")],
            "missing.tsv",
        ),
        (
            "generate --samples 0",
            ["generate", "--model", str(clm), "--samples", "0"],
            "--samples 0: must be at least 1",
        ),
        (
            "generate --temperature -1",
            ["generate", "--model", str(clm), "--temperature", "-1"],
            "--temperature -1.0: must be 0 (greedy) or more",
        ),
        ("generate --top_p 1.5", ["generate", "--model", str(clm), "--top_p", "1.5"], "--top_p 1.5: must be in (0, 1]"),
        ("generate on a masked LM", ["generate", "--model", str(mlm)], "this is a masked LM"),
        (
            "tokenizer --tokenizer.vocab_size 0",
            ["tokenizer", "--data", str(text), "--tokenizer.vocab_size", "0", "--out", str(work / "o8")],
            "--tokenizer.vocab_size 0: a bpe vocabulary needs at least",
        ),
        (
            "a SQuAD question without answers",
            [
                "finetune",
                "--task",
                "qa",
                "--model",
                "minilm",
                "--train_file",
                str(squad),
                "--valid_file",
                str(squad),
                "--out",
                str(work / "o9"),
            ],
            "no 'answers' field",
        ),
        (
            "--resume true on a folder with no run",
            ["pretrain", "--resume", "true", "--out", str(work / "empty")],
            "there is no run to resume",
        ),
        (
            "--resume true that changes the model",
            ["pretrain", "--resume", "true", "--out", str(clm), "--model.width", "32"],
            "--resume true cannot change model.width",
        ),
        ("a recipe that is not YAML", ["pretrain", "--config", str(work / "a-recipe.yaml")], "not valid YAML"),
        (
            "a missing --data file",
            ["pretrain", "--data", str(work / "nope.txt"), *TINY, "--out", str(work / "o10")],
            "nope.txt",
        ),
    ]


def prepare(work: Path, env: dict) -> None:
    (work / "text.txt").write_text(TEXT.read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    (work / "notes.txt").write_text("keep me\n")
    (work / "train.tsv").write_text(
        "sentence\tlabel\n" + "".join(f"{w} film\t{i % 2}\n" for i, w in enumerate(["good", "bad"] * 8))
    )
    (work / "photo.tsv").write_bytes(bytes(range(256)) * 40)
    qa = {
        "data": [
            {
                "title": "t",
                "paragraphs": [
                    {"context": "Paris is in France.", "qas": [{"id": "q1", "question": "Where is Paris?"}]}
                ],
            }
        ]
    }
    (work / "squad.json").write_text(json.dumps(qa))
    (work / "empty").mkdir()
    for name, extra in (("clm", []), ("mlm", ["--train.objective", "mlm", "--model.family", "bert"])):
        done = run("pretrain", "--data", str(work / "text.txt"), *TINY, *extra, "--out", str(work / name), env=env)
        if done.returncode != 0:
            raise SystemExit(f"could not build the {name} model: {done.stderr[-1000:]}")
    (work / "a-recipe.yaml").write_text("{not: [yaml")


def main() -> int:
    env = environment()
    with tempfile.TemporaryDirectory(prefix="lmforge-bad-") as tmp:
        work = Path(tmp)
        env["LMFORGE_CACHE"] = str(work / "cache")
        prepare(work, env)
        failures = 0
        table = cases(work)
        for what, argv, expected in table:
            before = snapshot(work)
            done = run(*argv, env=env)
            err = done.stderr.strip()
            after = snapshot(work)
            changed = [k for k, v in before.items() if after.get(k) != v and not k.startswith("cache/")]
            problems = []
            if done.returncode != 2:
                problems.append(f"exit {done.returncode}")
            if "Traceback" in err or len(err.splitlines()) != 1:
                problems.append(
                    f"{len(err.splitlines())} lines on stderr" + (" with a traceback" if "Traceback" in err else "")
                )
            if expected not in err:
                problems.append(f"message lacks {expected!r}")
            if changed:
                problems.append(f"changed {changed[:2]}")
            failures += bool(problems)
            shown = err.splitlines()[-1][:110] if err else ""
            print(f"  {'FAIL' if problems else 'ok  '} {what:<48} {'; '.join(problems) or shown}", flush=True)
    print(f"bad inputs: {len(table)} cases: {len(table) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
