"""Feedback on a served model's predictions, kept in SQLite, and exported as fine-tuning data.

`lmforge serve --feedback DB` stores every "right" / "wrong" verdict (with the correction for a
wrong one) through `FeedbackStore`; `lmforge feedback export` turns the rows of one task into the
file `lmforge finetune` reads: a CSV (classification), CoNLL (ner) or SQuAD JSON (qa). A "right"
row trains on the model's own prediction, a "wrong" row on its correction.

The database runs in WAL mode with synchronous=NORMAL: the server's threads write while an export
reads, a killed server loses no committed verdict (a power cut may lose the last few). Each call opens its own connection, so the store is safe to share
between threads.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Optional

from lmforge.config import option
from lmforge.errors import LmforgeError
from lmforge.publish import write_text_atomic

ExportTask = Literal["classification", "ner", "qa"]
TASK_NAMES = ("classification", "ner", "qa", "fill-mask", "generate")
EXPORTABLE = ("classification", "ner", "qa")  # the tasks `lmforge finetune` trains
TAG_PREFIX = re.compile(r"^[BIESLU]-")  # "B-PER" is a CoNLL tag, not an entity type
SCHEMA_VERSION = 1  # PRAGMA user_version of a database this module wrote

# what `export` writes per task, and the extensions of --out that agree with it
FORMATS = {
    "classification": ("CSV", (".csv",)),
    "ner": ("CoNLL", (".conll", ".iob", ".bio", ".txt")),
    "qa": ("SQuAD JSON", (".json",)),
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created TEXT NOT NULL,
    task TEXT NOT NULL,
    model_hash TEXT NOT NULL,
    input TEXT NOT NULL,
    prediction TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('right', 'wrong')),
    correction TEXT
);
CREATE INDEX IF NOT EXISTS feedback_model ON feedback (model_hash);
"""

# the shape to send, quoted in every message about a malformed correction
SHAPES = {
    "classification": '{"label": "LABEL"} (or {"labels": [...]} for multi-label)',
    "ner": '{"entities": [{"start": INT, "end": INT, "label": "TYPE"}, ...]} (character offsets into input.text; [] for none)',
    "qa": '{"answer": "TEXT", "start": INT} (start: the answer\'s character offset in input.context; "" for no answer)',
}
INPUT_KEYS = {
    "classification": (("text",), ("text_pair",)),
    "ner": (("text",), ()),
    "qa": (("question", "context"), ()),
    "fill-mask": (("text",), ()),
    "generate": (("text",), ()),
}


