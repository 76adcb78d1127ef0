"""The feedback store (SQLite, WAL, threads, restarts), its checks of what clients send, the export
to the files finetune reads (read back with finetune's own readers), the CLI, and the packaged page."""

from __future__ import annotations

import importlib.resources
import json
import re
import sqlite3
import threading
from pathlib import Path

import pytest

from lmforge import cli
from lmforge.errors import LmforgeError
from lmforge.feedback import FeedbackStore, export

SCORES = {"positive": 0.9, "negative": 0.1}
NER_TEXT = "Angela Merkel visited New York."
QA_CONTEXT = "The meeting took place in New York in 2019."


def add_classification(store: FeedbackStore) -> None:
    store.add("classification", "h1", {"text": "great film"}, {"label": "positive", "scores": SCORES}, "right", None)
    store.add(
        "classification",
        "h1",
        {"text": "dull, too long"},
        {"label": "positive", "scores": SCORES},
        "wrong",
        {"label": "negative"},
    )


def add_ner(store: FeedbackStore) -> None:
    predicted = {"entities": [{"text": "Angela", "label": "LOC", "start": 0, "end": 6}]}
    corrected = {"entities": [{"start": 0, "end": 13, "label": "PER"}, {"start": 22, "end": 30, "label": "LOC"}]}
    store.add("ner", "h1", {"text": NER_TEXT}, predicted, "wrong", corrected)
    right = {"entities": [{"text": "Paris", "label": "LOC", "start": 8, "end": 13}]}
    store.add("ner", "h1", {"text": "Life in Paris"}, right, "right", None)


def add_qa(store: FeedbackStore) -> None:
    question = {"question": "Where was the meeting?", "context": QA_CONTEXT}
    wrong = {"answer": "2019", "start": 38, "end": 42, "score": 0.4}
    store.add("qa", "h1", question, wrong, "wrong", {"answer": "New York", "start": 26})
    when = {"question": "When was the meeting?", "context": QA_CONTEXT}
    store.add("qa", "h1", when, {"answer": "2019", "start": 38, "end": 42, "score": 0.8}, "right", None)


# --- store --------------------------------------------------------------------------------------


def test_store_is_wal_and_counts_rows(tmp_path):
    db = tmp_path / "fb.db"
    store = FeedbackStore(db)
    add_classification(store)
    store.add("generate", "h2", {"text": "Once upon"}, {"text": " a time"}, "wrong", None)
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 1
    assert store.counts() == {"right": 1, "wrong": 2, "total": 3}
    assert store.counts("h1") == {"right": 1, "wrong": 1, "total": 2}
    rows = store.rows("classification")
    assert [r["verdict"] for r in rows] == ["right", "wrong"]
    assert rows[1]["input"] == {"text": "dull, too long"} and rows[1]["correction"] == {"label": "negative"}
    assert rows[0]["correction"] is None and rows[0]["created"].endswith("+00:00")


def test_store_survives_a_restart(tmp_path):
    db = tmp_path / "fb.db"
    add_classification(FeedbackStore(db))
    reopened = FeedbackStore(db)  # a new server process on the same file
    assert reopened.counts()["total"] == 2
    new_id = reopened.add("classification", "h1", {"text": "fine"}, {"label": "positive"}, "right", None)
    assert new_id == 3 and [r["id"] for r in reopened.rows()] == [1, 2, 3]


def test_concurrent_adds_all_land(tmp_path):
    store = FeedbackStore(tmp_path / "fb.db")
    ids: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(25):
            verdict = "right" if i % 2 else "wrong"
            fix = None if verdict == "right" else {"label": "negative"}
            row = store.add("classification", "h", {"text": f"{n}-{i}"}, {"label": "positive"}, verdict, fix)
            with lock:
                ids.append(row)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 200
    assert store.counts() == {"right": 96, "wrong": 104, "total": 200}


