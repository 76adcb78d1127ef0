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
