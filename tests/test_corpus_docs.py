"""`lmforge corpus` on documentation: code blocks and permalinks in HTML, Sphinx `_sources/` copies,
which copy of a page survives deduplication, running headers with page numbers in PDFs, and the
dropped.jsonl log of every document left out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from corpus_helpers import all_records, all_text, prose, run_corpus, sphinx_page, write_pdf

from lmforge.corpus.clean import Cleaner
from lmforge.corpus.config import CleanConfig

PYTHON_DOCS = Path("/usr/share/doc/python3.11/html")
CODE = """def all(iterable):
    for element in iterable:
        if not element:
            return False
    return True
>>> for w in words:
...     print(w, len(w))
..."""


def read_dropped(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "dropped.jsonl").read_text(encoding="utf-8").splitlines()]


def test_html_code_blocks_keep_lines_and_indentation_and_permalinks_are_dropped(tmp_path):
    (tmp_path / "functions.html").write_text(
        sphinx_page("Built-in Functions", [prose(1), prose(2)], CODE), encoding="utf-8"
    )
    _, records, _ = run_corpus([tmp_path / "functions.html"], tmp_path / "out")
    (record,) = all_records(records)
    text = record["text"]
    assert CODE in text  # every line, the indentation and the doctest prompts as written
    assert "¶" not in text
    assert (
        text.startswith("Built-in Functions\n") and "\n- all(iterable)\n" in text
    )  # no mark after the heading or term
    assert "NAVLINK" not in text and "BOILERPLATE" not in text


def test_cleaning_keeps_the_indentation_after_a_doctest_prompt():
    cleaner = Cleaner(CleanConfig())
    assert (
        cleaner(">>> for w in words:\n...     print(w,   len(w))\n") == ">>> for w in words:\n...     print(w, len(w))"
    )
    assert cleaner("    >>> if x:\n    ...     y  = 1") == "    >>> if x:\n    ...     y = 1"


def sphinx_tree(root: Path, with_orphan: bool = True) -> None:
    """root/library/functions.html and its Sphinx source copy root/_sources/library/functions.rst.txt
    (the same prose with reST markup), plus a source copy whose page is not there."""
    paragraphs = [prose(10, sentences=20), prose(11, sentences=20)]
    (root / "library").mkdir(parents=True)
    (root / "library" / "functions.html").write_text(
        sphinx_page("Built-in Functions", paragraphs, CODE), encoding="utf-8"
    )
    (root / "_sources" / "library").mkdir(parents=True)
    rst = (
        f"Built-in Functions\n==================\n\n{paragraphs[0]}\n\n{paragraphs[1]}\n\n.. function:: all(iterable)\n\n"
        f"   Return True if all elements of the *iterable* are true.  Equivalent to::\n\n"
        + "\n".join(f"      {line}" for line in CODE.splitlines())
    )
    (root / "_sources" / "library" / "functions.rst.txt").write_text(rst, encoding="utf-8")
    if with_orphan:
        (root / "_sources" / "orphan.rst.txt").write_text(prose(12), encoding="utf-8")


def test_sphinx_source_copy_of_a_rendered_page_is_left_out_and_logged(tmp_path):
    sphinx_tree(tmp_path / "html")
    folder, records, report = run_corpus([tmp_path / "html"], tmp_path / "out")
    assert sorted(Path(r["source"]).name for r in all_records(records)) == ["functions.html", "orphan.rst.txt"]
    copy = str(tmp_path / "html" / "_sources" / "library" / "functions.rst.txt")
    rendered = str(tmp_path / "html" / "library" / "functions.html")
    assert report["source_copies_skipped"] == {"count": 1, "first": [{"path": copy, "rendered": rendered}]}
    assert read_dropped(folder) == [{"source": copy, "position": None, "reason": "source_copy", "rendered": rendered}]
    assert report["dropped"]["by_reason"] == {"source_copy": 1}
    assert "Sphinx source copies" in (folder / "report.html").read_text()


def test_rendered_page_wins_over_its_source_in_a_near_duplicate_cluster(tmp_path):
    # With the source copy read (its path sorts first: "_sources" < "library"), deduplication
    # keeps one of the two; it must be the HTML page, and report.json says how it chooses.
    sphinx_tree(tmp_path / "html", with_orphan=False)
    folder, records, report = run_corpus([tmp_path / "html"], tmp_path / "out", **{"extract.skip_source_copies": False})
    (record,) = all_records(records)
    assert Path(record["source"]).name == "functions.html"
    (cluster,) = report["dedup"]["largest_clusters"]
    assert cluster["kept_source"].endswith("functions.html") and cluster["members"][0]["source"].endswith(
        "functions.rst.txt"
    )
    assert "rendered formats (HTML, PDF, DOCX) before the others" in report["dedup"]["kept_in_cluster"]
    (dropped,) = read_dropped(folder)
    assert dropped["reason"] == "near_duplicate" and dropped["duplicate_of"]["doc_id"] == record["doc_id"]


def test_doc_ids_and_splits_do_not_depend_on_the_input_order(tmp_path):
    (tmp_path / "a.txt").write_text(prose(20, sentences=30))
    (tmp_path / "b.html").write_text(sphinx_page("Notes", [prose(21, sentences=30)], CODE), encoding="utf-8")
    (tmp_path / "c.md").write_text(prose(22, sentences=30))
    splits = {"split.valid_fraction": 0.34, "split.test_fraction": 0.33}
    outcomes = []
    for number, order in enumerate((["a.txt", "b.html", "c.md"], ["c.md", "b.html", "a.txt"])):
        _, records, _ = run_corpus([tmp_path / name for name in order], tmp_path / f"out{number}", **splits)
        outcomes.append({(r["doc_id"], Path(r["source"]).name, split) for split in records for r in records[split]})
    assert outcomes[0] == outcomes[1] and len(outcomes[0]) == 3


def test_pdf_book_headers_alternate_and_carry_the_page_number(tmp_path):
    # The layout of a Texinfo manual (libtasn1.pdf in Debian, for one): the page number alone at
    # the top of even pages and of a chapter's first page, "Chapter N: Title   page" at the top of
    # odd ones. Each kind is on half the pages or fewer, so counting repeats over all pages kept them.
    def header(page: int) -> str:
        if page == 1 or page % 2 == 0:
            return str(page)
        return f"Chapter 1: Farming the valley   {page}"

    pages = [
        (["1 Introduction"] if page == 0 else []) + [prose(30 + page, sentences=1), prose(40 + page, sentences=1)]
        for page in range(8)
    ]
    pdf = write_pdf(tmp_path / "manual.pdf", pages, header=header, footer=False)
    _, records, report = run_corpus([pdf], tmp_path / "out", **{"filter.min_words": 10})
    lines = all_text(records).splitlines()
    assert not [line for line in lines if "Chapter 1" in line or line.strip().isdigit()]
    assert lines[0] == "1 Introduction"  # the chapter title under the page number "1" stays
    assert report["pdf_running_lines_removed"] == 8
    for page in range(8):
        assert prose(30 + page, sentences=1)[:40] in all_text(records)


def test_dropped_log_names_every_dropped_document_and_why(tmp_path):
    base = prose(50, sentences=20)
    (tmp_path / "a.txt").write_text(base)
    (tmp_path / "b.txt").write_text(base.upper())  # exact duplicate after normalisation
    words = base.split()
    words[10] = words[40] = "lighthouse"
    (tmp_path / "c.txt").write_text(" ".join(words))  # near duplicate
    (tmp_path / "d.txt").write_text("Too short to keep.")
    (tmp_path / "e.pdf").write_bytes(b"%PDF-1.4 not really a pdf")
    (tmp_path / "f.jsonl").write_text(json.dumps({"text": prose(51)}) + "\n{broken\n")
    folder, records, report = run_corpus([tmp_path], tmp_path / "out")
    kept = {Path(r["source"]).name: r for r in all_records(records)}
    assert sorted(kept) == ["a.txt", "f.jsonl"]
    dropped = {Path(d["source"]).name: d for d in read_dropped(folder)}
    assert sorted(dropped) == ["b.txt", "c.txt", "d.txt", "e.pdf", "f.jsonl"]
    kept_a = {"doc_id": kept["a.txt"]["doc_id"], "source": kept["a.txt"]["source"], "position": "0.0"}
    assert dropped["b.txt"]["reason"] == "exact_duplicate" and dropped["b.txt"]["duplicate_of"] == kept_a
    assert dropped["b.txt"]["similarity"] == 1.0 and dropped["b.txt"]["position"] == "0.0"
    assert dropped["c.txt"]["reason"] == "near_duplicate" and dropped["c.txt"]["duplicate_of"] == kept_a
    assert 0.8 <= dropped["c.txt"]["similarity"] < 1
    assert dropped["d.txt"] | {"doc_id": None} == {
        "source": str(tmp_path / "d.txt"),
        "position": "0.0",
        "doc_id": None,
        "reason": "filter",
        "filter": "too_few_words",
        "chars": 18,
        "words": 4,
    }
    assert dropped["e.pdf"]["reason"] == "extraction_failed" and "not a readable PDF" in dropped["e.pdf"]["error"]
    assert dropped["f.jsonl"]["reason"] == "unreadable_record" and dropped["f.jsonl"]["position"] == "line2"
    assert dropped["f.jsonl"]["error"].startswith(f"{tmp_path / 'f.jsonl'}:2: not valid JSON")
    assert report["dropped"] == {
        "log": "dropped.jsonl",
        "by_reason": {
            "exact_duplicate": 1,
            "extraction_failed": 1,
            "filter": 1,
            "near_duplicate": 1,
            "unreadable_record": 1,
        },
    }
    manifest = json.loads((folder / "manifest.json").read_text())
    assert "dropped.jsonl" in manifest["report"]


@pytest.mark.skipif(
    not (PYTHON_DOCS / "library" / "functions.html").is_file(),
    reason="the Python 3.11 HTML docs are not installed (apt-get install -y python3.11-doc)",
)
def test_real_python_docs_page_and_its_source_copy(tmp_path):
    page = PYTHON_DOCS / "library" / "functions.html"
    copy = PYTHON_DOCS / "_sources" / "library" / "functions.rst.txt"
    folder, records, report = run_corpus([page, copy], tmp_path / "out")
    (record,) = all_records(records)
    text = record["text"]
    assert record["source"] == str(page) and report["source_copies_skipped"]["count"] == 1
    assert "def all(iterable):\n    for element in iterable:\n        if not element:\n            return False" in text
    assert ">>> bin(3)\n'0b11'\n" in text
    assert "¶" not in text
