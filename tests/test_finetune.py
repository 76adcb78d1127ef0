"""`lmforge finetune` / `evaluate --task` / `predict` end to end on tiny models and tiny data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, evaluate_task, finetune_files, sentiment_rows

from lmforge import cli

SST2 = SHARED_DATA / "glue" / "SST-2"
QA_WINDOWS = "--format.max_length 64 --format.doc_stride 16".split()


def finetune(*args: str) -> int:
    return cli.main(["finetune", "--train.precision", "fp32", "--train.log_every", "5", *args])


def finetune_run(model, train, valid, out, *flags: str, task: str | None = None) -> int:
    """`finetune` of MODEL on TRAIN, checkpoints chosen on VALID, into OUT: its exit code."""
    return finetune(*finetune_files(model, train, valid, task), "--out", str(out), *flags)


def test_short_form_classification_run_folder(tiny_bert, sentiment, tmp_path):
    from transformers import AutoModelForSequenceClassification

    train, dev = sentiment
    out = tmp_path / "run"
    flags = "--epochs 3 --train.lr 3e-3 --train.batch_size 16".split()
    assert finetune_run(tiny_bert, train, dev, out, *flags, task="classification") == 0
    for name in ("config.yaml", "manifest.json", "metrics.jsonl", "report.json", "report.html", "best", "final"):
        assert (out / name).exists(), name
    summary = json.loads((out / "report.json").read_text())
    assert summary["metrics"]["accuracy"] >= 0.9 and summary["wall_seconds"] > 0
    assert summary["best"]["metric"] == "accuracy" and summary["metrics"]["accuracy"] == summary["best"]["value"]
    model = AutoModelForSequenceClassification.from_pretrained(str(out / "final"))
    assert model.config.id2label == {0: "0", 1: "1"}
    # evaluate and predict read the same folder; their accuracy is the best checkpoint's
    assert evaluate_task("classification", out, dev, tmp_path / "ev") == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["metrics"]["accuracy"] == pytest.approx(summary["metrics"]["accuracy"], abs=0.03)
    html = (tmp_path / "ev" / "report.html").read_text()
    assert "Confusion matrix" in html and "<svg" in html and "Per label" in html
    errors = [json.loads(l) for l in (tmp_path / "ev" / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == report["errors"] and all(e["prediction"] != e["label"] for e in errors)
    assert cli.main(["predict", "--model", str(out / "final"), "--input", str(dev), "--out", str(tmp_path / "pr")]) == 0
    rows = [json.loads(l) for l in (tmp_path / "pr" / "predictions.jsonl").read_text().splitlines()]
    assert (
        len(rows) == 40 and rows[0]["prediction"] in ("0", "1") and rows[0]["label"] in ("0", "1")
    )  # the input's label column, carried through


def test_seeds_report_mean_and_std(tiny_bert, sentiment, tmp_path):
    train, dev = sentiment
    out = tmp_path / "seeds"
    assert finetune_run(tiny_bert, train, dev, out, *"--epochs 1 --seeds 1,2 --train.batch_size 32".split()) == 0
    summary = json.loads((out / "report.json").read_text())
    assert summary["seeds"] == [1, 2] and set(summary["metrics_std"]) == set(summary["metrics"])
    per_seed = [s["accuracy"] for s in summary["per_seed"]]
    assert summary["metrics"]["accuracy"] == pytest.approx(sum(per_seed) / 2)
    assert (out / "seed_1" / "final").is_dir() and (out / "final" / "config.json").is_file()


def test_lora_final_is_merged_and_keeps_adapter(tiny_bert, sentiment, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    train, dev = sentiment
    out = tmp_path / "lora"
    assert finetune_run(tiny_bert, train, dev, out, *"--mode lora --epochs 1 --lora.rank 4".split()) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(str(out / "final")).eval()
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2)
    adapted = PeftModel.from_pretrained(base, str(out / "final" / "adapter")).eval()
    ids = torch.tensor([[101, 2307, 3185, 102]])
    assert torch.allclose(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, atol=1e-5)


def test_head_mode_trains_only_the_head(tiny_bert, sentiment, tmp_path):
    from safetensors.torch import load_file

    train, dev = sentiment
    out = tmp_path / "head"
    assert finetune_run(tiny_bert, train, dev, out, *"--mode head --epochs 3".split()) == 0
    before, after = load_file(str(tiny_bert / "model.safetensors")), load_file(str(out / "final" / "model.safetensors"))
    layer = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(before[layer.removeprefix("bert.")], after[layer])
    assert (
        json.loads((out / "report.json").read_text())["trainable_parameters"] == 32 * 32 + 32 + 32 * 2 + 2
    )  # pooler + classifier


def test_ner_and_qa_runs(tiny_bert, conll, squad, tmp_path):
    flags = "--epochs 2 --train.lr 3e-3 --train.batch_size 4".split()
    assert finetune_run(tiny_bert, conll, conll, tmp_path / "ner", *flags, task="ner") == 0
    summary = json.loads((tmp_path / "ner" / "report.json").read_text())
    assert {"f1", "precision", "recall"} <= set(summary["metrics"]) and summary["labels"][0] == "O"
    assert (
        cli.main(["predict", "--model", str(tmp_path / "ner"), "--input", str(conll), "--out", str(tmp_path / "nerp")])
        == 0
    )
    row = json.loads((tmp_path / "nerp" / "predictions.jsonl").read_text().splitlines()[0])
    assert row["words"] == ["John", "lives", "in", "Paris"] and len(row["prediction"]) == 4
    assert finetune_run(tiny_bert, squad, squad, tmp_path / "qa", "--epochs", "1", *QA_WINDOWS, task="qa") == 0
    assert {"exact_match", "f1"} <= set(json.loads((tmp_path / "qa" / "report.json").read_text())["metrics"])
    assert evaluate_task("qa", tmp_path / "qa", squad, tmp_path / "qae", *QA_WINDOWS) == 0
    assert (tmp_path / "qae" / "errors.jsonl").is_file()


def test_squad_v2_trains_and_saves_the_no_answer_rule(tiny_bert, squad, tmp_path):
    data = json.loads(squad.read_text())
    data["data"][0]["paragraphs"][0]["qas"].append(
        {"id": "none", "question": "Who painted the Mona Lisa?", "answers": [], "is_impossible": True}
    )
    v2 = tmp_path / "squad_v2.json"
    v2.write_text(json.dumps(data))
    assert finetune_run(tiny_bert, v2, v2, tmp_path / "qa", "--epochs", "1", *QA_WINDOWS, task="qa") == 0
    metrics = json.loads((tmp_path / "qa" / "report.json").read_text())["metrics"]
    assert {"has_answer_f1", "no_answer_accuracy"} <= set(metrics)
    assert json.loads((tmp_path / "qa" / "final" / "config.json").read_text())["qa_no_answer"] is True
    assert evaluate_task("qa", tmp_path / "qa", v2, tmp_path / "qae", *QA_WINDOWS) == 0
    assert "no_answer_accuracy" in json.loads((tmp_path / "qae" / "report.json").read_text())["metrics"]


def test_early_stopping_on_the_task_metric(tiny_bert, sentiment, tmp_path):
    train, dev = sentiment
    out = tmp_path / "early"
    # lr ~0: accuracy cannot improve after the first evaluation, so patience 1 ends the run at the second
    flags = "--epochs 3 --train.lr 1e-12 --train.eval_every 2 --train.early_stopping_patience 1".split()
    assert finetune_run(tiny_bert, train, dev, out, *flags) == 0
    summary = json.loads((out / "report.json").read_text())
    assert summary["stopped_by"] == "early_stopping" and summary["steps"] == 4 and summary["best"]["step"] == 2


def test_lmforge_masked_lm_run_folder_as_model(tiny_bert, sentiment, tmp_path):
    """A pretrain run's final/ (BertForMaskedLM) is a model source; its MLM head is dropped for the task head."""
    from transformers import AutoTokenizer, BertForMaskedLM

    run = tmp_path / "pretrain-run"
    BertForMaskedLM.from_pretrained(str(tiny_bert)).save_pretrained(str(run / "final"))
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(str(run / "final"))
    train, dev = sentiment
    out = tmp_path / "ft"
    assert finetune_run(run, train, dev, out, "--train.max_steps", "2") == 0
    summary = json.loads((out / "report.json").read_text())
    assert summary["model"] == str(run / "final") and summary["steps"] == 2


