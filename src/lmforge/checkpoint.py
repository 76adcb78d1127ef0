"""Atomic checkpoints: an HF model folder plus `training_state/` beside the weights.

    checkpoints/step_N/
        config.json, model.safetensors, tokenizer files     (AutoModel.from_pretrained works)
        training_state/state.json                           step, tokens, seconds, flops, schedule state
        training_state/optimizer.pt                         optimizer tensors (loaded with weights_only=True)
        training_state/rng.pt                               torch RNG state (dropout)

A checkpoint is written into `.tmp-step_N-*` and renamed into place only when complete, so
`kill -9` mid-write leaves the previous checkpoint as the newest readable one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from lmforge.runfolder import write_json_atomic

STATE_DIR = "training_state"


def save(folder: Path, model, tokenizer, optimizer=None, state: dict | None = None) -> None:
    """Write an HF model folder (safetensors + tokenizer) atomically; with `optimizer` and
    `state`, also the training state that makes it resumable."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per save drowns the training progress lines
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if optimizer is not None:
            (tmp / STATE_DIR).mkdir()
            torch.save(optimizer.state_dict(), tmp / STATE_DIR / "optimizer.pt")
            torch.save({"torch": torch.get_rng_state()}, tmp / STATE_DIR / "rng.pt")
            write_json_atomic(tmp / STATE_DIR / "state.json", state or {})
        os.chmod(tmp, 0o755)
        _replace_dir(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(tmp: Path, folder: Path) -> None:
    if folder.exists():  # rename the old one aside first, so there is never a moment with neither
        old = folder.with_name(f".old-{folder.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)


def is_complete(folder: Path) -> bool:
    return (folder / STATE_DIR / "state.json").is_file() and any(folder.glob("*.safetensors"))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete `checkpoints/step_N` folders, oldest first (temp folders of killed writes are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit() and is_complete(p)]
    return sorted(found, key=lambda p: int(p.name[5:]))


def latest(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def prune(run_dir: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` checkpoints; also clear temp folders left by killed writes."""
    root = Path(run_dir) / "checkpoints"
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)


def load_state(folder: Path, optimizer) -> dict:
    """Restore optimizer and RNG from a checkpoint; return its loop state."""
    state_dir = Path(folder) / STATE_DIR
    optimizer.load_state_dict(torch.load(state_dir / "optimizer.pt", weights_only=True))
    rng = torch.load(state_dir / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    return json.loads((state_dir / "state.json").read_text())


def load_weights(model, folder: Path) -> None:
    """Copy a checkpoint's safetensors weights into an existing model (same architecture)."""
    from safetensors.torch import load_file

    tensors = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {k for k in missing if "embed" in k or "lm_head" in k or "decoder" in k or "predictions" in k}
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"checkpoint {folder} does not match the model: missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