BAD = [
    # (task, input, prediction, verdict, correction, what the message says)
    ("sentiment", {"text": "x"}, {}, "right", None, "not one of classification"),
    ("classification", {"text": "x"}, {"label": "a"}, "maybe", None, 'must be "right" or "wrong"'),
    ("classification", {"txt": "x"}, {"label": "a"}, "right", None, "unknown field 'txt'"),
    ("classification", "x", {"label": "a"}, "right", None, 'must be {"text": "..."}'),
    ("qa", {"question": "q"}, {}, "right", None, "field 'context' is missing"),
    ("classification", {"text": "x"}, "positive", "right", None, "prediction must be the JSON object"),
    ("classification", {"text": "x"}, {"label": "a"}, "wrong", None, 'needs a correction: send "correction": {"label"'),
    ("classification", {"text": "x"}, {"label": "a"}, "right", {"label": "b"}, "takes no correction"),
    ("classification", {"text": "x"}, {"label": "a"}, "wrong", {"lable": "b"}, "needs a non-empty label"),
    (
        "classification",
        {"text": "x"},
        {"label": "a", "scores": {"a": 1.0, "b": 0.0}},
        "wrong",
        {"label": "c"},
        "label 'c' is not one of the model's labels (a, b)",
    ),
    ("classification", {"text": "x"}, {"label": "a"}, "wrong", ["b"], "must be a JSON object or null"),
    ("ner", {"text": NER_TEXT}, {"entities": []}, "wrong", {"entities": "PER"}, "needs an 'entities' list"),
    (
        "ner",
        {"text": NER_TEXT},
        {"entities": []},
        "wrong",
        {"entities": [{"start": 0, "label": "PER"}]},
        "entity 0 needs integer 'start' and 'end'",
    ),
    (
        "ner",
        {"text": NER_TEXT},
        {"entities": []},
        "wrong",
        {"entities": [{"start": 0, "end": 99, "label": "PER"}]},
        "outside the text's 31 characters",
    ),
    (
        "ner",
        {"text": NER_TEXT},
        {"entities": []},
        "wrong",
        {"entities": [{"start": 0, "end": 6, "label": "B-PER"}]},
        "is a tag; send the entity type (PER)",
    ),
    (
        "ner",
        {"text": NER_TEXT},
        {"entities": []},
        "wrong",
        {"entities": [{"start": 0, "end": 6, "label": "A B"}]},
        "without spaces",
    ),
    (
        "ner",
        {"text": NER_TEXT},
        {"entities": []},
        "wrong",
        {"entities": [{"start": 0, "end": 13, "label": "PER"}, {"start": 7, "end": 13, "label": "PER"}]},
        "overlap",
    ),
    (
        "ner",
        {"text": NER_TEXT},
        {"entities": []},
        "wrong",
        {"entities": [{"start": 6, "end": 7, "label": "PER"}]},
        "covers no word",
    ),
    (
        "qa",
        {"question": "q", "context": QA_CONTEXT},
        {"answer": "x", "start": 0},
        "wrong",
        {"answer": 5, "start": 0},
        "needs an 'answer' string",
    ),
    (
        "qa",
        {"question": "q", "context": QA_CONTEXT},
        {"answer": "x", "start": 0},
        "wrong",
        {"answer": "New York"},
        "needs an integer 'start'",
    ),
    (
        "qa",
        {"question": "q", "context": QA_CONTEXT},
        {"answer": "x", "start": 0},
        "wrong",
        {"answer": "New York", "start": 3},
        "'New York' is not at character 3 of the context (found ' meeting')",
    ),
    (
        "qa",
        {"question": "q", "context": QA_CONTEXT},
        {"answer": "York", "start": 0},
        "right",
        None,
        "'York' is not at character 0",
    ),
]


@pytest.mark.parametrize("task,input,prediction,verdict,correction,message", BAD, ids=[b[-1][:40] for b in BAD])
def test_bad_feedback_is_one_line_error(tmp_path, task, input, prediction, verdict, correction, message):
    store = FeedbackStore(tmp_path / "fb.db")
    with pytest.raises(LmforgeError) as err:
        store.add(task, "h", input, prediction, verdict, correction)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert store.counts()["total"] == 0


def test_a_file_that_is_not_a_database_is_named(tmp_path):
    junk = tmp_path / "notes.db"
    junk.write_text("not sqlite at all, " * 100)
    with pytest.raises(LmforgeError, match=r"notes.db: cannot be read as a feedback database"):
        FeedbackStore(junk)


# --- export, read back with finetune's readers ---------------------------------------------------


def read_back(task: str, path: Path) -> list:
    from lmforge.tasks import TASKS, format_for
    from lmforge.tasks.data import FormatConfig

    return TASKS[task].read(path, format_for(TASKS[task], FormatConfig()), "train")


