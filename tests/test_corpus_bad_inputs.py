"""`lmforge corpus` on broken inputs: each file fails alone, is listed in the report with why,
and everything else is kept; the run fails only when nothing usable remains."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from corpus_helpers import all_records, all_text, prose, run_corpus, write_pdf

from lmforge import cli
from lmforge.errors import LmforgeError


def good_file(folder: Path, seed: int = 1) -> Path:
    path = folder / f"good{seed}.txt"
    path.write_text(prose(seed))
    return path


def failure_for(report: dict, name: str) -> str:
    (failure,) = [f for f in report["failures"] if Path(f["path"]).name == name]
    return failure["error"]


def test_corrupt_and_encrypted_pdfs_fail_alone(tmp_path):
    good_file(tmp_path)
    valid = write_pdf(tmp_path / "valid.pdf", [[prose(2)[:80], prose(2)[80:160]]] * 1, footer=False)
    (tmp_path / "corrupt.pdf").write_bytes(valid.read_bytes()[:300] + b"garbage" * 50)
    write_pdf(tmp_path / "locked.pdf", [prose(3).split(". ")[:3]], encrypt_password="secret")
    _, records, report = run_corpus([tmp_path], tmp_path / "out", **{"filter.min_words": 5})
    assert "not a readable PDF" in failure_for(report, "corrupt.pdf")
    assert "encrypted with a password" in failure_for(report, "locked.pdf") and "qpdf --decrypt" in failure_for(
        report, "locked.pdf"
    )
    assert sorted(Path(r["source"]).name for r in all_records(records)) == ["good1.txt", "valid.pdf"]
    assert report["formats"]["pdf"]["failures"] == 2 and report["summary"]["files_failed"] == 2


def test_binary_file_named_txt_fails(tmp_path):
    good_file(tmp_path)
    (tmp_path / "image.txt").write_bytes(bytes(range(256)) * 40)
    _, records, report = run_corpus([tmp_path], tmp_path / "out")
    assert "binary data" in failure_for(report, "image.txt")
    assert [Path(r["source"]).name for r in all_records(records)] == ["good1.txt"]


def test_undecodable_bytes_are_replaced_and_counted_or_skip_the_file(tmp_path):
    text = prose(4)
    (tmp_path / "latin.txt").write_bytes(text.encode().replace(b"river", b"r\xe9ver", 1))
    _, records, report = run_corpus([tmp_path / "latin.txt"], tmp_path / "out")
    assert all_text(records) == text.replace("river", "r\ufffdver", 1)
    assert report["undecodable_chars_replaced"] == 1
    good_file(tmp_path)
    _, records, report = run_corpus([tmp_path], tmp_path / "out2", **{"extract.encoding_errors": "strict"})
    assert "offset" in failure_for(report, "latin.txt") and "not UTF-8" in failure_for(report, "latin.txt")
    assert [Path(r["source"]).name for r in all_records(records)] == ["good1.txt"]


def test_empty_folder_alone_is_an_error_naming_it_and_beside_others_a_listed_failure(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        LmforgeError,
        match=r"nothing usable remains: 1 input\(s\) failed \(first: .*empty: the folder holds no supported documents",
    ):
        run_corpus([tmp_path / "empty"], tmp_path / "out")
    assert not list((tmp_path / "out").glob("train-*.jsonl"))  # no half corpus left behind
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["status"] == "failed"
    good_file(tmp_path)
    _, records, report = run_corpus([tmp_path / "empty", tmp_path / "good1.txt"], tmp_path / "out2")
    assert "no supported documents" in failure_for(report, "empty") and len(all_records(records)) == 1


def test_jsonl_line_that_is_not_json_is_skipped_with_file_and_line(tmp_path):
    lines = [
        json.dumps({"text": prose(5)}),
        '{"text": "broken',
        json.dumps({"body": "no text field"}),
        json.dumps({"text": prose(6)}),
    ]
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    _, records, report = run_corpus([tmp_path / "docs.jsonl"], tmp_path / "out")
    assert sorted(r["text"] for r in all_records(records)) == sorted([prose(5), prose(6)])
    problems = report["record_problems"]
    assert problems["count"] == 2
    assert f"{tmp_path / 'docs.jsonl'}:2: not valid JSON" in problems["first"][0]
    assert f"{tmp_path / 'docs.jsonl'}:3: no string field 'text'" in problems["first"][1]


def test_jsonl_line_numbers_stay_right_across_chunks(tmp_path):
    lines = [json.dumps({"text": prose(100 + i)}) for i in range(40)]
    lines[33] = "not json at all"
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    _, records, report = run_corpus([tmp_path / "docs.jsonl"], tmp_path / "out", **{"extract.chunk_bytes": 2000})
    assert report["record_problems"]["first"][0].startswith(f"{tmp_path / 'docs.jsonl'}:34: not valid JSON")
    assert len(all_records(records)) == 39


def test_csv_without_the_named_column_fails_naming_the_columns(tmp_path):
    good_file(tmp_path)
    (tmp_path / "table.csv").write_text("id,body\n1,hello\n")
    _, records, report = run_corpus([tmp_path], tmp_path / "out")
    assert (
        failure_for(report, "table.csv")
        == "no column 'text' (columns: id, body); set extract.text_column to the column with the text"
    )
    assert len(all_records(records)) == 1


def test_gzip_that_ends_early_keeps_the_records_read_before(tmp_path):
    good_file(tmp_path)
    payload = "".join(json.dumps({"text": prose(200 + i)}) + "\n" for i in range(200)).encode()
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(payload)[:-2000])
    (tmp_path / "cut.txt.gz").write_bytes(gzip.compress(prose(7).encode() * 50)[:40])
    _, records, report = run_corpus([tmp_path], tmp_path / "out")
    assert "ends early" in failure_for(report, "cut.jsonl.gz") and "ends early" in failure_for(report, "cut.txt.gz")
    from_cut = [r for r in all_records(records) if r["source"].endswith("cut.jsonl.gz")]
    assert 100 < len(from_cut) < 200  # every complete line before the cut is kept
    assert sorted(r["meta"]["line"] for r in from_cut) == list(range(1, len(from_cut) + 1))


def test_nothing_usable_names_the_biggest_cause_and_the_fix(tmp_path):
    (tmp_path / "a.txt").write_text("Far too short.")
    with pytest.raises(
        LmforgeError, match=r"1 document\(s\) removed by filters, most by too_few_words \(1\): lower filter.min_words"
    ):
        run_corpus([tmp_path / "a.txt"], tmp_path / "out")


def test_cli_reports_bad_settings_and_missing_paths_in_one_line(tmp_path, capsys):
    assert cli.main(["corpus", "--data", str(tmp_path / "missing.pdf"), "--out", str(tmp_path / "out")]) == 2
    assert f"--data {tmp_path / 'missing.pdf'}: no such file or folder" in capsys.readouterr().err
    good_file(tmp_path)
    assert (
        cli.main(
            [
                "corpus",
                "--data",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
                "--snippets.enabled",
                "true",
                "--snippets.length_unit",
                "tokens",
            ]
        )
        == 2
    )
    assert "snippets.length_unit tokens needs snippets.tokenizer" in capsys.readouterr().err
