import json
from pathlib import Path

import pytest

from lmforge import documents
from lmforge.documents import ReadConfig, SplitConfig
from lmforge.errors import LmforgeError


def test_missing_path_is_named(tmp_path):
    with pytest.raises(LmforgeError, match=r"nope\.txt: no such file or folder"):
        documents.resolve_sources([tmp_path / "nope.txt"])


def test_folder_without_text_is_named(tmp_path):
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(LmforgeError, match=r"holds no text files"):
        documents.resolve_sources([tmp_path])


def test_empty_files_are_rejected(tmp_path):
    (tmp_path / "a.txt").write_text("")
    with pytest.raises(LmforgeError, match=r"every input file is empty .*a\.txt"):
        documents.resolve_sources([tmp_path / "a.txt"])


def test_glob_and_folder_recursion(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("# title\n")
    (tmp_path / "a.txt").write_text("hello\n")
    assert [s.path.name for s in documents.resolve_sources([tmp_path])] == ["a.txt", "b.md"]
    assert [s.path.name for s in documents.resolve_sources([str(tmp_path / "*.txt")])] == ["a.txt"]
    with pytest.raises(LmforgeError, match="matches no file"):
        documents.resolve_sources([str(tmp_path / "*.csv")])


def test_non_utf8_names_file_and_byte_offset(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(b"hello world\ncaf\xe9 au lait\n")
    sources = documents.resolve_sources([path])
    with pytest.raises(LmforgeError, match=r"latin\.txt: bytes at offset 15 are not UTF-8.*encoding_errors: replace"):
        list(documents.iter_split(sources, "train", SplitConfig(valid_fraction=0.0)))
    stats = documents.DecodeStats()
    text = "".join(
        t
        for t, _ in documents.iter_split(
            sources, "train", SplitConfig(valid_fraction=0.0), ReadConfig(encoding_errors="replace"), stats=stats
        )
    )
    assert text == "hello world\ncaf\ufffd au lait\n" and stats.total == 1


def test_blocks_stream_a_large_file_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(documents.read, "BLOCK_BYTES", 64)
    lines = [f"line {i} ünïcode\n" for i in range(200)]
    path = tmp_path / "big.txt"
    path.write_text("".join(lines), encoding="utf-8")
    blocks = list(documents.read_text_blocks(path))
    assert len(blocks) > 10 and "".join(blocks) == "".join(lines)
    assert all(b.endswith("\n") for b in blocks)


def test_tail_split_is_in_order_and_disjoint(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("".join(f"{i}\n" for i in range(1000)))
    sources = documents.resolve_sources([path])
    train = "".join(t for t, _ in documents.iter_split(sources, "train", SplitConfig(valid_fraction=0.1)))
    valid = "".join(t for t, _ in documents.iter_split(sources, "valid", SplitConfig(valid_fraction=0.1)))
    assert train + valid == path.read_text()
    assert 0.08 < len(valid) / len(path.read_text()) < 0.12


def test_jsonl_documents_split_by_document_and_bad_line_named(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(200)))
    sources = documents.resolve_sources([path])
    train = [t for t, _ in documents.iter_split(sources, "train", SplitConfig(valid_fraction=0.2))]
    valid = [t for t, _ in documents.iter_split(sources, "valid", SplitConfig(valid_fraction=0.2))]
    assert len(train) + len(valid) == 200 and not set(train) & set(valid) and 20 < len(valid) < 60
    path.write_text('{"text": "ok"}\n{not json}\n')
    with pytest.raises(LmforgeError, match=r"docs\.jsonl:2: not valid JSON"):
        list(documents.iter_split(documents.resolve_sources([path]), "train", SplitConfig(valid_fraction=0.0)))


def test_corpus_folder_keeps_its_splits(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"stage": "corpus"}))
    (tmp_path / "train-00000.jsonl").write_text(json.dumps({"text": "train doc"}) + "\n")
    (tmp_path / "valid-00000.jsonl").write_text(json.dumps({"text": "valid doc"}) + "\n")
    (tmp_path / "test-00000.jsonl").write_text(json.dumps({"text": "test doc"}) + "\n")
    sources = documents.resolve_sources([tmp_path])
    assert [t for t, _ in documents.iter_split(sources, "train", SplitConfig(valid_fraction=0.5))] == ["train doc"]
    assert [t for t, _ in documents.iter_split(sources, "valid", SplitConfig(valid_fraction=0.5))] == ["valid doc"]


