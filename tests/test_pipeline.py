"""scripts/tour.sh, the README's tour at tiny scale, runs end to end, and each stage's manifest
names the folder the stage before it left (the hand-off the pipeline is built on)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def input_paths(folder: Path) -> list[str]:
    return [entry["path"] for entry in manifest(folder)["inputs"]]


@pytest.fixture(scope="module")
def tour(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tour")
    env = {**os.environ, "LMFORGE": f"{sys.executable} -m lmforge", "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "tour.sh"), str(out)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_every_stage_finished_and_left_its_folder(tour):
    for name, stage in [
        ("corpus", "corpus"),
        ("tok", "tokenizer"),
        ("shards", "shards"),
        ("gpt", "pretrain"),
        ("bert", "pretrain"),
        ("gpt-eval", "evaluate"),
        ("clf", "finetune"),
        ("clf-eval", "evaluate"),
        ("pred", "predict"),
    ]:
        assert manifest(tour / name)["stage"] == stage, name
        assert manifest(tour / name).get("finished"), name
    for run in ("gpt", "bert", "clf"):
        assert (tour / run / "final" / "config.json").is_file() and (tour / run / "report.html").is_file()


def test_each_stage_reads_what_the_one_before_left(tour):
    corpus = str(tour / "corpus")
    assert all(p.startswith(corpus) for p in input_paths(tour / "tok"))  # tokenizer <- corpus splits
    assert all(p.startswith(corpus) for p in input_paths(tour / "shards"))
    for run in ("gpt", "bert"):  # pretrain <- shards and tokenizer
        assert {str(tour / "shards"), str(tour / "tok")} <= set(input_paths(tour / run)), input_paths(tour / run)
    assert str(tour / "gpt" / "final") in input_paths(tour / "gpt-eval")
    assert str(tour / "bert" / "final") in input_paths(tour / "clf")  # finetune <- the pretrained masked LM
    assert str(tour / "clf" / "final") in input_paths(tour / "clf-eval") and str(tour / "clf" / "final") in input_paths(
        tour / "pred"
    )


def test_the_tiny_classifier_learned_its_task(tour):
    report = json.loads((tour / "clf" / "report.json").read_text())
    assert report["metrics_split"] == "test"
    assert report["metrics"]["accuracy"] > 0.6  # balanced classes: the majority class scores 0.5
    rows = (tour / "pred" / "predictions.jsonl").read_text().splitlines()
    assert len(rows) == len((tour / "test.tsv").read_text().splitlines()) - 1