# --- bad input: one line, exit 2, no traceback ----------------------------------------------------


def test_model_folder_without_tokenizer(tiny_bert, sentiment, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_bert / name, bare / name)
    train, dev = sentiment
    assert finetune_run(bare, train, dev, tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert f"{bare}: no tokenizer here" in err and "Traceback" not in err


def test_task_head_that_does_not_match(tiny_bert, conll, sentiment, tmp_path, capsys):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    ner_model = tmp_path / "ner-model"
    AutoModelForTokenClassification.from_pretrained(str(tiny_bert), num_labels=3).save_pretrained(str(ner_model))
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(str(ner_model))
    train, dev = sentiment
    assert finetune_run(ner_model, train, dev, tmp_path / "x") == 2
    assert "has a ner head" in capsys.readouterr().err
    assert evaluate_task("classification", ner_model, dev, tmp_path / "e") == 2
    assert "has a ner head but --task is classification" in capsys.readouterr().err
    # a classification head with other labels
    from transformers import AutoModelForSequenceClassification

    cls_model = tmp_path / "cls-model"
    AutoModelForSequenceClassification.from_pretrained(
        str(tiny_bert), num_labels=3, id2label={0: "a", 1: "b", 2: "c"}
    ).save_pretrained(str(cls_model))
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(str(cls_model))
    assert finetune_run(cls_model, train, dev, tmp_path / "y") == 2
    err = capsys.readouterr().err
    assert "head has labels ['a', 'b', 'c'] but the train data has ['0', '1']" in err and "--reset_head" in err


def test_bad_data_through_the_cli(tiny_bert, sentiment, tmp_path, capsys):
    train, _ = sentiment
    empty = tmp_path / "empty.tsv"
    empty.write_text("sentence\tlabel\n")
    assert finetune_run(tiny_bert, train, empty, tmp_path / "x") == 2
    assert f"{empty}: the valid split has no examples" in capsys.readouterr().err
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tgold\nfine\t1\n")
    assert finetune_run(tiny_bert, bad, bad, tmp_path / "y") == 2
    assert "no label column" in capsys.readouterr().err


# --- real data: MiniLM on a 300-example SST-2 slice -----------------------------------------------


@pytest.fixture(scope="module")
def sst2_slice(tmp_path_factory) -> tuple[Path, Path, float]:
    folder = tmp_path_factory.mktemp("sst2")
    train_lines = (SST2 / "train.tsv").read_text(encoding="utf-8").splitlines()
    dev_lines = (SST2 / "dev.tsv").read_text(encoding="utf-8").splitlines()
    (folder / "train.tsv").write_text("\n".join(train_lines[:301]) + "\n", encoding="utf-8")
    (folder / "dev.tsv").write_text("\n".join(dev_lines[:201]) + "\n", encoding="utf-8")
    labels = [line.rsplit("\t", 1)[1] for line in dev_lines[1:201]]
    majority = max(labels.count("0"), labels.count("1")) / len(labels)
    return folder / "train.tsv", folder / "dev.tsv", majority


@pytest.mark.skipif(not SST2.exists(), reason=f"SST-2 not found at {SST2}")
@pytest.mark.parametrize(
    "mode, extra",
    [
        ("head", ["--epochs", "10"]),
        ("full", ["--epochs", "2", "--train.batch_size", "16", "--train.lr", "1e-4", "--format.max_length", "64"]),
    ],
)
def test_minilm_beats_majority_on_sst2_slice(sst2_slice, tmp_path, mode, extra):
    train, dev, majority = sst2_slice
    out = tmp_path / mode
    assert cli.main(["finetune", *finetune_files("minilm", train, dev), "--out", str(out), "--mode", mode, *extra]) == 0
    accuracy = json.loads((out / "report.json").read_text())["metrics"]["accuracy"]
    assert accuracy > majority + 0.05, (accuracy, majority)


def test_layer_wise_lr_decay_reaches_the_optimizer(tiny_bert, sentiment, tmp_path):
    train, dev = sentiment
    out = tmp_path / "llrd"
    flags = "--epochs 1 --train.lr 1e-3 --train.layer_decay 0.5 --train.log_every 1".split()
    assert finetune_run(tiny_bert, train, dev, out, *flags, task="classification") == 0
    assert json.loads((out / "report.json").read_text())["metrics"]["accuracy"] > 0
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["layer_decay"] == 0.5
    # the saved optimizer state: the 2-layer encoder's groups train at 0.5^k of the head's rate
    from lmforge import checkpoint

    state = torch.load(checkpoint.latest(out) / checkpoint.STATE_DIR / "optimizer.pt", weights_only=True)
    scales = {round(group["lr_scale"], 6) for group in state["param_groups"]}
    assert scales == {1.0, 0.5, 0.25, 0.125}, scales


def test_resumed_finetune_equals_an_uninterrupted_one(tiny_bert, sentiment, tmp_path, capsys):
    train, dev = sentiment
    flags = "--epochs 2 --train.batch_size 32 --train.eval_every 4 --train.lr 1e-3".split()
    common = [*finetune_files(tiny_bert, train, dev), *flags]
    assert finetune(*common, "--out", str(tmp_path / "whole")) == 0
    assert (
        finetune(*common, "--out", str(tmp_path / "parts"), "--train.stop_at_step", "6", "--train.save_every", "3") == 0
    )
    assert not (tmp_path / "parts" / "final").exists() and (tmp_path / "parts" / "checkpoints" / "step_6").is_dir()
    # a fresh run into a folder with checkpoints is refused; --resume continues it (config.yaml reused)
    capsys.readouterr()
    assert finetune(*common, "--out", str(tmp_path / "parts")) == 2
    assert "already holds checkpoints; pass --resume true" in capsys.readouterr().err
    assert (
        cli.main(["finetune", "--out", str(tmp_path / "parts"), "--resume", "true", "--train.stop_at_step", "null"])
        == 0
    )
    rows = lambda name: [
        (r["step"], r.get("loss"), r.get("accuracy"))
        for r in map(json.loads, (tmp_path / name / "metrics.jsonl").read_text().splitlines())
    ]  # noqa: E731
    assert rows("parts") == rows("whole")
    assert (
        json.loads((tmp_path / "parts" / "report.json").read_text())["metrics"]
        == json.loads((tmp_path / "whole" / "report.json").read_text())["metrics"]
    )


def test_resume_keeps_finished_seeds(tiny_bert, sentiment, tmp_path, capsys):
    train, dev = sentiment
    args = [*finetune_files(tiny_bert, train, dev), "--epochs", "1", "--seeds", "1,2", "--out", str(tmp_path / "s")]
    assert finetune(*args) == 0
    first = json.loads((tmp_path / "s" / "report.json").read_text())
    capsys.readouterr()
    assert finetune(*args, "--resume", "true") == 2  # everything finished: nothing to resume is not a success
    assert "already finished; nothing to resume" in capsys.readouterr().err
    # a kill after seed 2's last checkpoint, before its report: resume keeps seed 1 and finishes seed 2
    (tmp_path / "s" / "report.json").unlink()
    (tmp_path / "s" / "seed_2" / "report.json").unlink()
    shutil.rmtree(tmp_path / "s" / "seed_2" / "final")
    assert finetune(*args, "--resume", "true") == 0
    assert capsys.readouterr().out.count("finished already") == 1
    assert json.loads((tmp_path / "s" / "report.json").read_text())["metrics"] == first["metrics"]


def test_test_file_is_scored_once_and_reported_as_the_result(tiny_bert, sentiment, tmp_path, capsys):
    train, dev = sentiment
    test = tmp_path / "test.tsv"
    test.write_text("sentence\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in sentiment_rows(30, 7)), encoding="utf-8")
    out = tmp_path / "run"
    capsys.readouterr()
    flags = "--epochs 2 --train.lr 3e-3 --train.batch_size 16".split()
    assert finetune_run(tiny_bert, train, dev, out, "--test_file", str(test), *flags) == 0
    summary = json.loads((out / "report.json").read_text())
    assert (
        summary["metrics_split"] == "test"
        and summary["metrics"] == summary["test_metrics"]
        and summary["test_rows"] == 30
    )
    assert summary["valid_metrics"]["accuracy"] == summary["best"]["value"]  # valid chose the checkpoint
    evaluated = tmp_path / "ev"
    assert evaluate_task("classification", out, test, evaluated) == 0
    assert json.loads((evaluated / "report.json").read_text())["metrics"]["accuracy"] == pytest.approx(
        summary["test_metrics"]["accuracy"], abs=1e-6
    )
    assert "done: test accuracy" in capsys.readouterr().out
    assert "Result on the test file" in (out / "report.html").read_text()


def test_without_a_test_file_the_valid_figure_is_labelled(tiny_bert, sentiment, tmp_path, capsys):
    train, dev = sentiment
    out = tmp_path / "run"
    capsys.readouterr()
    assert finetune_run(tiny_bert, train, dev, out, "--epochs", "1") == 0
    assert json.loads((out / "report.json").read_text())["metrics_split"] == "valid (used for model selection)"
    assert "done: valid (used for model selection) accuracy" in capsys.readouterr().out
    assert "optimistic" in (out / "report.html").read_text()


def test_best_seed_follows_the_selection_direction(tiny_bert, sentiment, tmp_path):
    from safetensors.torch import load_file

    train, dev = sentiment
    out = tmp_path / "s"
    flags = "--epochs 1 --seeds 1,2 --train.best_metric val_loss --train.best_mode max".split()
    assert finetune_run(tiny_bert, train, dev, out, *flags) == 0
    summary = json.loads((out / "report.json").read_text())
    losses = {
        r["seed"]: json.loads((out / f"seed_{r['seed']}" / "report.json").read_text())["valid_metrics"]["val_loss"]
        for r in summary["per_seed"]
    }
    chosen = max(losses, key=losses.get)  # best_mode max: the larger val_loss wins (as asked, odd as it is)
    assert summary["best_seed"] == chosen
    assert torch.equal(
        load_file(str(out / "final" / "model.safetensors"))["classifier.weight"],
        load_file(str(out / f"seed_{chosen}" / "final" / "model.safetensors"))["classifier.weight"],
    )


def test_length_grouping_by_task(tiny_bert, sentiment, tmp_path):
    from lmforge import config as config_mod
    from lmforge.finetune import FinetuneConfig, groups_by_length

    def config(**values):
        return config_mod.resolve(FinetuneConfig, None, values)

    assert groups_by_length(config(task="classification")) and groups_by_length(config(task="qa"))
    assert not groups_by_length(config(task="ner"))  # grouped NER batches cost ~1 entity F1 (ner_ab.md)
    assert groups_by_length(config(task="ner", **{"train.group_by_length": "true"}))


def test_a_flop_budget_and_a_repeated_seed_are_refused(tiny_bert, sentiment, tmp_path, capsys):
    train, dev = sentiment
    common = finetune_files(tiny_bert, train, dev)
    assert finetune(*common, "--out", str(tmp_path / "a"), "--train.max_flops", "1e12") == 2
    assert "--train.max_flops: fine-tuning does not count FLOPs; give --train.max_steps" in capsys.readouterr().err
    assert finetune(*common, "--out", str(tmp_path / "b"), "--seeds", "1,1") == 2
    assert "--seeds 1,1: each seed once" in capsys.readouterr().err