class FeedbackStore:
    """The verdicts in one SQLite file (created with its schema when missing, unless `create` is False)."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        if not self.path.is_file():
            if not create:
                raise LmforgeError(f"--db {self.path}: no such file; give the file `lmforge serve --feedback DB` wrote")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LmforgeError(
                    f"{self.path}: feedback schema {version} was written by a newer lmforge (this one reads "
                    f"{SCHEMA_VERSION}); upgrade lmforge"
                )
            db.executescript(SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _connect(self):
        """A connection for one call: committed when the block ends, rolled back on an error, closed."""
        try:
            connection = sqlite3.connect(self.path, timeout=30.0)
            connection.execute("PRAGMA synchronous=NORMAL")  # per connection: fsync at checkpoints, not per verdict
        except sqlite3.DatabaseError as err:
            raise self._unreadable(err) from None
        try:
            with connection:
                yield connection
        except sqlite3.DatabaseError as err:
            if type(err) is not sqlite3.DatabaseError:  # a lock timeout, a full disk: not the user's file
                raise
            raise self._unreadable(err) from None
        finally:
            connection.close()

    def _unreadable(self, err: sqlite3.DatabaseError) -> LmforgeError:
        return LmforgeError(
            f"{self.path}: cannot be read as a feedback database ({err}); give the file `lmforge serve --feedback` wrote"
        )

    def add(
        self, task: str, model_hash: str, input: dict, prediction: dict, verdict: str, correction: Optional[dict]
    ) -> int:
        """Store one verdict; returns its id. Raises LmforgeError (one line: what to send) for a bad
        task, input, prediction, verdict or correction shape."""
        check_feedback(task, input, prediction, verdict, correction)
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        encoded = [json.dumps(v, ensure_ascii=False) for v in (input, prediction)]
        fix = json.dumps(correction, ensure_ascii=False) if correction is not None else None
        with self._connect() as db:
            cursor = db.execute(
                "INSERT INTO feedback (created, task, model_hash, input, prediction, verdict, correction) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (created, task, str(model_hash), *encoded, verdict, fix),
            )
            return int(cursor.lastrowid)

    def counts(self, model_hash: Optional[str] = None) -> dict[str, int]:
        """{"right": n, "wrong": m, "total": n + m}, of one model's rows or of all."""
        where, args = ("WHERE model_hash = ?", (model_hash,)) if model_hash is not None else ("", ())
        with self._connect() as db:
            found = dict(db.execute(f"SELECT verdict, COUNT(*) FROM feedback {where} GROUP BY verdict", args))
        right, wrong = found.get("right", 0), found.get("wrong", 0)
        return {"right": right, "wrong": wrong, "total": right + wrong}

    def rows(self, task: Optional[str] = None) -> list[dict]:
        """Every row (of one task), oldest first, with input, prediction and correction decoded."""
        where, args = ("WHERE task = ?", (task,)) if task is not None else ("", ())
        columns = ("id", "created", "task", "model_hash", "input", "prediction", "verdict", "correction")
        with self._connect() as db:
            found = db.execute(f"SELECT {', '.join(columns)} FROM feedback {where} ORDER BY id", args).fetchall()
        out = []
        for values in found:
            row = dict(zip(columns, values))
            for key in ("input", "prediction", "correction"):
                row[key] = json.loads(row[key]) if row[key] is not None else None
            out.append(row)
        return out

    def tasks(self) -> dict[str, int]:
        """Rows per task, in first-seen order."""
        with self._connect() as db:
            return dict(db.execute("SELECT task, COUNT(*) FROM feedback GROUP BY task ORDER BY MIN(id)"))


# --- validation ---------------------------------------------------------------------------------


def check_feedback(task: str, input: Any, prediction: Any, verdict: str, correction: Any) -> None:
    """LmforgeError, one line naming the field and the shape to send, unless the row can be stored
    (and, for classification, ner and qa, exported)."""
    if task not in TASK_NAMES:
        raise LmforgeError(f"feedback task {task!r} is not one of {', '.join(TASK_NAMES)}")
    check_input(task, input)
    if not isinstance(prediction, dict):
        raise LmforgeError(f"feedback prediction must be the JSON object the server returned, got {_kind(prediction)}")
    if verdict not in ("right", "wrong"):
        raise LmforgeError(f'feedback verdict {verdict!r} must be "right" or "wrong"')
    if correction is not None and not isinstance(correction, dict):
        raise LmforgeError(f"feedback correction must be a JSON object or null, got {_kind(correction)}")
    if task not in EXPORTABLE:
        return  # fill-mask / generate: a verdict, with whatever correction the client sends
    if verdict == "right":
        if correction is not None:
            raise LmforgeError('a "right" verdict takes no correction; send "correction": null')
        training_target(task, input, prediction, "prediction")  # a right row trains on its prediction
        return
    if correction is None:
        raise LmforgeError(f'a "wrong" {task} verdict needs a correction: send "correction": {SHAPES[task]}')
    target = training_target(task, input, correction, "correction", prediction)
    try:
        predicted = training_target(task, input, prediction, "prediction")
    except LmforgeError:
        return  # a prediction of another shape: nothing to compare the correction with
    if _same(target, predicted):
        raise LmforgeError(
            f'the correction is what the model predicted; send "verdict": "right", or correct it: {SHAPES[task]}'
        )


