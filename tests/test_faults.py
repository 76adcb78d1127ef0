"""Faults a long run meets: a full disk or a read-only folder mid-run end in one line, keep the
last good checkpoint, and the run resumes exactly once the fault is gone (fault injection)."""

from __future__ import annotations

import errno
import json
import os

import pytest
from conftest import argv_of, finetune_files, tiny_overrides

from lmforge import checkpoint, cli


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


def fail_fsync_under(monkeypatch, marker: str, code: int):
    """os.fsync raises `code` for files whose path contains `marker` (the checkpoint being written)."""
    real = os.fsync

    def fsync(fd):
        if marker in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(code, os.strerror(code), os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize(
    "code, words", [(errno.ENOSPC, "no space left on device; free space"), (errno.EROFS, "read-only file system")]
)
def test_disk_fault_in_a_checkpoint_is_one_line_and_the_run_resumes_exactly(
    small_text, tmp_path, capsys, monkeypatch, code, words
):
    whole, faulty = tmp_path / "whole", tmp_path / "faulty"
    assert cli.main(["pretrain", *argv_of(tiny_overrides(small_text, whole))]) == 0
    with monkeypatch.context() as patch:
        fail_fsync_under(patch, "step_12", code)
        capsys.readouterr()
        assert cli.main(["pretrain", *argv_of(tiny_overrides(small_text, faulty))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"cannot write in {faulty}" in err and words in err and "newest checkpoint is" in err and "step_6" in err
    assert checkpoint.latest(faulty).name == "step_6" and not (faulty / "final").exists()
    assert cli.main(["pretrain", "--out", str(faulty), "--resume", "true"]) == 0  # the disk has room again
    assert losses(faulty) == losses(whole)
    assert not [p for p in faulty.rglob("*") if p.name.startswith(".tmp")]  # no half-written folder left


def test_resume_finishes_a_run_whose_end_a_kill_cut_short(small_text, tmp_path, capsys):
    """Killed after the last checkpoint, before report.html and the manifest's end time: resume writes
    them (it said "already finished" and exited, leaving the run without its reports)."""
    out = tmp_path / "run"
    assert cli.main(["pretrain", *argv_of(tiny_overrides(small_text, out))]) == 0
    (out / "report.html").unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "finished": None}))
    before = losses(out)
    assert cli.main(["pretrain", "--out", str(out), "--resume", "true"]) == 0
    assert (out / "report.html").is_file() and json.loads((out / "manifest.json").read_text())["finished"]
    assert losses(out) == before  # nothing trained twice
    capsys.readouterr()
    assert cli.main(["pretrain", "--out", str(out), "--resume", "true"]) == 2  # now it is finished
    assert "already finished" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["head", "lora"])
def test_head_and_lora_fine_tunes_resume_exactly(tiny_bert, sentiment, tmp_path, mode):
    train, dev = sentiment
    flags = "--epochs 2 --train.batch_size 16 --train.log_every 1 --train.precision fp32".split()
    base = ["finetune", *finetune_files(tiny_bert, train, dev), "--mode", mode, *flags]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert cli.main([*base, "--out", str(whole)]) == 0
    assert cli.main([*base, "--out", str(parts), "--train.stop_at_step", "5"]) == 0
    assert (
        cli.main(["finetune", "--out", str(parts), "--resume", "true"]) == 0
    )  # head mode: "checkpoint does not match the model"
    assert losses(parts) == losses(whole)
    assert (
        json.loads((parts / "report.json").read_text())["metrics"]
        == json.loads((whole / "report.json").read_text())["metrics"]
    )


def test_resume_that_would_change_the_model_is_refused_before_anything_is_written(small_text, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["pretrain", *argv_of(tiny_overrides(small_text, out, **{"train.stop_at_step": 6}))]) == 0
    saved = (out / "config.yaml").read_text()
    capsys.readouterr()
    assert cli.main(["pretrain", "--out", str(out), "--resume", "true", "--model.width", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1 and "--resume true cannot change model.width" in err and "drop --model.width" in err
    )
    assert (out / "config.yaml").read_text() == saved  # it was rewritten before, then the load failed
    assert (
        cli.main(["pretrain", "--out", str(out), "--resume", "true", "--train.max_steps", "14"]) == 0
    )  # a budget may change


def test_bf16_runs_with_pinned_kernels_are_repeatable_bit_for_bit(small_text, tmp_path):
    """What the README promises: with --train.attention and --train.compile pinned, two bf16 runs of
    one seed give the same losses (under `auto` the timed choice can differ between runs)."""
    pinned = {"train.precision": "bf16", "train.attention": "sdpa", "train.compile": "false", "train.save_every": 0}
    for name in ("a", "b"):
        assert cli.main(["pretrain", *argv_of(tiny_overrides(small_text, tmp_path / name, **pinned))]) == 0
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_evaluate_out_on_a_read_only_mount_is_one_line(small_text, tmp_path, capsys, monkeypatch):
    import pathlib

    model = tmp_path / "model"
    assert cli.main(["pretrain", *argv_of(tiny_overrides(small_text, model, **{"train.max_steps": 2}))]) == 0
    out = tmp_path / "ro" / "eval"
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):  # the mount refuses every new entry, as a read-only one does
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", str(model), "--data", str(small_text), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "read-only file system" in err and "give an --out on a writable disk" in err
