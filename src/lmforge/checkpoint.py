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
half-deleted `step_N` behind; `clean_leftovers` removes what a killed run left.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from lmforge.runfolder import write_json_atomic

STATE_DIR = "training_state"
TRASH_PREFIX = ".trash-"


def fsync_tree(folder: Path) -> None:
    """Flush every file under `folder`, then the folders themselves, to the disk."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_durable(path: Path, text: str) -> None:
    """Replace `path` with `text` through a fsynced temp file and a rename: a kill leaves the old or the new."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(path.parent)


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
            device = next((p.device for p in model.parameters()), None)
            torch.save(rng_state(device), tmp / STATE_DIR / "rng.pt")
            write_json_atomic(tmp / STATE_DIR / "state.json", state or {})
        os.chmod(tmp, 0o755)
        fsync_tree(tmp)
        replace_dir(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _renameat2_exchange():
    """libc's renameat2 with RENAME_EXCHANGE (Linux >= 3.15, glibc >= 2.28), or None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
_EXCHANGE = _renameat2_exchange()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the OS or file system cannot."""
    if _EXCHANGE is None:
        return False
    return _EXCHANGE(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def replace_dir(tmp: Path, folder: Path) -> None:
    """Put the finished folder `tmp` at `folder`, replacing what is there, durably."""
    if folder.exists() and _exchange(tmp, folder):
        fsync_dir(folder.parent)
        _discard(tmp)  # tmp now holds the old folder
        return
    if folder.exists():  # no atomic exchange: rename the old one aside first; `clean_leftovers` restores it after a kill
        old = folder.with_name(f".old-{folder.name}")
        _discard(old)
        os.replace(folder, old)
        os.replace(tmp, folder)
        fsync_dir(folder.parent)
        _discard(old)
        return
    os.replace(tmp, folder)
    fsync_dir(folder.parent)


def _discard(path: Path) -> None:
    """Delete a folder by first renaming it to a `.trash-` name (atomic), then removing that."""
    if not path.exists():
        return
    trash = Path(tempfile.mkdtemp(prefix=TRASH_PREFIX, dir=path.parent))
    os.replace(path, trash / path.name)
    shutil.rmtree(trash, ignore_errors=True)


def clean_leftovers(run_dir: Path) -> None:
    """Remove what a killed run left in `run_dir` and `run_dir/checkpoints`: unfinished `.tmp-*`
    writes and `.trash-*` deletions; an `.old-X` whose `X` is missing is put back."""
    for root in (Path(run_dir), Path(run_dir) / "checkpoints"):
        if not root.is_dir():
            continue
        for path in root.iterdir():
            if path.name.startswith(".old-") and not (root / path.name[5:]).exists():
                os.replace(path, root / path.name[5:])
            elif path.name.startswith((".tmp-", TRASH_PREFIX, ".old-")):
                shutil.rmtree(path, ignore_errors=True)


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


def read_state(folder: Path) -> dict:
    """The loop state saved in a checkpoint (step, tokens, seconds, ...)."""
    return json.loads((Path(folder) / STATE_DIR / "state.json").read_text())


def prune(run_dir: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` checkpoints; also clear temp folders left by killed writes."""
    root = Path(run_dir) / "checkpoints"
    for stale in list(root.glob(".tmp-*")) + list(root.glob(f"{TRASH_PREFIX}*")):
        shutil.rmtree(stale, ignore_errors=True)
    if keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            _discard(old)


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
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {k for k in missing if "embed" in k or "lm_head" in k or "decoder" in k or "predictions" in k}
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"checkpoint {folder} does not match the model: missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