def _same(a: dict, b: dict) -> bool:
    """Whether two training targets say the same (entity order and extra fields aside)."""
    if "entities" in a:
        spans = lambda t: sorted((e["start"], e["end"], e["label"]) for e in t["entities"])  # noqa: E731
        return spans(a) == spans(b)
    if "labels" in a:
        return sorted(a["labels"]) == sorted(b["labels"])
    return (a.get("answer"), a.get("start")) == (b.get("answer"), b.get("start"))


def check_input(task: str, input: Any) -> None:
    required, optional = INPUT_KEYS[task]
    shape = "{" + ", ".join(f'"{k}": "..."' for k in required) + "}"
    shape += f" (optionally {', '.join(repr(k) for k in optional)})" if optional else ""
    if not isinstance(input, dict):
        raise LmforgeError(f"feedback input for {task} must be {shape}, got {_kind(input)}")
    unknown = sorted(set(input) - set(required) - set(optional))
    if unknown:
        raise LmforgeError(f"feedback input for {task}: unknown field '{unknown[0]}'; send {shape}")
    for key in required + optional:
        if (key in required or input.get(key) is not None) and not isinstance(input.get(key), str):
            found = "missing" if key not in input else f"{_kind(input[key])}, not a string"
            raise LmforgeError(f"feedback input for {task}: field '{key}' is {found}; send {shape}")


def training_target(task: str, input: dict, value: dict, field: str, prediction: Optional[dict] = None) -> dict:
    """What a row trains on, from its prediction (`field` "prediction") or its correction: {"labels":
    [...]} (classification), {"entities": [...]} (ner) or {"answer", "start"} (qa). LmforgeError
    naming `field` and the shape when `value` is not one."""
    if task == "classification":
        return _labels(value, field, prediction)
    if task == "ner":
        return {"entities": _entities(value, field, input["text"])}
    return _answer(value, field, input["context"])


def _labels(value: dict, field: str, prediction: Optional[dict]) -> dict:
    labels = value.get("labels") if "labels" in value else [value.get("label")]
    if isinstance(value.get("label"), (int, float)) and not isinstance(value.get("label"), bool):
        labels = [str(value["label"])]  # a numeric class name ("0", "1") sent as a number
    if not isinstance(labels, list) or not labels or not all(isinstance(v, str) and v.strip() for v in labels):
        raise LmforgeError(f"classification {field} needs a non-empty label: send {SHAPES['classification']}")
    if len(labels) > 1 and any("," in v for v in labels):
        raise LmforgeError(f"classification {field}: a multi-label label may not contain ','; rename the label")
    known = prediction.get("scores") if isinstance(prediction, dict) else None
    if isinstance(known, dict) and known:  # the prediction scored every label the model has
        unknown = [v for v in labels if v not in known]
        if unknown:
            raise LmforgeError(
                f"classification {field}: label '{unknown[0]}' is not one of the model's labels ({', '.join(map(str, known))})"
            )
    return {"labels": labels}


def _entities(value: dict, field: str, text: str) -> list[dict]:
    from lmforge.tasks.ner import words_with_offsets  # imports torch: only for ner rows

    entities = value.get("entities")
    if not isinstance(entities, list):
        raise LmforgeError(f"ner {field} needs an 'entities' list: send {SHAPES['ner']}")
    words = words_with_offsets(text)
    spans = []
    for i, entity in enumerate(entities):
        where = f"ner {field}: entity {i}"
        if not isinstance(entity, dict) or not all(_is_int(entity.get(k)) for k in ("start", "end")):
            raise LmforgeError(f"{where} needs integer 'start' and 'end'; send {SHAPES['ner']}")
        start, end, label = entity["start"], entity["end"], entity.get("label")
        if not isinstance(label, str) or not label or any(c.isspace() for c in label):
            raise LmforgeError(
                f"{where} needs a 'label' without spaces (an entity type like PER); send {SHAPES['ner']}"
            )
        if TAG_PREFIX.match(label):
            raise LmforgeError(
                f"{where}: label {label!r} is a tag; send the entity type ({label[2:]}), the tags are derived"
            )
        if not 0 <= start < end <= len(text):
            raise LmforgeError(
                f"{where} spans {start}..{end}, outside the text's {len(text)} characters; send offsets with 0 <= start < end <= {len(text)}"
            )
        if not any(s < end and e > start for _, s, e in words):
            raise LmforgeError(f"{where} ({start}..{end}) covers no word of the text; mark at least one word")
        spans.append({"start": start, "end": end, "label": label})
    ordered = sorted(spans, key=lambda e: e["start"])
    for before, after in zip(ordered, ordered[1:]):
        if after["start"] < before["end"]:
            raise LmforgeError(
                f"ner {field}: entities {before['start']}..{before['end']} and {after['start']}..{after['end']} overlap; send non-overlapping spans"
            )
    return spans


