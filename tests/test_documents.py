import json

import pytest

from lmforge import documents
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
        list(documents.iter_split(sources, "train", 0.0))
    stats = documents.DecodeStats()
    text = "".join(t for t, _ in documents.iter_split(sources, "train", 0.0, encoding_errors="replace", stats=stats))
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
    train = "".join(t for t, _ in documents.iter_split(sources, "train", 0.1))
    valid = "".join(t for t, _ in documents.iter_split(sources, "valid", 0.1))
    assert train + valid == path.read_text()
    assert 0.08 < len(valid) / len(path.read_text()) < 0.12


def test_jsonl_documents_split_by_document_and_bad_line_named(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(200)))
    sources = documents.resolve_sources([path])
    train = [t for t, _ in documents.iter_split(sources, "train", 0.2)]
    valid = [t for t, _ in documents.iter_split(sources, "valid", 0.2)]
    assert len(train) + len(valid) == 200 and not set(train) & set(valid) and 20 < len(valid) < 60
    path.write_text('{"text": "ok"}\n{not json}\n')
    with pytest.raises(LmforgeError, match=r"docs\.jsonl:2: not valid JSON"):
        list(documents.iter_split(documents.resolve_sources([path]), "train", 0.0))


def test_corpus_folder_keeps_its_splits(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"stage": "corpus"}))
    (tmp_path / "train-00000.jsonl").write_text(json.dumps({"text": "train doc"}) + "\n")
    (tmp_path / "valid-00000.jsonl").write_text(json.dumps({"text": "valid doc"}) + "\n")
    (tmp_path / "test-00000.jsonl").write_text(json.dumps({"text": "test doc"}) + "\n")
    sources = documents.resolve_sources([tmp_path])
    assert [t for t, _ in documents.iter_split(sources, "train", 0.5)] == ["train doc"]
    assert [t for t, _ in documents.iter_split(sources, "valid", 0.5)] == ["valid doc"]


def test_identical_jsonl_documents_land_in_one_split(tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": f"unique document {i}"}) for i in range(100)]
    lines += [json.dumps({"text": "the same   document,\nagain"})] * 100 + [json.dumps({"text": "the same document, again"})] * 100
    path.write_text("\n".join(lines) + "\n")
    sources = documents.resolve_sources([path])
    train = [t for t, _ in documents.iter_split(sources, "train", 0.3)]
    valid = [t for t, _ in documents.iter_split(sources, "valid", 0.3)]
    copies = [documents.normalised_text(t) for t in train + valid if "same" in t]
    in_train = sum("same" in t for t in train)
    assert len(copies) == 200 and in_train in (0, 200)  # all copies on one side: no train text in valid


def test_files_split_hashes_the_path_under_the_input_folder(tmp_path):
    for i in range(40):
        (tmp_path / f"page{i}").mkdir()
        (tmp_path / f"page{i}" / "index.md").write_text(f"# page {i}\n" + "text\n" * 20)
    sources = documents.resolve_sources([tmp_path])
    assert {s.key for s in sources} == {f"page{i}/index.md" for i in range(40)}
    valid = [t for t, _ in documents.iter_split(sources, "valid", 0.25, mode="files")]
    assert 3 <= len(valid) <= 20  # one name for all forty would put all or none in valid
    moved = tmp_path.parent / "moved"
    tmp_path.rename(moved)
    assert [t for t, _ in documents.iter_split(documents.resolve_sources([moved]), "valid", 0.25, mode="files")] == valid