def test_identical_jsonl_documents_land_in_one_split(tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": f"unique document {i}"}) for i in range(100)]
    lines += [json.dumps({"text": "the same   document,\nagain"})] * 100 + [
        json.dumps({"text": "the same document, again"})
    ] * 100
    path.write_text("\n".join(lines) + "\n")
    sources = documents.resolve_sources([path])
    train = [t for t, _ in documents.iter_split(sources, "train", SplitConfig(valid_fraction=0.3))]
    valid = [t for t, _ in documents.iter_split(sources, "valid", SplitConfig(valid_fraction=0.3))]
    copies = [documents.normalised_text(t) for t in train + valid if "same" in t]
    in_train = sum("same" in t for t in train)
    assert len(copies) == 200 and in_train in (0, 200)  # all copies on one side: no train text in valid


def test_files_split_hashes_the_path_under_the_input_folder(tmp_path):
    for i in range(40):
        (tmp_path / f"page{i}").mkdir()
        (tmp_path / f"page{i}" / "index.md").write_text(f"# page {i}\n" + "text\n" * 20)
    sources = documents.resolve_sources([tmp_path])
    assert {s.key for s in sources} == {f"page{i}/index.md" for i in range(40)}
    valid = [t for t, _ in documents.iter_split(sources, "valid", SplitConfig(valid_fraction=0.25, mode="files"))]
    assert 3 <= len(valid) <= 20  # one name for all forty would put all or none in valid
    moved = tmp_path.parent / "moved"
    tmp_path.rename(moved)
    assert [
        t
        for t, _ in documents.iter_split(
            documents.resolve_sources([moved]), "valid", SplitConfig(valid_fraction=0.25, mode="files")
        )
    ] == valid


# --- find: one walk for every stage -----------------------------------------------------------


def test_every_stage_skips_hidden_entries_and_run_folders(tmp_path):
    (tmp_path / "a.txt").write_text("kept\n")
    (tmp_path / ".notes.txt").write_text("hidden\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.txt").write_text("hidden\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({"stage": "pretrain"}))
    (tmp_path / "run" / "b.txt").write_text("a run folder's file\n")
    assert [s.path.name for s in documents.resolve_sources([tmp_path])] == ["a.txt"]
    inventory = documents.find([tmp_path])
    assert [Path(f.path).name for f in inventory.files] == ["a.txt"]
    assert inventory.skipped["(hidden or lmforge run folder)"] == 2


def test_builtin_text_is_found_by_every_stage():
    assert documents.find(["builtin:tinyshakespeare"]).files[0].format == "text"
    assert documents.resolve_sources(["builtin:tinyshakespeare"])[0].path.name == "tinyshakespeare.txt"
    with pytest.raises(LmforgeError, match="builtin:nope: no such built-in text"):
        documents.find(["builtin:nope"])


def test_corpus_folder_keeps_its_splits_and_nothing_else(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"stage": "corpus"}))
    for name in ("train-00000.jsonl", "valid-00000.jsonl", "dropped.jsonl"):
        (tmp_path / name).write_text(json.dumps({"text": name}) + "\n")
    (tmp_path / "report.html").write_text("<html></html>")
    files = documents.find([tmp_path]).files
    assert [(Path(f.path).name, f.split) for f in files] == [
        ("train-00000.jsonl", "train"),
        ("valid-00000.jsonl", "valid"),
    ]


# --- read: one decoder, one encoding_errors choice ----------------------------------------------