def test_classification_export_reads_back_as_corrected(tmp_path):
    store = FeedbackStore(tmp_path / "fb.db")
    add_classification(store)
    store.add(
        "classification",
        "h1",
        {"text": 'a "quoted",\nmultiline text', "text_pair": "second"},
        {"label": "negative", "scores": SCORES},
        "right",
        None,
    )
    path, count = export(tmp_path / "fb.db", tmp_path / "train.csv")
    assert count == 3 and path.read_text().splitlines()[0] == "text,text_pair,label"
    records = read_back("classification", path)
    assert [(r.text, r.text_pair, r.label) for r in records] == [
        ("great film", "", "positive"),
        ("dull, too long", "", "negative"),
        ('a "quoted",\nmultiline text', "second", "negative"),
    ]
    _, only = export(tmp_path / "fb.db", tmp_path / "fixes.csv", only_corrections=True)
    assert only == 1 and [r.label for r in read_back("classification", tmp_path / "fixes.csv")] == ["negative"]


def test_ner_export_reads_back_as_corrected(tmp_path):
    store = FeedbackStore(tmp_path / "fb.db")
    add_ner(store)
    path, count = export(tmp_path / "fb.db", tmp_path / "train.conll")
    sentences = read_back("ner", path)
    assert count == 2
    assert sentences[0].words == ["Angela", "Merkel", "visited", "New", "York", "."]
    assert sentences[0].tags == ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"]
    assert (sentences[1].words, sentences[1].tags) == (["Life", "in", "Paris"], ["O", "O", "B-LOC"])
    _, only = export(tmp_path / "fb.db", tmp_path / "fixes.conll", only_corrections=True)
    assert only == 1 and len(read_back("ner", tmp_path / "fixes.conll")) == 1


def test_qa_export_reads_back_as_corrected(tmp_path):
    store = FeedbackStore(tmp_path / "fb.db")
    add_qa(store)
    store.add(
        "qa",
        "h1",
        {"question": "Who came?", "context": QA_CONTEXT},
        {"answer": "2019", "start": 38},
        "wrong",
        {"answer": ""},
    )  # the context does not say
    path, count = export(tmp_path / "fb.db", tmp_path / "train.json")
    questions = read_back("qa", path)
    assert count == 3 and json.loads(path.read_text())["version"] == "lmforge-feedback"
    assert [(q.id, q.answers) for q in questions] == [
        ("feedback-1", [{"text": "New York", "answer_start": 26}]),
        ("feedback-2", [{"text": "2019", "answer_start": 38}]),
        ("feedback-3", []),
    ]
    assert len(json.loads(path.read_text())["data"][0]["paragraphs"]) == 1  # one context, three questions
    _, only = export(tmp_path / "fb.db", tmp_path / "fixes.json", only_corrections=True)
    assert only == 2


def test_export_replaces_an_existing_file(tmp_path):
    store = FeedbackStore(tmp_path / "fb.db")
    add_classification(store)
    out = tmp_path / "train.csv"
    out.write_text("old\n")
    assert cli.main(["feedback", "export", "--db", str(tmp_path / "fb.db"), "--out", str(out)]) == 0
    assert out.read_text().startswith("text,label\n")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


# --- the CLI ------------------------------------------------------------------------------------


def test_cli_export_prints_what_it_wrote(tmp_path, capsys):
    add_classification(FeedbackStore(tmp_path / "fb.db"))
    out = tmp_path / "fixes.csv"
    code = cli.main(
        ["feedback", "export", "--db", str(tmp_path / "fb.db"), "--out", str(out), "--only_corrections", "true"]
    )
    assert code == 0
    assert f"1 corrections -> {out} (classification CSV)" in capsys.readouterr().out
    assert out.is_file()


def test_cli_help_lists_feedback_export(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["--help"])
    assert exit.value.code == 0 and "feedback export" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["feedback", "export", "--help"])
    assert "--only_corrections" in capsys.readouterr().out


def mixed_db(tmp_path: Path) -> Path:
    store = FeedbackStore(tmp_path / "mixed.db")
    add_classification(store)
    add_qa(store)
    return store.path


