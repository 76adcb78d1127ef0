"""Publishing leaves the old or the new, never half: a failed or killed write leaves no target and,
after clean-up, no temp folder; a replaced folder stays readable until the swap; files are fsynced."""

import os
import subprocess
import sys

import pytest

from lmforge import publish


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_an_exception_inside_the_block_leaves_no_target_and_no_temp_folder(tmp_path):
    with pytest.raises(RuntimeError, match="killed"), publish.publish_folder(tmp_path / "out") as tmp:
        (tmp / "half.bin").write_bytes(b"\0" * 100)
        raise RuntimeError("killed mid-write")
    assert names(tmp_path) == []


def test_a_killed_process_leaves_only_a_temp_folder_that_clean_up_removes(tmp_path):
    # os._exit skips every `finally`, as kill -9 would
    script = (
        "import os, sys; from pathlib import Path; from lmforge import publish\n"
        "with publish.publish_folder(Path(sys.argv[1]) / 'out') as tmp:\n"
        "    (tmp / 'half.bin').write_bytes(b'x'); os._exit(9)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=False, env=os.environ)
    assert [n.startswith(".tmp-out-") for n in names(tmp_path)] == [True]
    publish.clean_leftovers(tmp_path)
    assert names(tmp_path) == []


def test_replacing_keeps_the_old_folder_readable_until_the_swap(tmp_path, monkeypatch):
    target = tmp_path / "best"
    with publish.publish_folder(target) as tmp:
        (tmp / "weights").write_text("old")
    real_replace = os.replace

    def no_rename_onto_target(src, dst):
        assert os.fspath(dst) != os.fspath(target), "the old folder was renamed away before the new one was in place"
        return real_replace(src, dst)

    if publish._EXCHANGE is not None:  # the fallback renames the old one aside: tested below
        monkeypatch.setattr(os, "replace", no_rename_onto_target)
    with publish.publish_folder(target) as tmp:
        (tmp / "weights").write_text("new")
        assert (target / "weights").read_text() == "old"
    assert (target / "weights").read_text() == "new"
    assert names(tmp_path) == ["best"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o755)


def test_a_failed_replace_keeps_the_old_folder(tmp_path):
    target = tmp_path / "best"
    with publish.publish_folder(target) as tmp:
        (tmp / "weights").write_text("old")
    with pytest.raises(OSError), publish.publish_folder(target) as tmp:
        raise OSError("disk full")
    assert (target / "weights").read_text() == "old" and names(tmp_path) == ["best"]


def test_replacing_without_an_atomic_exchange_and_restoring_after_a_kill_between_the_renames(tmp_path, monkeypatch):
    monkeypatch.setattr(publish, "_EXCHANGE", None)
    target = tmp_path / "best"
    for text in ("old", "new"):
        with publish.publish_folder(target) as tmp:
            (tmp / "weights").write_text(text)
    assert (target / "weights").read_text() == "new" and names(tmp_path) == ["best"]
    os.replace(target, tmp_path / ".old-best")  # killed after the first of the two renames
    publish.clean_leftovers(tmp_path)
    assert (target / "weights").read_text() == "new" and names(tmp_path) == ["best"]


def test_without_replace_an_existing_folder_is_kept(tmp_path):
    target = tmp_path / "entry"
    with publish.publish_folder(target, replace=False) as tmp:
        (tmp / "v").write_text("first")
    with publish.publish_folder(target, replace=False) as tmp:
        (tmp / "v").write_text("second")
    assert (target / "v").read_text() == "first" and names(tmp_path) == ["entry"]


def test_text_write_is_durable_and_leaves_the_old_text_when_it_fails(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "metrics.jsonl"
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    publish.write_text_atomic(path, "one\n")
    assert path.read_text() == "one\n"
    assert any(os.path.basename(p).startswith(".tmp-metrics.jsonl-") for p in synced)  # the file before its rename
    assert str(path.parent) in synced  # the rename itself
    with pytest.raises(TypeError):
        publish.write_text_atomic(path, 42)
    assert path.read_text() == "one\n" and names(path.parent) == ["metrics.jsonl"]
    publish.write_json_atomic(path.parent / "report.json", {"loss": 1.5, "path": tmp_path})
    assert (path.parent / "report.json").read_text() == f'{{\n  "loss": 1.5,\n  "path": "{tmp_path}"\n}}\n'


def test_clean_up_removes_temp_files_and_folders_and_deletions_in_progress(tmp_path):
    (tmp_path / ".tmp-step_4-abc").mkdir()
    (tmp_path / ".tmp-manifest.json-xyz").write_text("{")
    (tmp_path / ".trash-1" / "step_1").mkdir(parents=True)
    (tmp_path / "step_2").mkdir()
    (tmp_path / ".old-step_2").mkdir()  # its folder exists: the old copy is stale
    publish.clean_leftovers(tmp_path)
    assert names(tmp_path) == ["step_2"]


def test_a_streamed_file_appears_under_its_name_only_when_published(tmp_path):
    target = tmp_path / "train-00000.jsonl"
    partial = publish.partial_path(target)
    partial.write_text('{"text": "a"}\n')
    assert partial.name == "train-00000.jsonl.partial" and not target.exists()
    publish.publish_file(partial, target)
    assert names(tmp_path) == ["train-00000.jsonl"]


def test_in_a_shared_folder_only_temp_folders_whose_writer_is_gone_are_removed(tmp_path):
    dead, fresh = tmp_path / ".tmp-killed-1", tmp_path / ".tmp-starting-2"
    dead.mkdir()
    os.utime(dead, (0, 0))  # written long ago, no process holds its lock
    fresh.mkdir()  # unlocked but new: maybe a writer between mkdtemp and its lock
    (tmp_path / ".old-x").mkdir()  # only a single-writer folder restores these
    with publish.publish_folder(tmp_path / "live") as tmp:
        os.utime(tmp, (0, 0))
        publish.clean_leftovers(tmp_path, shared=True)
        assert tmp.is_dir()  # its writer (this block) holds the lock
    assert names(tmp_path) == [".old-x", ".tmp-starting-2", "live"]


def test_a_write_that_fails_on_a_full_disk_is_reported_as_enospc(tmp_path, monkeypatch):
    """torch.save reports a full disk as RuntimeError('unexpected pos ...'); it becomes ENOSPC naming the folder."""
    import errno
    import shutil as shutil_mod

    from lmforge import publish

    target = tmp_path / "checkpoints" / "step_5"
    monkeypatch.setattr(shutil_mod, "disk_usage", lambda path: shutil_mod._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(OSError) as raised:
        with publish.publish_folder(target):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 252096 vs 251988")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
    assert not target.exists() and not list(target.parent.iterdir())  # nothing half-written left
    monkeypatch.setattr(shutil_mod, "disk_usage", lambda path: shutil_mod._ntuple_diskusage(10**12, 0, 10**12))
    with pytest.raises(RuntimeError, match="a bug, not the disk"):  # with room to spare it stays what it was
        with publish.publish_folder(target):
            raise RuntimeError("a bug, not the disk")


def test_atomic_files_get_the_mode_open_would_give(tmp_path):
    import os
    import stat

    from lmforge.publish import FILE_MODE, write_json_atomic

    write_json_atomic(tmp_path / "report.json", {"a": 1})
    (tmp_path / "plain.txt").write_text("x")
    mode = stat.S_IMODE(os.stat(tmp_path / "report.json").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode) == FILE_MODE