def _answer(value: dict, field: str, context: str) -> dict:
    answer, start = value.get("answer"), value.get("start")
    if not isinstance(answer, str):
        raise LmforgeError(f"qa {field} needs an 'answer' string: send {SHAPES['qa']}")
    if answer == "":
        return {"answer": "", "start": -1}  # the context does not answer the question (SQuAD v2's is_impossible)
    if not _is_int(start):
        raise LmforgeError(f"qa {field} needs an integer 'start': send {SHAPES['qa']}")
    if context[start : start + len(answer)] != answer or start < 0:
        found = context[max(start, 0) : max(start, 0) + len(answer)]
        raise LmforgeError(
            f"qa {field}: answer {answer!r} is not at character {start} of the context (found {found!r}); send the answer's start offset in input.context"
        )
    return {"answer": answer, "start": start}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return "null" if value is None else f"a {type(value).__name__}"


# --- export -------------------------------------------------------------------------------------


@dataclass
class FeedbackExportConfig:
    db: str = option("", "the feedback SQLite file `lmforge serve --feedback DB` wrote")
    out: str = option(
        "", "file to write, in the format `lmforge finetune` reads: .csv (classification), .conll (ner), .json (qa)"
    )
    task: Optional[ExportTask] = option(None, "the task whose feedback to export (default: the only one in the DB)")
    only_corrections: bool = option(
        False, "only the rows marked wrong, with their corrections (default: the confirmed right predictions too)"
    )


def export(
    db: str | Path, out: str | Path, task: Optional[str] = None, only_corrections: bool = False
) -> tuple[Path, int]:
    """Write one task's feedback as fine-tuning data at `out` (atomically); returns (out, examples).

    Raises LmforgeError for a missing or empty DB, several tasks and no `task`, a task finetune does
    not train, no rows to export, or an `out` whose extension names another format.
    """
    store = FeedbackStore(db, create=False)
    task = export_task(store, task)
    label, suffixes = FORMATS[task]
    out = Path(out)
    if out.suffix and out.suffix.lower() not in suffixes:
        raise LmforgeError(
            f"--out {out}: {task} feedback is written as {label}; name the file with {' or '.join(suffixes[:2])}, not {out.suffix}"
        )
    rows = [r for r in store.rows(task) if r["verdict"] == "wrong" or not only_corrections]
    writers = {"classification": classification_csv, "ner": ner_conll, "qa": squad_json}
    text, count = writers[task](rows, store.path)
    if count == 0:
        what = "corrections" if only_corrections else "rows"
        raise LmforgeError(
            f"{store.path}: no {task} {what} to export yet; send feedback through `lmforge serve --feedback {store.path}` first"
        )
    write_text_atomic(out, text)
    return out, count