@pytest.mark.parametrize(
    "case,message",
    [
        ("missing", "missing.db: no such file"),
        ("empty", "no feedback in DB yet"),
        ("extension", "classification feedback is written as CSV; name the file with .csv, not .conll"),
        ("several", "several tasks (classification (2), qa (2)); choose one with --task"),
        ("absent task", "no ner feedback (it holds classification (2), qa (2)); pick one with --task"),
        ("no action", "give an action: export"),
        ("no flags", "give the feedback database and the file to write"),
    ],
)
def test_cli_bad_inputs_are_one_line_errors(tmp_path, capsys, case, message):
    FeedbackStore(tmp_path / "empty.db")
    add_classification(FeedbackStore(tmp_path / "one.db"))
    mixed = mixed_db(tmp_path)
    argv = {
        "missing": ["--db", str(tmp_path / "missing.db"), "--out", str(tmp_path / "a.csv")],
        "empty": ["--db", str(tmp_path / "empty.db"), "--out", str(tmp_path / "a.csv")],
        "extension": ["--db", str(tmp_path / "one.db"), "--out", str(tmp_path / "a.conll")],
        "several": ["--db", str(mixed), "--out", str(tmp_path / "a.csv")],
        "absent task": ["--db", str(mixed), "--out", str(tmp_path / "a.conll"), "--task", "ner"],
        "no flags": [],
    }
    code = cli.main(["feedback"] if case == "no action" else ["feedback", "export", *argv[case]])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "a.csv").exists() and not (tmp_path / "a.conll").exists()


def test_only_corrections_with_none_is_an_error(tmp_path):
    store = FeedbackStore(tmp_path / "fb.db")
    store.add("classification", "h", {"text": "good"}, {"label": "positive"}, "right", None)
    with pytest.raises(LmforgeError, match="no classification corrections to export yet"):
        export(store.path, tmp_path / "out.csv", only_corrections=True)


def test_generate_feedback_has_no_export(tmp_path):
    store = FeedbackStore(tmp_path / "fb.db")
    store.add("generate", "h", {"text": "Once"}, {"text": " upon"}, "right", None)
    with pytest.raises(LmforgeError, match=r"holds only generate \(1\) feedback, which has no fine-tuning format"):
        export(store.path, tmp_path / "out.csv")


# --- the page -----------------------------------------------------------------------------------

PAGE_IDS = [
    "text",
    "question",
    "context",
    "predict",
    "result",
    "right",
    "wrong",
    "correct-label",
    "send-correction",
    "counts",
    "status",
    "token",
    "ner-editor",
    "ner-label",
    "ner-clear",
    "qa-context",
    "qa-answer",
]


def test_page_is_packaged_and_self_contained():
    page = importlib.resources.files("lmforge") / "ui" / "index.html"
    html = page.read_text(encoding="utf-8")
    for element in PAGE_IDS:
        assert f'id="{element}"' in html, element
    for path in ("/v1/model", "/v1/classify", "/v1/ner", "/v1/qa", "/v1/fill-mask", "/v1/generate", "/v1/feedback"):
        assert f'"{path}"' in html, path
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|@import|url\(\s*["']?https?:""", html)
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    assert '"ui/*.html"' in pyproject  # the page ships in the wheel, not only in a checkout


@pytest.mark.parametrize(
    "task,input,prediction,correction",
    [
        ("classification", {"text": "dull"}, {"label": "0", "scores": {"0": 0.9, "1": 0.1}}, {"label": "0"}),
        (
            "ner",
            {"text": "John lives in Paris"},
            {
                "entities": [
                    {"text": "Paris", "label": "LOC", "start": 14, "end": 19},
                    {"text": "John", "label": "PER", "start": 0, "end": 4},
                ]
            },  # fmt: skip
            {"entities": [{"start": 0, "end": 4, "label": "PER"}, {"start": 14, "end": 19, "label": "LOC"}]},
        ),
        (
            "qa",
            {"question": "Where?", "context": "in Paris"},
            {"answer": "Paris", "start": 3, "end": 8, "score": 1.0},
            {"answer": "Paris", "start": 3},
        ),  # fmt: skip
    ],
)
def test_a_wrong_verdict_whose_correction_is_the_prediction_is_refused(tmp_path, task, input, prediction, correction):
    store = FeedbackStore(tmp_path / "f.sqlite")
    with pytest.raises(LmforgeError, match='the correction is what the model predicted; send "verdict": "right"'):
        store.add(task, "h", input, prediction, "wrong", correction)
    assert store.counts()["total"] == 0
