"""Task parsing of labelled data: CSV/TSV/JSONL tables (read by documents.read), CoNLL column files, SQuAD JSON.

Every record keeps the line it came from, so a bad label or a malformed line is reported as
`file:line`. Label maps are built from the train split only; a label seen first at eval time
is an error (a silently added class would have an untrained output).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

from lmforge import documents
from lmforge.config import option
from lmforge.errors import LmforgeError

TEXT_NAMES = ("sentence", "text", "sentence1", "text_a")
PAIR_NAMES = ("sentence2", "text_pair", "text_b")
LABEL_NAMES = ("label", "labels")


class FileInputOnly:
    """Part of the tasks whose examples need structure that a plain text lacks (words with tags; a
    question with its context): predict reads them from files only, and carries no extra columns
    (the rows hold the words, or the question id, already)."""

    file_hint: ClassVar[str]  # what the model does and which file to give, e.g. "tags words (ner): give a CoNLL file"

    @classmethod
    def text_examples(cls, texts: list[tuple[str, str]]) -> list:
        raise LmforgeError(f"--text is for classification models; this model {cls.file_hint} with --input")

    @staticmethod
    def carried_columns(examples: list) -> None:
        return None


@dataclass
class FormatConfig:
    text: Optional[str] = option(
        None, "text column: a name, or a 0-based index when the file has no header (default: sentence/text/sentence1)"
    )
    text_pair: Optional[str] = option(
        None, "second text column for sentence pairs (default: sentence2/text_pair if present)"
    )
    label: Optional[str] = option(None, "label column (default: label)")
    header: bool = option(True, "CSV/TSV: the first row names the columns (CoLA's files have none: use indices)")
    quoting: bool = option(
        True, "CSV/TSV: honour double quotes (GLUE's RTE and MRPC need false: their text has stray quotes)"
    )
    label_kind: Literal["auto", "single", "multi", "regression"] = option(
        "auto",
        "classification labels: one class, several classes (list or separated string), or a number (regression); auto decides from the train labels",
    )
    label_separator: str = option(",", "multi-label labels given as a string are split on this")
    tag_column: int = option(-1, "CoNLL: which column holds the tag (-1: the last)")
    scheme: Literal["iob1", "iob2", "bioes"] = option(
        "iob2", "CoNLL tag scheme of the files; tags are converted to IOB2 (B-/I-) for training and scoring"
    )
    max_length: Optional[int] = option(
        None, "tokens per sequence (default 128; qa 384); longer inputs are truncated, QA contexts split into windows"
    )
    doc_stride: int = option(128, "QA: tokens of overlap between consecutive windows of a long context")
    no_answer_threshold: Optional[float] = option(
        None,
        'QA with unanswerable questions (SQuAD v2): answer "" when the null score beats the best span by more than this (default 0, or the value saved with the model)',
    )
    limit: Optional[int] = option(None, "use only the first N train examples (a documented subset for quick runs)")


@dataclass
class Record:
    """One table row: texts, raw label, where it came from, and its other columns (ids and the
    like, which predict copies into its output rows)."""

    text: str
    text_pair: Optional[str]
    label: Any
    where: str
    columns: dict = field(default_factory=dict)


@dataclass
class Sentence:
    """One CoNLL sentence: words and their IOB2 tags, and the line it starts on."""

    words: list[str]
    tags: list[str]
    where: str


@dataclass
class Question:
    """One SQuAD question with its context and answers (character offsets into the context)."""

    id: str
    question: str
    context: str
    answers: list[dict]
    where: str
    title: str = ""


def _check_file(path: str | Path, role: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"{path}: {role} file not found; pass an existing file to --{role}")
    return path


def _empty(path: Path, role: str) -> LmforgeError:
    return LmforgeError(f"{path}: the {role} split has no examples; give a file with at least one labelled example")


# --- tables -------------------------------------------------------------------------------------


def read_rows(path: Path, cfg: FormatConfig) -> tuple[list[str], list[tuple[int, Any]]]:
    """(column names, [(line, row)]) of a CSV/TSV (rows are lists) or JSONL file (rows are dicts),
    read with documents.read (a .gz of any of them too)."""
    name = path.name.lower().removesuffix(".gz")
    fmt = "jsonl" if name.endswith((".jsonl", ".json")) else "tsv" if name.endswith((".tsv", ".tab")) else "csv"
    part = documents.whole(path, fmt)
    try:
        if fmt == "jsonl":
            rows = []
            for number, row in documents.jsonl_values(part, "strict", documents.ReadLog(), problems=False):
                if not isinstance(row, dict):
                    raise LmforgeError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
                rows.append((number, row))
            names = list(rows[0][1]) if rows else []
            return names, rows
        # a BOM (MRPC's files have one) is dropped, not stuck to the first column name
        rows = list(documents.table_rows(part, "strict", documents.ReadLog(), cfg.quoting))
    except documents.ReadError as err:
        raise LmforgeError(str(err) if str(err).startswith(str(path)) else f"{path}: {err}") from None
    except csv.Error as err:
        raise LmforgeError(
            f"{path}: not valid {fmt.upper()} ({err}); fix the quoting, or set --format.quoting false"
        ) from None
    if cfg.header and rows:
        names = [name.strip() for name in rows[0][1]]
        return names, rows[1:]
    width = max((len(r) for _, r in rows), default=0)
    return [str(i) for i in range(width)], rows


def _pick(
    names: list[str], wanted: Optional[str], candidates: tuple[str, ...], flag: str, path: Path, required: bool
) -> Optional[str]:
    """The column to use: the one asked for, or the single candidate name present."""
    if wanted is not None:
        if wanted not in names:
            raise LmforgeError(
                f"{path}: no column '{wanted}' (columns: {', '.join(names) or 'none'}); fix --format.{flag}"
            )
        return wanted
    found = [c for c in candidates if c in names]
    if len(found) > 1:
        raise LmforgeError(
            f"{path}: columns {', '.join(found)} could each be the {flag} column; choose one with --format.{flag}"
        )
    if not found and required:
        raise LmforgeError(
            f"{path}: no {flag} column (looked for {', '.join(candidates)}; columns: {', '.join(names) or 'none'}); name it with --format.{flag}"
        )
    return found[0] if found else None


def read_table(path: str | Path, cfg: FormatConfig, role: str = "train", labelled: bool = True) -> list[Record]:
    """Records of a CSV/TSV/JSONL file with the configured (or guessed) columns (`labelled`: a label column is required)."""
    path = _check_file(path, role)
    names, rows = read_rows(path, cfg)
    if not rows:
        raise _empty(path, role)
    text = _pick(names, cfg.text, TEXT_NAMES, "text", path, True)
    pair = _pick(names, cfg.text_pair, PAIR_NAMES, "text_pair", path, False)
    if pair == text:
        pair = None
    label = _pick(names, cfg.label, LABEL_NAMES, "label", path, labelled)
    index = {name: i for i, name in enumerate(names)}

    def record(numbered_row) -> Record:
        line, row = numbered_row
        get = row.get if isinstance(row, dict) else (lambda key, r=row: r[index[key]] if index[key] < len(r) else None)
        values = [get(text), get(pair) if pair else "", get(label) if label else ""]
        if any(v is None for v in values):
            missing = [n for n, v in zip((text, pair, label), values) if v is None]
            raise LmforgeError(
                f"{path}:{line}: no value for column '{missing[0]}' (the row has {len(row)} fields); fix the row, or set --format.quoting false if quotes in the text swallow tabs"
            )
        columns = row if isinstance(row, dict) else dict(zip(names, row))
        others = {k: v for k, v in columns.items() if k not in (text, pair)}
        return Record(
            str(values[0]), str(values[1]) if pair else None, values[2] if label else None, f"{path}:{line}", others
        )

    return each_or_all_problems(rows, record)


# --- label maps ---------------------------------------------------------------------------------


def label_kind(records: list[Record], cfg: FormatConfig) -> str:
    """single, multi or regression: as configured, or from the train labels."""
    if cfg.label_kind != "auto":
        return cfg.label_kind
    labels = [r.label for r in records]
    if any(isinstance(v, list) for v in labels):
        return "multi"
    try:
        numbers = [float(v) for v in labels]
    except (TypeError, ValueError):
        return "single"
    return "single" if all(n.is_integer() for n in numbers) else "regression"


def split_labels(value: Any, separator: str) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return [part.strip() for part in str(value).split(separator) if part.strip()]


def _sort_key(label: str):
    # numeric labels in numeric order (0, 1, 2, 10), others alphabetically
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)


def build_label_map(labels) -> list[str]:
    """The sorted distinct labels: index i is class i (config.json's id2label)."""
    return sorted({_label_text(v) for v in labels}, key=_sort_key)


def _label_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def each_or_all_problems(items, convert, shown: int = 3) -> list:
    """`convert` applied to every item; when some fail, one error with all of them (the first few in
    full, then a count), so a file with five bad labels takes one fix, not five runs."""
    results, problems = [], []
    for item in items:
        try:
            results.append(convert(item))
        except LmforgeError as err:
            problems.append(str(err))
    if len(problems) == 1:
        raise LmforgeError(problems[0])
    if problems:
        more = f"; and {len(problems) - shown} more" if len(problems) > shown else ""
        raise LmforgeError(f"{len(problems)} problems: " + "; ".join(problems[:shown]) + more)
    return results


def label_id(value: Any, label2id: dict[str, int], where: str) -> int:
    """The class id of a raw label; an unseen label is an error naming the file and line."""
    key = _label_text(value)
    if key not in label2id:
        raise LmforgeError(
            f"{where}: label '{key}' does not occur in the training data (known: {', '.join(list(label2id)[:12])}); fix the label or add training examples of it"
        )
    return label2id[key]


def regression_value(value: Any, where: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise LmforgeError(
            f"{where}: label '{value}' is not a number, but this is a regression task; fix the label or set --format.label_kind"
        ) from None


# --- CoNLL --------------------------------------------------------------------------------------


def to_iob2(tags: list[str], scheme: str) -> list[str]:
    """Convert IOB1 or BIOES tags to IOB2 (every entity starts with B-)."""
    out = []
    for tag in tags:
        prefix, _, kind = tag.partition("-")
        if tag == "O" or not kind:
            out.append("O" if tag == "O" else tag)
            continue
        if scheme == "bioes":
            prefix = {"S": "B", "E": "I"}.get(prefix, prefix)
        elif scheme == "iob1" and prefix == "I":
            previous = out[-1] if out else "O"
            if previous == "O" or previous[2:] != kind:
                prefix = "B"
        out.append(f"{prefix}-{kind}")
    return out


_TAG = re.compile(r"^(O|[BIESLU][-_].+)$")


def looks_like_conll(path: str | Path, lines: int = 50) -> bool:
    """Whether a .txt file is CoNLL columns (word ... tag) rather than prose: its first `lines`
    non-blank lines all have the same 2+ columns, ending in a tag (O, B-X, I-X, ...)."""
    widths, seen = set(), 0
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        for line in handle:
            fields = line.split()
            if not fields or fields[0] == "-DOCSTART-":
                continue
            if len(fields) < 2 or not _TAG.match(fields[-1]):
                return False
            widths.add(len(fields))
            seen += 1
            if seen >= lines:
                break
    return seen > 0 and len(widths) == 1


def read_conll(path: str | Path, cfg: FormatConfig, role: str = "train", labelled: bool = True) -> list[Sentence]:
    """Sentences of a CoNLL column file (blank lines between sentences, -DOCSTART- skipped).

    Unlabelled files (`labelled=False`, for prediction) may hold the words alone.
    """
    path = _check_file(path, role)
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    width, start = None, 0

    def close() -> None:
        if words:
            sentences.append(Sentence(list(words), to_iob2(tags, cfg.scheme), f"{path}:{start}"))
            words.clear()
            tags.clear()

    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.split()
            if not fields:
                close()
                continue
            if fields[0] == "-DOCSTART-":
                close()
                continue
            if width is None:
                width = len(fields)
                if width < 2 and labelled:
                    raise LmforgeError(
                        f"{path}:{number}: a CoNLL line needs at least a word and a tag column, got 1 field; use one token per line, 'word ... tag'"
                    )
                tag_index = cfg.tag_column if cfg.tag_column >= 0 else width + cfg.tag_column
                if width > 1 and not 1 <= tag_index < width:  # column 0 is the word
                    raise LmforgeError(
                        f"{path}:{number}: --format.tag_column {cfg.tag_column} is not a tag column of this {width}-column file; "
                        f"pick 1..{width - 1}, or -1 for the last"
                    )
            elif len(fields) != width:
                raise LmforgeError(
                    f"{path}:{number}: {len(fields)} columns where the file's first line has {width}; every token line needs the same columns"
                )
            if not words:
                start = number
            words.append(fields[0])
            tags.append(fields[cfg.tag_column] if width > 1 else "O")
    close()
    if not sentences:
        raise _empty(path, role)
    return sentences


# --- SQuAD --------------------------------------------------------------------------------------


def _field(record, name: str, kind, where: str):
    """`record[name]`, or an error naming the record and the missing or mistyped field."""
    value = record.get(name) if isinstance(record, dict) else None
    if value is None or isinstance(value, bool) or not isinstance(value, kind):
        found = "missing" if value is None else f"a {type(value).__name__}"
        raise LmforgeError(f"{where}: field '{name}' is {found}; SQuAD JSON needs it (see the SQuAD v1.1/v2 format)")
    return value


def read_squad(path: str | Path, role: str = "train", labelled: bool = True) -> list[Question]:
    """Questions of a SQuAD v1.1/v2 JSON file; every answer's text must sit at its offset."""
    path = _check_file(path, role)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise LmforgeError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); QA data must be SQuAD JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise LmforgeError(f'{path}: not SQuAD JSON (expected {{"data": [{{"paragraphs": ...}}]}})')
    questions = []
    for a, article in enumerate(data["data"]):
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            context = _field(paragraph, "context", str, f"{path}: data[{a}].paragraphs[{p}]")
            for qa in paragraph.get("qas", []):
                where = f"{path}: question {qa.get('id')}"
                _field(qa, "id", (str, int), f"{path}: data[{a}].paragraphs[{p}] question")
                _field(qa, "question", str, where)
                if labelled and not qa.get("is_impossible") and "answers" not in qa:
                    # it trained as unanswerable: only SQuAD v2's is_impossible questions may have no answer
                    raise LmforgeError(
                        f"{where}: no 'answers' field; give its answers, or mark it \"is_impossible\": true (SQuAD v2) if the context does not answer it"
                    )
                answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                for answer in answers:
                    start, text = (
                        _field(answer, "answer_start", int, f"{where} answer"),
                        _field(answer, "text", str, f"{where} answer"),
                    )
                    if context[start : start + len(text)] != text:
                        raise LmforgeError(
                            f"{where}: answer '{text}' is not at character {start} of its context (found '{context[start : start + len(text)]}'); fix answer_start"
                        )
                questions.append(
                    Question(str(qa["id"]), qa["question"], context, answers, where, article.get("title", ""))
                )
    if not questions:
        raise _empty(path, role)
    return questions
