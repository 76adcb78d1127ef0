"""`lmforge corpus` on big CSV/TSV and .gz files: read once, in order, by the main process and
handed to the workers in units of about `extract.chunk_bytes`, so memory stays bounded and both
cores share one big file; the corpus is the one a whole-file read gives."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
from pathlib import Path

from corpus_helpers import all_records, prose, run_corpus

from lmforge import config as config_mod
from lmforge.corpus import CorpusConfig
from lmforge.corpus.extract import read_documents
from lmforge.corpus.pipeline import KeptDocument, UnitWorker, work_units
from lmforge.corpus.units import content_size, plan_units, resolve_inputs, unit_target
from lmforge.documents import FilePart, ReadLog

CHUNK = 20_000


def csv_rows(count: int) -> list[dict]:
    """Rows whose text has commas, doubled quotes and, every third row, quoted blank lines."""
    rows = []
    for i in range(count):
        text = prose(600 + i % 150, sentences=6)  # rows 150 and on repeat earlier ones: exact duplicates
        if i % 3 == 0:
            text = text.replace(". ", ".\n\n", 2)
        if i % 5 == 0:
            text = 'He said "stop", then ' + text
        rows.append({"id": str(i), "text": text})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "text"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def last_line_of_each_row(path: Path) -> list[int]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        return [reader.line_num for _ in reader]


def shards(folder: Path) -> list[bytes]:
    return [(folder / f"{split}-00000.jsonl").read_bytes() for split in ("train", "valid", "test")]


def test_big_csv_with_quoted_newlines_is_shared_by_two_workers_and_read_exactly(tmp_path):
    rows = csv_rows(200)
    path = write_csv(tmp_path / "table.csv", rows)
    assert path.stat().st_size > 5 * CHUNK
    settings = {"extract.chunk_bytes": CHUNK, "extract.metadata_fields": ["id"]}
    one, _, report_one = run_corpus([path], tmp_path / "one", workers=1, **settings)
    two, records, report_two = run_corpus([path], tmp_path / "two", workers=2, **settings)
    assert report_two["summary"]["workers"] == 2  # one file, yet both cores: it was cut into units
    assert shards(one) == shards(two)
    assert report_one["dedup"] == report_two["dedup"] and report_two["dedup"]["exact_removed"] == 50
    kept = sorted(all_records(records), key=lambda r: int(r["meta"]["id"]))
    assert [r["text"] for r in kept] == [row["text"] for row in rows[:150]]  # quoted newlines inside the text
    line_of = last_line_of_each_row(path)
    assert [r["meta"]["line"] for r in kept] == line_of[:150]
    doc_id = hashlib.blake2b(f"{path}\0row{line_of[0]}".encode(), digest_size=8).hexdigest()
    assert kept[0]["doc_id"] == doc_id  # ids as a whole-file read gives them
    summary = report_two["summary"]
    assert summary["files_in"] == 1 and summary["bytes_in"] == path.stat().st_size and summary["documents_in"] == 200


def test_big_jsonl_gz_is_shared_by_two_workers_with_the_same_corpus_as_one(tmp_path):
    lines = [json.dumps({"text": prose(700 + i % 120, sentences=6)}) for i in range(160)]
    (tmp_path / "docs.jsonl.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    outputs = []
    for workers in (1, 2):
        folder, records, report = run_corpus(
            [tmp_path / "docs.jsonl.gz"], tmp_path / f"out{workers}", workers=workers, **{"extract.chunk_bytes": CHUNK}
        )
        assert report["summary"]["workers"] == workers and report["dedup"]["exact_removed"] == 40
        assert report["summary"]["bytes_in"] == (tmp_path / "docs.jsonl.gz").stat().st_size
        outputs.append(shards(folder))
    assert outputs[0] == outputs[1]
    assert sorted(r["meta"]["line"] for r in all_records(records)) == list(range(1, 121))


def stage_config(tmp_path: Path, **values) -> CorpusConfig:
    return config_mod.resolve(
        CorpusConfig, None, {"data": [str(tmp_path / "in")], "out": str(tmp_path / "out"), **values}
    )


def test_no_work_unit_carries_more_than_about_chunk_bytes_of_documents(tmp_path):
    # What a worker holds and sends back at once is one unit: before, a .csv or .gz was one unit
    # whatever its size (1 GB of input: all its documents in one list, pickled whole).
    (tmp_path / "in").mkdir()
    write_csv(tmp_path / "in" / "table.csv", csv_rows(150))
    lines = [json.dumps({"text": prose(800 + i, sentences=6)}) for i in range(150)]
    (tmp_path / "in" / "docs.jsonl.gz").write_bytes(gzip.compress("\n".join(lines).encode()))
    (tmp_path / "in" / "notes.txt.gz").write_bytes(
        gzip.compress("\n\n".join(prose(900 + i) for i in range(100)).encode())
    )
    config = stage_config(
        tmp_path, **{"extract.chunk_bytes": CHUNK, "extract.max_document_chars": 5000, "dedup.near": False}
    )
    files = resolve_inputs(config.data, config.out).files
    assert all(content_size(f) > CHUNK for f in files) and any(f.size < CHUNK for f in files)  # gzip: 5x smaller
    whole_file = sum(len(list(read_documents(FilePart(f), config.extract, ReadLog()))) for f in files)
    worker = UnitWorker(config)
    documents, largest = 0, 0
    for unit in work_units(plan_units(files, CHUNK, 1), config.extract, unit_target(files, CHUNK, 1)):
        handed_back, tally = worker.process(unit)
        largest = max(largest, sum(len(d.payload) for d in handed_back if isinstance(d, KeptDocument)))
        documents += tally.counts["documents_in"]
    assert documents == whole_file > 300
    assert largest < 2 * CHUNK  # the target, the document that crossed it, and ~250 bytes of JSON per record


def test_streamed_gzip_that_ends_early_keeps_every_complete_line_and_logs_the_failure(tmp_path):
    payload = "".join(json.dumps({"text": prose(1000 + i)}) + "\n" for i in range(300)).encode()
    compressed = gzip.compress(payload)
    (tmp_path / "cut.jsonl.gz").write_bytes(compressed[: len(compressed) * 3 // 4])
    folder, records, report = run_corpus(
        [tmp_path / "cut.jsonl.gz"], tmp_path / "out", workers=2, **{"extract.chunk_bytes": CHUNK}
    )
    (failure,) = report["failures"]
    assert "ends early" in failure["error"] and failure["path"] == str(tmp_path / "cut.jsonl.gz")
    lines = sorted(r["meta"]["line"] for r in all_records(records))
    assert 150 < len(lines) < 300 and lines == list(range(1, len(lines) + 1))
    dropped = [json.loads(line) for line in (folder / "dropped.jsonl").read_text().splitlines()]
    assert [d["reason"] for d in dropped] == ["extraction_failed"]


def test_big_tsv_without_the_named_column_fails_naming_the_columns(tmp_path):
    (tmp_path / "good.txt").write_text(prose(1))
    body = "".join(f"{i}\t{prose(i)}\n" for i in range(60))
    (tmp_path / "table.tsv").write_text("id\tbody\n" + body)
    _, records, report = run_corpus([tmp_path], tmp_path / "out", **{"extract.chunk_bytes": CHUNK})
    (failure,) = report["failures"]
    assert (
        failure["error"] == "no column 'text' (columns: id, body); set extract.text_column to the column with the text"
    )
    assert [Path(r["source"]).name for r in all_records(records)] == ["good.txt"]
