"""`lmforge predict` on a tiny classifier: .txt lines, --text, and input columns carried into the rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import evaluate_task
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from lmforge import cli

LABELS = {0: "negative", 1: "positive"}


def head_model(tiny_bert: Path, folder: Path, auto) -> Path:
    """tiny_bert with a new (random) task head from the Auto class `auto`, saved as a fine-tuned model folder."""
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    model = auto.from_pretrained(
        str(tiny_bert), num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}
    )
    model.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def classifier(tiny_bert, tmp_path_factory) -> Path:
    return head_model(tiny_bert, tmp_path_factory.mktemp("classifier"), AutoModelForSequenceClassification)


def predict(model: Path, out: Path, *args: str) -> list[dict]:
    assert cli.main(["predict", "--model", str(model), "--out", str(out), "--device", "cpu", *args]) == 0
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]


TEXTS = ["the film was great", "the plot was boring", "a superb cast"]


def test_a_txt_file_is_one_example_per_line(classifier, tmp_path):
    path = tmp_path / "reviews.txt"
    path.write_text(f"{TEXTS[0]}\n\n{TEXTS[1]}\n{TEXTS[2]}\n", encoding="utf-8")  # a blank line is no example
    rows = predict(classifier, tmp_path / "out", "--input", str(path))
    assert [r["text"] for r in rows] == TEXTS
    assert [r["where"] for r in rows] == [f"{path}:1", f"{path}:3", f"{path}:4"]
    assert all(r["prediction"] in LABELS.values() and set(r["probabilities"]) == set(LABELS.values()) for r in rows)


def test_text_flag_takes_examples_from_the_command_line(classifier, tmp_path):
    path = tmp_path / "reviews.txt"
    path.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    from_file = predict(classifier, tmp_path / "file", "--input", str(path))
    rows = predict(classifier, tmp_path / "flag", "--text", *TEXTS)
    assert [r["text"] for r in rows] == TEXTS and [r["where"] for r in rows] == ["--text 1", "--text 2", "--text 3"]
    # the same texts, the same predictions, wherever they come from
    assert [(r["prediction"], r["probabilities"]) for r in rows] == [
        (r["prediction"], r["probabilities"]) for r in from_file
    ]
    assert len(predict(classifier, tmp_path / "one", "--text", "just one")) == 1


def test_table_columns_are_carried_into_the_rows(classifier, tmp_path):
    tsv = tmp_path / "reviews.tsv"
    tsv.write_text(
        "id\tsentence\tsource\tlabel\n" + "".join(f"r{i}\t{t}\tweb\t1\n" for i, t in enumerate(TEXTS)), encoding="utf-8"
    )
    rows = predict(classifier, tmp_path / "tsv", "--input", str(tsv))
    assert [r["id"] for r in rows] == ["r0", "r1", "r2"] and all(
        r["source"] == "web" and r["label"] == "1" for r in rows
    )
    assert "sentence" not in rows[0] and rows[0]["text"] == TEXTS[0] and list(rows[0])[:2] == ["id", "source"]

    jsonl = tmp_path / "reviews.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"id": i, "text": t, "meta": {"lang": "en"}}) + "\n" for i, t in enumerate(TEXTS)),
        encoding="utf-8",
    )
    rows = predict(classifier, tmp_path / "jsonl", "--input", str(jsonl))
    assert [r["id"] for r in rows] == [0, 1, 2] and rows[0]["meta"] == {"lang": "en"} and "label" not in rows[0]

    pairs = tmp_path / "pairs.csv"  # both text columns of a pair stay out of the carried columns
    pairs.write_text("pair_id,sentence1,sentence2\n7,a cat,a dog\n", encoding="utf-8")
    (row,) = predict(classifier, tmp_path / "pairs", "--input", str(pairs))
    assert row["pair_id"] == "7" and (row["text"], row["text_pair"]) == ("a cat", "a dog") and "sentence1" not in row


def test_bad_inputs_name_the_fix(classifier, tiny_bert, tmp_path, capsys):
    txt = tmp_path / "reviews.txt"
    txt.write_text("fine\n", encoding="utf-8")
    assert (
        cli.main(
            ["predict", "--model", str(classifier), "--out", str(tmp_path / "a"), "--input", str(txt), "--text", "x"]
        )
        == 2
    )
    assert "--input FILE or with --text" in capsys.readouterr().err
    assert cli.main(["predict", "--model", str(classifier), "--out", str(tmp_path / "b")]) == 2
    assert "neither was given" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    assert cli.main(["predict", "--model", str(classifier), "--out", str(tmp_path / "c"), "--input", str(empty)]) == 2
    assert f"{empty}: no text in this file" in capsys.readouterr().err
    # a .txt file has no labels: evaluation needs a table with a label column
    assert evaluate_task("classification", classifier, txt, tmp_path / "d") == 2
    assert "a .txt file holds texts without labels" in capsys.readouterr().err
    tagger = head_model(tiny_bert, tmp_path / "tagger", AutoModelForTokenClassification)
    assert (
        cli.main(["predict", "--model", str(tagger), "--out", str(tmp_path / "e"), "--text", "John lives in Paris"])
        == 2
    )
    assert "--text is for classification models" in capsys.readouterr().err