def test_decoder_drops_a_bom_counts_it_in_offsets_and_reads_utf16():
    with pytest.raises(
        documents.ReadError, match=r"bytes at offset 5 are not UTF-8 .*set read.encoding_errors: replace"
    ):
        documents.TextDecoder("strict", setting="read.encoding_errors").decode(b"\xef\xbb\xbfab\xff", final=True)
    decoder = documents.TextDecoder("replace")
    assert (
        decoder.decode("caf\u00e9 au lait, cr\u00e8me".encode("utf-16"), final=True) == "caf\u00e9 au lait, cr\u00e8me"
    )
    with pytest.raises(documents.ReadError, match="binary data"):
        documents.TextDecoder().decode(b"PK\x00\x00")


def test_jsonl_error_names_file_and_line_and_replace_applies_there_too(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(LmforgeError, match=r"d\.jsonl:2: bytes are not UTF-8 .*read\.encoding_errors: replace"):
        list(documents.read_jsonl_documents(path))
    assert [t for _, t in documents.read_jsonl_documents(path, encoding_errors="replace")] == ["fine", "caf\ufffd"]
    path.write_text('{"text": "fine"}\n{"body": "x"}\n')
    with pytest.raises(
        LmforgeError, match=r"d\.jsonl:2: expected an object with a string field 'text'; .*read\.text_field"
    ):
        list(documents.read_jsonl_documents(path))


def test_table_rows_give_the_line_a_row_ends_on(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('text,n\n"two\nlines",1\n\nthird,3\n', encoding="utf-8-sig")
    rows = list(documents.table_rows(documents.whole(path), "strict", documents.ReadLog(), quoting=True))
    assert rows == [(1, ["text", "n"]), (3, ["two\nlines", "1"]), (5, ["third", "3"])]


# --- split: one stable hash ---------------------------------------------------------------------


def test_corpus_and_text_stage_splits_draw_from_one_hash():
    fractions = [documents.stable_fraction(f"7:doc{i}") for i in range(200)]
    split = SplitConfig(valid_fraction=0.2, test_fraction=0.1, seed=7, mode="documents")
    assigned = [documents.assign_split(f"doc{i}", split) for i in range(200)]
    assert assigned == ["test" if f < 0.1 else "valid" if f < 0.3 else "train" for f in fractions]
    assert 0 < assigned.count("test") < assigned.count("valid") < assigned.count("train")


def test_one_split_config_with_each_stage_defaults_and_checks():
    assert (documents.text_split().valid_fraction, documents.text_split().mode) == (0.1, "auto")
    corpus = documents.corpus_split()
    assert (corpus.valid_fraction, corpus.test_fraction, corpus.mode) == (0.05, 0.05, "documents")
    with pytest.raises(LmforgeError, match="text stages hold out valid only"):
        documents.check_split(SplitConfig(test_fraction=0.1), "text")
    with pytest.raises(LmforgeError, match="--split.mode documents is not a mode of this stage; choose one of: auto"):
        documents.check_split(SplitConfig(mode="documents"), "text")
    with pytest.raises(LmforgeError, match="--split.mode tail is not a mode of this stage; choose one of: documents"):
        documents.check_split(SplitConfig(mode="tail"), "corpus")


def test_split_seed_salts_the_text_stages_file_split(tmp_path):
    for i in range(40):
        (tmp_path / f"f{i:02d}.txt").write_text(f"file {i}\n")
    sources = documents.resolve_sources([tmp_path])

    def held_out(seed: int) -> list[str]:
        split = SplitConfig(valid_fraction=0.25, mode="files", seed=seed)
        return [t for t, _ in documents.iter_split(sources, "valid", split)]

    assert held_out(0) == held_out(0) and held_out(0) != held_out(1)
    assert {
        t for t, _ in documents.iter_split(sources, "train", SplitConfig(valid_fraction=0.25, mode="files", seed=1))
    }.isdisjoint(held_out(1))