def export_task(store: FeedbackStore, task: Optional[str]) -> str:
    """The task to export: the one asked for, or the only one finetune trains in the DB."""
    found = store.tasks()
    if not found:
        raise LmforgeError(
            f"{store.path}: no feedback in DB yet; mark predictions right or wrong on `lmforge serve --ui --feedback {store.path}`, then export"
        )
    if task is not None:
        if task not in EXPORTABLE:
            raise LmforgeError(
                f"--task {task}: feedback on {task} has no fine-tuning format; export {', '.join(EXPORTABLE)}"
            )
        if task not in found:
            raise LmforgeError(f"{store.path}: no {task} feedback (it holds {_listing(found)}); pick one with --task")
        return task
    trainable = [t for t in found if t in EXPORTABLE]
    if not trainable:
        raise LmforgeError(
            f"{store.path}: holds only {_listing(found)} feedback, which has no fine-tuning format; finetune trains {', '.join(EXPORTABLE)}"
        )
    if len(trainable) > 1:
        raise LmforgeError(
            f"{store.path}: holds feedback for several tasks ({_listing(found)}); choose one with --task"
        )
    return trainable[0]


def _listing(found: dict[str, int]) -> str:
    return ", ".join(f"{task} ({n})" for task, n in found.items())


def classification_csv(rows: list[dict], db: Path) -> tuple[str, int]:
    """`text,label` (and `text_pair` when a row has one); several labels joined with ','."""
    pairs = any(r["input"].get("text_pair") for r in rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["text", "text_pair", "label"] if pairs else ["text", "label"])
    for row in rows:
        labels = row_target("classification", row, db)["labels"]
        pair = [row["input"].get("text_pair") or ""] if pairs else []
        writer.writerow([row["input"]["text"], *pair, ",".join(labels)])
    return buffer.getvalue(), len(rows)


def ner_conll(rows: list[dict], db: Path) -> tuple[str, int]:
    """`WORD TAG` per line, a blank line after each sentence; a text without words is left out."""
    from lmforge.tasks.ner import spans_to_tags, words_with_offsets

    sentences = []
    for row in rows:
        words = words_with_offsets(row["input"]["text"])
        if not words:
            continue
        entities = row_target("ner", row, db)["entities"]
        tags = spans_to_tags(words, entities)
        sentences.append("".join(f"{word} {tag}\n" for (word, _, _), tag in zip(words, tags)))
    return "\n".join(sentences), len(sentences)


def squad_json(rows: list[dict], db: Path) -> tuple[str, int]:
    """SQuAD v1.1 JSON, one paragraph per distinct context; a "no answer" row is SQuAD v2's is_impossible."""
    paragraphs: dict[str, list[dict]] = {}
    for row in rows:
        answer = row_target("qa", row, db)
        qa: dict[str, Any] = {"id": f"feedback-{row['id']}", "question": row["input"]["question"]}
        if answer["answer"]:
            qa["answers"] = [{"text": answer["answer"], "answer_start": answer["start"]}]
        else:
            qa.update(answers=[], is_impossible=True)
        paragraphs.setdefault(row["input"]["context"], []).append(qa)
    data = [{"title": "feedback", "paragraphs": [{"context": c, "qas": q} for c, q in paragraphs.items()]}]
    return json.dumps({"version": "lmforge-feedback", "data": data}, ensure_ascii=False, indent=1) + "\n", len(rows)


def row_target(task: str, row: dict, db: Path) -> dict:
    """What a stored row trains on: its correction when wrong, else its prediction (checked again:
    the file may have been edited by hand)."""
    field = "correction" if row["verdict"] == "wrong" else "prediction"
    try:
        return training_target(task, row["input"], row[field] or {}, field)
    except LmforgeError as err:
        raise LmforgeError(f"{db}: feedback row {row['id']}: {err}; fix or delete that row") from None


def run(config: FeedbackExportConfig) -> Path:
    """`lmforge feedback export`: write the file and say what it holds."""
    if not config.db or not config.out:
        raise LmforgeError("give the feedback database and the file to write: --db FEEDBACK.db --out FILE")
    task = export_task(FeedbackStore(config.db, create=False), config.task)
    out, count = export(config.db, config.out, task, config.only_corrections)
    what = f"{count:,} corrections" if config.only_corrections else f"{count:,} examples"
    print(f"{what} -> {out} ({task} {FORMATS[task][0]})", flush=True)
    return out
