import hashlib
import os

from lmforge import runfolder


def test_file_hash_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    path.write_text("first")
    assert runfolder.file_sha256(path) == hashlib.sha256(b"first").hexdigest()
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    runfolder.file_sha256(path)
    assert opened == []  # second ask: no read
    path.write_text("second!")
    os.utime(path, ns=(1, 1))
    assert runfolder.file_sha256(path) == hashlib.sha256(b"second!").hexdigest()


def test_stage_of_reads_the_manifest_and_tolerates_other_folders(tmp_path):
    from lmforge.corpus import CorpusConfig
    from lmforge.runfolder import RunFolder, stage_of

    RunFolder(tmp_path / "c", "corpus").start(CorpusConfig())
    assert stage_of(tmp_path / "c") == "corpus"
    assert stage_of(tmp_path) is None  # no manifest
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{not json")
    assert stage_of(tmp_path / "broken") is None
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text("[1, 2]")
    assert stage_of(tmp_path / "other") is None
