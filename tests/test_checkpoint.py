"""Checkpoints survive kills and power cuts: flushed before they are published, replaced in one
step, and whatever a killed write or delete left behind is tidied (or restored) on the next start."""

import os

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from lmforge import checkpoint, publish


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=40,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
        )
    )


def test_files_and_folders_are_flushed_before_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters())
    checkpoint.save(tmp_path / "checkpoints" / "step_1", model, None, optimizer, {"step": 1})
    names = {os.path.basename(p) for p in synced}
    assert {"model.safetensors", "config.json", "optimizer.pt", "rng.pt", "state.json"} <= names
    assert str(tmp_path / "checkpoints") in synced  # the rename itself made durable


def test_replacing_best_never_leaves_a_moment_without_it(tmp_path, monkeypatch):
    best = tmp_path / "best"
    checkpoint.save(best, tiny_model(0), None)
    if publish._EXCHANGE is None:
        return  # no renameat2 here: the two-rename fallback, repaired by clean_leftovers (tested below)
    # with an atomic exchange, replacing best/ needs no rename that would leave a gap: forbid renames onto best/
    real_replace = os.replace

    def guarded(src, dst):
        assert os.fspath(dst) != os.fspath(best), "best/ was renamed away before the new one was in place"
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", guarded)
    checkpoint.save(best, tiny_model(1), None)
    loaded = AutoModelForCausalLM.from_pretrained(best)
    assert torch.equal(loaded.model.embed_tokens.weight, tiny_model(1).model.embed_tokens.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_leftovers_of_a_killed_run_are_cleaned_and_a_half_replaced_folder_restored(tmp_path):
    checkpoint.save(
        tmp_path / "checkpoints" / "step_2",
        tiny_model(),
        None,
        torch.optim.AdamW(tiny_model().parameters()),
        {"step": 2},
    )
    (tmp_path / "checkpoints" / ".tmp-step_4-abc").mkdir()  # killed mid-write
    (tmp_path / "checkpoints" / ".trash-xyz" / "step_1").mkdir(parents=True)  # killed mid-delete
    (tmp_path / ".tmp-best-123").mkdir()
    checkpoint.save(tmp_path / "old", tiny_model(), None)
    os.replace(tmp_path / "old", tmp_path / ".old-best")  # killed between the two renames of a fallback replace
    checkpoint.clean_leftovers(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "checkpoints"]
    AutoModelForCausalLM.from_pretrained(tmp_path / "best")


def test_pruning_deletes_whole_checkpoints_only(tmp_path):
    model, optimizer = tiny_model(), None
    optimizer = torch.optim.AdamW(model.parameters())
    for step in (1, 2, 3):
        checkpoint.save(tmp_path / "checkpoints" / f"step_{step}", model, None, optimizer, {"step": step})
    checkpoint.prune(tmp_path, keep_last=1)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_3"]
