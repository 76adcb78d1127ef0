"""Atomic, durable checkpoints: an HF model folder plus `training_state/` beside the weights.

    checkpoints/step_N/
        config.json, model.safetensors, tokenizer files     (AutoModel.from_pretrained works)
        training_state/state.json                           step, tokens, seconds, flops, schedule state
        training_state/optimizer.pt                         optimizer tensors (loaded with weights_only=True)
        training_state/rng.pt                               torch RNG states (CPU, and CUDA when used)

A checkpoint is written into `.tmp-step_N-*`, every file and the folder are fsynced, and only then
is it renamed into place (and the parent folder fsynced), so neither `kill -9` nor a power cut
leaves a half-written checkpoint that looks complete. A folder that is replaced (`best/`) is swapped
in one atomic exchange where the OS offers one (Linux renameat2), so no moment exists without it.
Old checkpoints are renamed aside before they are deleted, so a kill mid-delete never leaves a
half-deleted `step_N` behind; `clean_leftovers` removes what a killed run left. (All of it is
`publish`'s: the same code publishes shards, cached tokenizers and corpus shards.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from lmforge import publish

STATE_DIR = "training_state"


def rng_state(device: torch.device | None = None) -> dict:
    """The RNG states to save: the CPU generator, and the current CUDA device's when training on one."""
    state = {"torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def save(folder: Path, model, tokenizer, optimizer=None, state: dict | None = None) -> None:
    """Write an HF model folder (safetensors + tokenizer) atomically and durably; with `optimizer`
    and `state`, also the training state that makes it resumable."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per save drowns the training progress lines
    with publish.publish_folder(folder) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if optimizer is not None:
            (tmp / STATE_DIR).mkdir()
            torch.save(optimizer.state_dict(), tmp / STATE_DIR / "optimizer.pt")
            device = next((p.device for p in model.parameters()), None)
            torch.save(rng_state(device), tmp / STATE_DIR / "rng.pt")
            publish.write_json_atomic(tmp / STATE_DIR / "state.json", state or {})


def clean_leftovers(run_dir: Path) -> None:
    """Remove what a killed run left in `run_dir` and `run_dir/checkpoints`: unfinished `.tmp-*`
    writes and `.trash-*` deletions; an `.old-X` whose `X` is missing is put back."""
    for root in (Path(run_dir), Path(run_dir) / "checkpoints"):
        publish.clean_leftovers(root)


def is_complete(folder: Path) -> bool:
    return (folder / STATE_DIR / "state.json").is_file() and any(folder.glob("*.safetensors"))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete `checkpoints/step_N` folders, oldest first (temp folders of killed writes are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit() and is_complete(p)
    ]
    return sorted(found, key=lambda p: int(p.name[5:]))


def latest(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def read_state(folder: Path) -> dict:
    """The loop state saved in a checkpoint (step, tokens, seconds, ...)."""
    return json.loads((Path(folder) / STATE_DIR / "state.json").read_text())


def prune(run_dir: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` checkpoints; also clear temp folders left by killed writes."""
    publish.clean_leftovers(Path(run_dir) / "checkpoints")
    if keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            publish.discard(old)


def load_state(folder: Path, optimizer) -> dict:
    """Restore optimizer and RNG from a checkpoint; return its loop state."""
    state_dir = Path(folder) / STATE_DIR
    optimizer.load_state_dict(torch.load(state_dir / "optimizer.pt", weights_only=True))
    rng = torch.load(state_dir / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return read_state(folder)


def load_weights(model, folder: Path) -> None:
    """Copy a checkpoint's safetensors weights into an existing model (same architecture)."""
    from safetensors.torch import load_file

    tensors = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    peft = sys.modules.get("peft")  # a PeftModel implies peft is imported
    if peft is not None and isinstance(model, peft.PeftModel):
        # its checkpoint holds the adapters (and saved heads) under names without the adapter's
        # name; peft maps them back (load_state_dict found none of them: LoRA runs never resumed)
        result = peft.set_peft_model_state_dict(model, tensors)
        if result.unexpected_keys:
            raise RuntimeError(
                f"checkpoint {folder} does not match the LoRA model: unexpected {sorted(result.unexpected_keys)[:3]}"
            )
        return
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {k for k in missing if "embed" in k or "lm_head" in k or "decoder" in k or "predictions" in k}
    if set(missing) - tied or unexpected:
        raise RuntimeError(
            f"checkpoint {folder} does not match the model: missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    if hasattr(model, "tie_weights"):
        model.tie_weights()
