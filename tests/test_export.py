"""`lmforge export`: the HF folder and model card, ONNX parity per task, int8 with its metric delta, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import tiny_pretrain

from lmforge import cli
from lmforge.runfolder import file_sha256


def export(*args: str) -> int:
    return cli.main(["export", *map(str, args)])


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_export_is_a_clean_hf_folder_with_a_model_card(tiny_classifier, sentiment, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "shipped"
    assert export("--model", tiny_classifier, "--out", out) == 0
    model = AutoModelForSequenceClassification.from_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(out))
    assert sorted(model.config.id2label.values()) == ["0", "1"]
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin")) and not list(out.glob("*.onnx"))
    card = (out / "README.md").read_text()
    meta = front_matter(card)
    assert meta["pipeline_tag"] == "text-classification" and meta["library_name"] == "transformers"
    train, _ = sentiment
    assert file_sha256(train)[:16] in card and train.name in card  # the training data, by hash
    report = json.loads((tiny_classifier / "report.json").read_text())
    metric = next(k for k in report["metrics"] if k == "accuracy")
    assert f"| {metric} | {report['metrics'][metric]:.4f} |" in card
    assert "picked the checkpoint" in card  # no test file: the valid figure is labelled as optimistic
    assert "## Recipe" in card and "## Intended use and limits" in card
    assert not list(tmp_path.glob(".*shipped*"))  # no temp folder left beside it
    import stat

    from lmforge.publish import FILE_MODE

    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {p.name: FILE_MODE for p in out.iterdir()}  # fmt: skip


def onnx_checks(out: Path) -> dict:
    return json.loads((out / "export.json").read_text())["checks"]


@pytest.mark.parametrize("name", ["classifier", "tagger", "reader"])
def test_onnx_matches_pytorch_for_each_task_head(name, tiny_classifier, tiny_tagger, tiny_reader, tmp_path):
    import onnx

    run = {"classifier": tiny_classifier, "tagger": tiny_tagger, "reader": tiny_reader}[name]
    out = tmp_path / name
    assert export("--model", run, "--out", out, "--onnx", "true") == 0
    onnx.checker.check_model(str(out / "model.onnx"))
    graph = onnx.load(str(out / "model.onnx")).graph
    dims = [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "sequence"]  # dynamic axes
    checks = onnx_checks(out)
    assert checks["examples"] > 0 and checks["onnx"]["max_abs_diff"] < 1e-4
    assert checks["onnx"]["agreement"] == 1.0
    assert checks["onnx"]["metrics"] == pytest.approx(checks["torch"], abs=1e-6)


def test_int8_writes_the_metric_before_and_after_into_the_card(tiny_classifier, tmp_path, monkeypatch):
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)  # onnxruntime's pre-processing once left temp models in the working folder
    out = tmp_path / "int8"
    assert export("--model", tiny_classifier, "--out", out, "--onnx", "true", "--quantize", "int8") == 0
    assert not list(here.iterdir())
    assert (out / "model.int8.onnx").stat().st_size < (out / "model.onnx").stat().st_size
    checks = onnx_checks(out)
    metric = checks["metric"]
    before, after = checks["torch"][metric], checks["onnx_int8"]["metrics"][metric]
    card = (out / "README.md").read_text()
    assert f"int8 changes {metric} by {after - before:+.4f}" in card
    assert f"| onnx int8 | {checks['onnx_int8']['max_abs_diff']:.2e} |" in card


def test_language_models_export_with_parity(tiny_masked_lm, small_text, tmp_path):
    out = tmp_path / "mlm"
    assert export("--model", tiny_masked_lm, "--out", out, "--onnx", "true") == 0
    assert front_matter((out / "README.md").read_text())["pipeline_tag"] == "fill-mask"
    checks = onnx_checks(out)
    assert checks["onnx"]["max_abs_diff"] < 1e-3 and checks["onnx"]["agreement"] > 0.99
    tiny_pretrain(small_text, tmp_path / "clm")
    out = tmp_path / "clm-export"
    assert export("--model", tmp_path / "clm", "--out", out, "--onnx", "true", "--valid_file", small_text) == 0
    assert front_matter((out / "README.md").read_text())["pipeline_tag"] == "text-generation"
    assert onnx_checks(out)["onnx"]["max_abs_diff"] < 1e-3


def test_a_failed_parity_check_publishes_nothing(tiny_classifier, tmp_path, monkeypatch, capsys):
    from lmforge import export as export_mod

    monkeypatch.setattr(export_mod, "compare_logits", lambda a, b: 0.5)
    out = tmp_path / "bad"
    assert export("--model", tiny_classifier, "--out", out, "--onnx", "true") == 2
    err = capsys.readouterr().err
    assert "ONNX export differs from PyTorch by 5.00e-01" in err and "nothing was written" in err
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--quantize", "int8"], "--quantize int8 quantises the ONNX model: add --onnx true"),
        (["--onnx", "true", "--valid_file", "no/such.tsv"], "--valid_file: no/such.tsv is not a file"),
        (["--quantize", "int4"], "quantize"),
    ],
)
def test_bad_inputs_are_one_line_errors(tiny_classifier, tmp_path, flags, message, capsys):
    out = tmp_path / "out"
    assert export("--model", tiny_classifier, "--out", out, *flags) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_onnx_of_a_plain_folder_needs_a_labelled_file(tiny_classifier, tmp_path, capsys):
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(tiny_classifier / "final", plain)  # an HF folder: no run config names a valid file
    assert export("--model", plain, "--out", tmp_path / "out", "--onnx", "true") == 2
    assert "--onnx true checks the export on labelled examples: pass --valid_file FILE" in capsys.readouterr().err


def test_one_seed_of_a_multi_seed_run_keeps_its_provenance(tiny_bert, sentiment, tmp_path):
    from conftest import tiny_finetune

    train, dev = sentiment
    run = tiny_finetune(tiny_bert, train, dev, tmp_path / "seeds", "classification", "--train.max_steps", "3", "--seeds", "1,2")  # fmt: skip
    out = tmp_path / "seed2"
    assert export("--model", run / "seed_2", "--out", out) == 0
    card = (out / "README.md").read_text()
    seed = json.loads((run / "seed_2" / "report.json").read_text())
    assert file_sha256(train)[:16] in card and "## Recipe" in card  # the run's data and config
    assert f"| accuracy | {seed['metrics']['accuracy']:.4f} |" in card  # this seed's own figures
    import shutil

    shutil.copytree(run / "seed_2" / "final", tmp_path / "plain")
    assert export("--model", tmp_path / "plain", "--out", tmp_path / "plain-out") == 0
    assert "Not recorded" in (tmp_path / "plain-out" / "README.md").read_text()
