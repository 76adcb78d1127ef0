"""Readers for labelled data: columns, quoting, BOM, CoNLL columns and schemes, SQuAD offsets, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.errors import LmforgeError
from lmforge.tasks import data, format_for
from lmforge.tasks.classification import ClassificationTask
from lmforge.tasks.ner import NerTask

FMT = data.FormatConfig()


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def test_tsv_columns_are_guessed(tmp_path):
    path = write(tmp_path / "t.tsv", "sentence\tlabel\ngood film\t1\nbad film\t0\n")
    records = data.read_table(path, FMT)
    assert [(r.text, r.text_pair, r.label) for r in records] == [("good film", None, "1"), ("bad film", None, "0")]
    assert records[1].where == f"{path}:3"


def test_pairs_bom_and_quoting_off(tmp_path):
    # MRPC-like: a BOM before the header, and a stray quote that would swallow the tab with quoting on
    path = write(tmp_path / "m.tsv", '\ufeffQuality\t#1 String\t#2 String\n1\tHe said "hi\tShe said hi\n0\tA\tB\n')
    fmt = data.FormatConfig(text="#1 String", text_pair="#2 String", label="Quality", quoting=False)
    records = data.read_table(path, fmt)
    assert records[0].text == 'He said "hi' and records[0].text_pair == "She said hi" and records[0].label == "1"
    assert len(records) == 2


def test_headerless_columns_by_index(tmp_path):
    path = write(tmp_path / "cola.tsv", "gj04\t1\t\tOur friends won't buy this.\ngj04\t0\t*\tThey drank the pub.\n")
    records = data.read_table(path, data.FormatConfig(header=False, text="3", label="1"))
    assert [r.label for r in records] == ["1", "0"] and records[1].text == "They drank the pub."


def test_jsonl_and_label_kinds(tmp_path):
    path = write(
        tmp_path / "c.jsonl",
        "\n".join(json.dumps(r) for r in [{"text": "a", "label": "INHIBITOR"}, {"text": "b", "label": "AGONIST"}])
        + "\n",
    )
    task = ClassificationTask.from_train(data.read_table(path, FMT), FMT)
    assert task.kind == "single" and task.labels == ["AGONIST", "INHIBITOR"]
    sts = write(tmp_path / "sts.tsv", "sentence1\tsentence2\tlabel\na\tb\t3.8\nc\td\t1.0\n")
    assert ClassificationTask.from_train(data.read_table(sts, FMT), FMT).kind == "regression"
    multi = write(
        tmp_path / "m.jsonl",
        json.dumps({"text": "a", "labels": ["x", "y"]}) + "\n" + json.dumps({"text": "b", "labels": ["y"]}) + "\n",
    )
    task = ClassificationTask.from_train(data.read_table(multi, FMT), FMT)
    assert task.kind == "multi" and task.labels == ["x", "y"]
    numeric = write(tmp_path / "n.tsv", "text\tlabel\na\t10\nb\t2\nc\t1\n")
    assert ClassificationTask.from_train(data.read_table(numeric, FMT), FMT).labels == ["1", "2", "10"]


def test_missing_label_column_is_named(tmp_path):
    path = write(tmp_path / "t.tsv", "sentence\tscore\nfine\t1\n")
    with pytest.raises(LmforgeError, match=r"t\.tsv: no label column .*columns: sentence, score.*--format\.label"):
        data.read_table(path, FMT)
    with pytest.raises(LmforgeError, match=r"no column 'gold'.*--format\.label"):
        data.read_table(path, data.FormatConfig(label="gold"))


def test_ambiguous_text_column(tmp_path):
    path = write(tmp_path / "t.csv", "sentence,text,label\na,b,1\n")
    with pytest.raises(LmforgeError, match="sentence, text could each be the text column"):
        data.read_table(path, FMT)


def test_unseen_label_names_file_and_line(tmp_path):
    train = write(tmp_path / "train.tsv", "sentence\tlabel\na\tpos\nb\tneg\n")
    valid = write(tmp_path / "valid.tsv", "sentence\tlabel\nc\tpos\nd\tneutral\n")
    task = ClassificationTask.from_train(data.read_table(train, FMT), FMT)
    with pytest.raises(LmforgeError, match=rf"{valid}:3: label 'neutral' does not occur in the training data"):
        [task.target(r) for r in data.read_table(valid, FMT)]


def test_empty_split(tmp_path):
    with pytest.raises(LmforgeError, match="the valid split has no examples"):
        data.read_table(write(tmp_path / "v.tsv", "sentence\tlabel\n"), FMT, "valid")
    with pytest.raises(LmforgeError, match="the train split has no examples"):
        data.read_conll(write(tmp_path / "t.txt", "-DOCSTART- -X- -X- O\n\n"), FMT)


CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


def test_conll_reader_and_tag_column(tmp_path):
    path = write(tmp_path / "c.txt", CONLL)
    sentences = data.read_conll(path, FMT)
    assert [s.words for s in sentences] == [["EU", "rejects", "German"], ["Peter", "Blackburn"]]
    assert sentences[1].tags == ["B-PER", "I-PER"] and sentences[1].where == f"{path}:7"
    chunks = data.read_conll(path, data.FormatConfig(tag_column=2))
    assert chunks[0].tags == ["B-NP", "B-VP", "B-NP"]
    task = NerTask.from_train(sentences, FMT)
    assert task.labels == ["O", "B-MISC", "B-ORG", "B-PER", "I-PER"]


def test_conll_wrong_column_count(tmp_path):
    path = write(tmp_path / "bad.txt", CONLL.replace("rejects VBZ B-VP O", "rejects VBZ O"))
    with pytest.raises(LmforgeError, match=rf"{path}:4: 3 columns where the file's first line has 4"):
        data.read_conll(path, FMT)


def test_unseen_tag_names_its_line(tmp_path):
    from transformers import AutoTokenizer

    from lmforge.tasks.backbone import minilm_folder

    train = data.read_conll(write(tmp_path / "c.txt", CONLL), FMT)
    valid_path = write(tmp_path / "v.txt", "Paris NNP B-NP B-LOC\n")
    task = NerTask.from_train(train, FMT)
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_folder()))
    with pytest.raises(LmforgeError, match=rf"{valid_path}:1: label 'B-LOC' does not occur"):
        task.encode(data.read_conll(valid_path, FMT, "valid"), tokenizer, format_for(NerTask, FMT))


@pytest.mark.parametrize(
    "scheme, tags, iob2",
    [
        ("iob1", ["I-PER", "I-PER", "O", "I-LOC", "B-LOC"], ["B-PER", "I-PER", "O", "B-LOC", "B-LOC"]),
        ("iob1", ["I-PER", "I-LOC"], ["B-PER", "B-LOC"]),
        ("bioes", ["B-PER", "E-PER", "S-LOC", "O"], ["B-PER", "I-PER", "B-LOC", "O"]),
        ("iob2", ["B-PER", "I-PER"], ["B-PER", "I-PER"]),
    ],
)
def test_tag_schemes_become_iob2(scheme, tags, iob2):
    assert data.to_iob2(tags, scheme) == iob2


def squad_json(answer_start: int) -> dict:
    return {
        "version": "1.1",
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {
                        "context": "Paris is the capital of France.",
                        "qas": [
                            {
                                "id": "q1",
                                "question": "What is the capital?",
                                "answers": [{"text": "Paris", "answer_start": answer_start}],
                            }
                        ],
                    }
                ],
            }
        ],
    }


def test_squad_reader_and_bad_offset(tmp_path):
    good = write(tmp_path / "good.json", json.dumps(squad_json(0)))
    (question,) = data.read_squad(good)
    assert question.answers[0]["text"] == "Paris"
    bad = write(tmp_path / "bad.json", json.dumps(squad_json(3)))
    with pytest.raises(
        LmforgeError, match=r"bad\.json: question q1: answer 'Paris' is not at character 3 .*found 'is is'"
    ):
        data.read_squad(bad)


@pytest.mark.parametrize("column", [4, 0, -4])
def test_tag_column_outside_the_file_is_named(tmp_path, column):
    path = tmp_path / "x.conll"
    path.write_text("EU NNP B-ORG\nrejects VBZ O\n")
    with pytest.raises(
        LmforgeError, match=r"x.conll:1: --format.tag_column -?\d is not a tag column of this 3-column file"
    ):
        data.read_conll(path, data.FormatConfig(tag_column=column))


def test_every_task_declares_the_task_interface(tiny_bert):
    from transformers import AutoModel

    from lmforge.tasks import TASKS, Task
    from lmforge.tasks.backbone import freeze_encoder
    from lmforge.tasks.qa import QaTask

    tasks = [ClassificationTask("single", ["a", "b"]), NerTask(["O", "B-PER"]), QaTask()]
    assert [t.name for t in tasks] == list(TASKS) and all(isinstance(t, Task) for t in tasks)
    # head mode needs the head's modules by name: a bare encoder has none of them
    with pytest.raises(
        LmforgeError,
        match=r"--mode head trains the dropout \+ classifier of a BERT-style classification model; "
        r"BertModel has no dropout, classifier; use --mode full or lora",
    ):
        freeze_encoder(AutoModel.from_pretrained(str(tiny_bert)), tasks[0])


def test_tables_are_read_through_documents_gz_and_bad_bytes_named(tmp_path):
    import gzip

    path = tmp_path / "t.tsv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("sentence\tlabel\nfine\t1\nalso fine\t0\n")
    assert [r.text for r in data.read_table(path, FMT)] == ["fine", "also fine"]
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"sentence,label\ncaf\xe9,1\n")
    with pytest.raises(LmforgeError, match=r"bad\.csv: bytes after line \d+ are not UTF-8 .*convert the file to UTF-8"):
        data.read_table(bad, FMT)
    jsonl = write(tmp_path / "d.jsonl", '{"sentence": "a", "label": 1}\n[1, 2]\n')
    with pytest.raises(LmforgeError, match=r"d\.jsonl:2: expected a JSON object per line, got list"):
        data.read_table(jsonl, FMT)


def test_a_squad_question_without_answers_is_an_error_unless_impossible(tmp_path):
    paragraph = {"context": "Paris is in France.", "qas": [{"id": "q1", "question": "Where is Paris?"}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [paragraph]}]}))
    with pytest.raises(
        LmforgeError,
        match=r"squad\.json: question q1: no 'answers' field; give its answers, or mark it \"is_impossible\": true",
    ):
        data.read_squad(path)
    assert data.read_squad(path, labelled=False)[0].answers == []  # predict needs no answers
    paragraph["qas"][0]["is_impossible"] = True
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [paragraph]}]}))
    assert data.read_squad(path)[0].answers == []


def test_every_bad_label_of_a_file_is_reported_at_once(tiny_bert, tmp_path):
    from lmforge import tokenizer as tokenizer_mod
    from lmforge.tasks.classification import ClassificationTask

    train = write(tmp_path / "train.tsv", "sentence\tlabel\ngood\tpos\nbad\tneg\n")
    dev = write(
        tmp_path / "dev.tsv", "sentence\tlabel\nfine\tpos\nmeh\tneutral\nawful\tnegative\nok\tpositive\nhmm\tmixed\n"
    )
    task = ClassificationTask.from_train(data.read_table(train, FMT), FMT)
    with pytest.raises(LmforgeError) as err:
        task.encode(data.read_table(dev, FMT), tokenizer_mod.load(tiny_bert), FMT)
    message = str(err.value)
    assert message.startswith("4 problems: ") and "dev.tsv:3: label 'neutral'" in message and "and 1 more" in message
    assert "\n" not in message
