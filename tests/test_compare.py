"""`lmforge compare`: two tiny candidates x 2 seeds on a small task, the table, resume, bad inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import save_tiny_encoder, sentiment_rows

from lmforge import cli


def write_task(folder: Path) -> tuple[Path, Path, Path]:
    paths = []
    for name, n, seed in (("train.tsv", 96, 0), ("dev.tsv", 32, 1), ("test.tsv", 40, 2)):
        path = folder / name
        path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in sentiment_rows(n, seed)), encoding="utf-8")  # fmt: skip
        paths.append(path)
    return paths[0], paths[1], paths[2]


def compare_flags(candidates, files, out: Path, *extra: str) -> list[str]:
    train, dev, test = files
    return [
        "compare", "--candidates", *map(str, candidates), "--train_file", str(train), "--valid_file", str(dev),
        "--test_file", str(test), "--out", str(out), "--seeds", "1,2", "--resamples", "200", "--latency_examples", "4",
        *"--train.max_steps 4 --train.batch_size 16 --train.precision fp32 --train.lr 3e-3".split(), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare")
    first = save_tiny_encoder(folder / "first", max_position_embeddings=128)
    second = save_tiny_encoder(folder / "second", max_position_embeddings=128, hidden_dropout_prob=0.0)
    return [first, second], write_task(folder), folder


@pytest.fixture(scope="module")
def compared(setup):
    candidates, files, folder = setup
    out = folder / "out"
    assert cli.main(compare_flags(candidates, files, out)) == 0
    return out


def test_compare_writes_the_table_with_intervals_verdicts_and_cost(compared):
    result = json.loads((compared / "report.json").read_text())
    assert result["metric"] == "accuracy" and result["test_examples"] == 40 and result["baseline"] == "first (full)"
    first, second = result["rows"]
    assert first["verdict"] == "baseline" and second["verdict"] in ("better", "worse", "no detectable difference")
    for row in result["rows"]:
        assert set(row["per_seed"]) == {"1", "2"} and row["interval"][0] <= row["mean"] <= row["interval"][1]
        assert row["parameters"] > 0 and row["size_mb"] > 0 and row["latency_ms"] > 0 and row["throughput"] > 0
        assert row["difference_interval"][0] <= row["difference"] <= row["difference_interval"][1]
    # the per-seed figures are those finetune reported for its test file
    run = json.loads((compared / "runs" / "second-full" / "report.json").read_text())
    assert [s["accuracy"] for s in run["per_seed"]] == pytest.approx(list(second["per_seed"].values()))
    html = (compared / "report.html").read_text()
    assert "Test metric with 95% intervals" in html and html.count("<svg") >= 3 and "Quality against latency" in html


def test_resume_keeps_finished_runs(setup, compared, capsys):
    candidates, files, _ = setup
    finished = compared / "runs" / "first-full" / "report.json"
    before = os.stat(finished).st_mtime_ns
    # a killed comparison: the second candidate's runs are gone
    import shutil

    shutil.rmtree(compared / "runs" / "second-full")
    assert cli.main(compare_flags(candidates, files, compared, "--resume", "true")) == 0
    out = capsys.readouterr().out
    assert "first-full: finished already; kept" in out and "--- second, full" in out
    assert os.stat(finished).st_mtime_ns == before
    assert (compared / "runs" / "second-full" / "report.json").is_file()


def test_row_metrics_for_each_task():
    from lmforge.tasks import TASKS
    from lmforge.tasks.data import FormatConfig, Record

    binary = TASKS["classification"].from_train(
        [Record("a", None, 0, "x:1"), Record("b", None, 1, "x:2")], FormatConfig()
    )
    assert binary.row_metrics([{"label": 1, "prediction": "1"}, {"label": 0, "prediction": "1"}])["accuracy"] == 0.5
    ner = [{"label": ["B-PER", "O"], "prediction": ["B-PER", "O"]}, {"label": ["B-LOC"], "prediction": ["O"]}]
    assert TASKS["ner"].row_metrics(ner)["f1"] == pytest.approx(2 / 3)
    qa = [{"answers": ["Paris"], "prediction": "Paris"}, {"answers": ["Nile"], "prediction": "the Nile river"}]
    assert TASKS["qa"].row_metrics(qa)["exact_match"] == 50.0


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda c, f: ([c[0], "no/such/model"], f, ()), "--candidates: no/such/model: model folder not found"),
        (
            lambda c, f: (c, f, ("--metric", "bleu")),
            "--metric bleu: not a classification metric; choose one of: accuracy",
        ),
        (lambda c, f: (c, (f[0], f[1], "extra_label"), ()), "--test_file has labels the train file lacks: 7"),
        (lambda c, f: (c, (f[0], "broken", f[2]), ()), "valid"),
    ],
)
def test_bad_inputs_fail_before_any_training(setup, tmp_path, change, message, capsys):
    candidates, files, _ = setup
    extra = tmp_path / "extra.tsv"
    extra.write_text("sentence\tlabel\nthe film was odd\t7\n", encoding="utf-8")
    broken = tmp_path / "broken.tsv"
    broken.write_text("no label column here\n", encoding="utf-8")
    cands, fs, flags = change(candidates, files)
    fs = tuple({"extra_label": extra, "broken": broken}.get(str(f), f) for f in fs)
    out = tmp_path / "out"
    assert cli.main(compare_flags(cands, fs, out, *flags)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (out / "runs").exists()


def test_modes_take_commas_like_seeds():
    from lmforge import config as config_mod
    from lmforge.compare import CompareConfig

    parsed = config_mod.resolve(CompareConfig, None, {"modes": ["head,full"], "seeds": ["1,2"]})
    assert parsed.modes == ["head", "full"] and parsed.seeds == [1, 2]


def test_resume_with_a_changed_setting_is_refused(setup, compared, capsys):
    candidates, files, _ = setup
    before = (compared / "config.yaml").read_text()
    assert cli.main(compare_flags(candidates, files, compared, "--resume", "true", "--train.lr", "1e-2")) == 2
    err = capsys.readouterr().err
    assert "first-full was fine-tuned with train.lr=0.003, this comparison gives 0.01" in err
    assert "choose a new --out" in err and "Traceback" not in err
    assert (compared / "config.yaml").read_text() == before  # nothing rewritten


def test_recipe_gives_candidates_their_own_modes_names_and_settings(setup, tmp_path):
    import yaml

    (first, second), files, _ = setup
    recipe = tmp_path / "compare.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "candidates": [
                    {"model": str(first), "modes": ["full", "head"]},
                    {"model": str(second), "name": "other", "train": {"lr": 1e-3}},
                ]
            }
        )
    )
    out = tmp_path / "out"
    assert cli.main(["compare", "--config", str(recipe), *compare_flags([], files, out)[2:]]) == 0
    result = json.loads((out / "report.json").read_text())
    assert [(r["candidate"], r["mode"]) for r in result["rows"]] == [("first", "full"), ("other", "full"), ("first", "head")]  # fmt: skip
    assert result["baseline"] == "first (full)"
    saved = yaml.safe_load((out / "runs" / "other-full" / "config.yaml").read_text())
    assert saved["train"]["lr"] == 1e-3 and saved["train"]["batch_size"] == 16  # its own lr, the shared rest
    assert yaml.safe_load((out / "runs" / "first-full" / "config.yaml").read_text())["train"]["lr"] == 3e-3


@pytest.mark.parametrize(
    "candidates,message",
    [
        (
            [{"model": "minilm", "train": {"lrr": 1}}],
            "unknown config key 'candidates[0].train.lrr'; did you mean 'candidates[0].train.lr'?",
        ),  # fmt: skip
        (
            [{"model": "minilm", "mode": ["head"]}],
            "unknown config key 'candidates[0].mode'; did you mean 'candidates[0].modes'?",
        ),  # fmt: skip
        ([{"name": "x"}], "candidate 1 names no model"),
        (
            ["minilm", {"model": "minilm"}, {"model": "minilm", "name": "a"}, {"model": "minilm", "name": "a"}],
            "each name once",
        ),  # fmt: skip
    ],
)
def test_bad_candidate_entries_are_one_line_errors(setup, tmp_path, candidates, message, capsys):
    import yaml

    _, files, _ = setup
    recipe = tmp_path / "compare.yaml"
    recipe.write_text(yaml.safe_dump({"candidates": candidates}))
    out = tmp_path / "out"
    assert cli.main(["compare", "--config", str(recipe), *compare_flags([], files, out)[2:]]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (out / "runs").exists()


def test_candidates_sharing_a_tokenizer_encode_each_file_once(setup, tmp_path):
    from lmforge import finetune
    from lmforge.finetune import FinetuneConfig

    (first, second), (train, dev, test), _ = setup
    config = lambda model: FinetuneConfig(task="classification", model=str(model), train_file=str(train), valid_file=str(dev), test_file=str(test))  # noqa: E731 # fmt: skip
    a, b = finetune.prepare(config(first)), finetune.prepare(config(second))
    assert a.train is b.train and a.valid is b.valid and a.test is b.test  # the same tokenizer files: one encoding
    other = tmp_path / "other-tokenizer"
    import shutil

    shutil.copytree(second, other)
    vocab = other / "tokenizer.json"
    vocab.write_text(vocab.read_text().replace('"[unused0]"', '"[unused_0]"'))  # a different tokenizer
    assert finetune.prepare(config(other)).train is not a.train


def test_ner_replicates_sum_counts_and_equal_seqeval():
    """compare's fast entity scores (counts per sentence, summed per replicate) equal seqeval's
    strict IOB2 micro figures on the same rows, invalid predicted sequences included."""
    import random

    from lmforge.tasks import TASKS

    rng = random.Random(0)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    rows = [{"label": [rng.choice(tags) for _ in range(rng.randint(1, 12))]} for _ in range(300)]
    for row in rows:
        row["prediction"] = [t if rng.random() < 0.7 else rng.choice(tags) for t in row["label"]]
    task = TASKS["ner"](tags)
    reference = task.row_metrics(rows)
    for metric in ("f1", "precision", "recall"):
        counts, score = task.row_scorer(metric)
        assert score([counts(r) for r in rows]) == pytest.approx(reference[metric], abs=1e-12)
    assert task.row_scorer("accuracy") is None and TASKS["classification"].row_scorer("accuracy") is None
