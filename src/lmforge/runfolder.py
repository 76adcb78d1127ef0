"""The run folder every stage writes: resolved `config.yaml` and `manifest.json`.

`manifest.json` records the inputs (path, size, sha256), library versions, lmforge's git SHA
when it runs from a checkout, and start/end times, so a result can be traced to what made it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from lmforge import config as config_mod
from lmforge.errors import LmforgeError
from lmforge.publish import write_json_atomic

LIBRARIES = ("torch", "transformers", "tokenizers", "safetensors", "accelerate", "numpy", "peft")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


_SHA256_SEEN: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Content hash, remembered per (path, size, mtime): cache keys and the manifest of one run
    ask for the same files, and a 1 GB corpus takes seconds to hash."""
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256_SEEN:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
        _SHA256_SEEN[key] = digest.hexdigest()
    return _SHA256_SEEN[key]


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("lmforge",) + LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_sha() -> str | None:
    """The commit of the lmforge checkout this code runs from, if it is one."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class RunFolder:
    """A stage's output folder. `start` writes config.yaml and a first manifest; `finish` completes it."""

    def __init__(self, out: str | Path, stage: str):
        self.path = Path(out)
        self.stage = stage
        self.manifest: dict[str, Any] = {}

    def start(self, config: Any, inputs: list[str | Path] = ()) -> RunFolder:
        self.path.mkdir(parents=True, exist_ok=True)
        config_mod.dump_yaml(config, self.path / "config.yaml")
        self.manifest = {
            "stage": self.stage,
            "started": now_iso(),
            "finished": None,
            "inputs": [describe_input(p) for p in inputs],
            "versions": library_versions(),
            "git_sha": git_sha(),
            "host": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        }
        write_json_atomic(self.path / "manifest.json", self.manifest)
        return self

    def finish(self, **extra: Any) -> None:
        self.manifest.update(extra)
        self.manifest["finished"] = now_iso()
        write_json_atomic(self.path / "manifest.json", self.manifest)


def check_unchanged_on_resume(folder: str | Path, config: Any, frozen: tuple[str, ...]) -> None:
    """`--resume true` continues the run in `folder` as it was set up: a flag that changes one of the
    `frozen` settings (the model's shape, the data, the batch, the seed) is an error before anything
    is written (it rewrote config.yaml and then failed with a size mismatch, leaving a run that
    could not be resumed without hand-editing). Budgets and cadences may change."""
    saved_path = Path(folder) / "config.yaml"
    if not saved_path.is_file():
        return
    saved = flat(config_mod.load_yaml(saved_path))
    given = flat(config_mod.to_dict(config))
    for key in sorted(given):
        if key.startswith(frozen) and key in saved and saved[key] != given[key]:
            raise LmforgeError(
                f"--resume true cannot change {key} (the run in {folder} has {saved[key]!r}, this command gives {given[key]!r}); "
                f"drop --{key} to continue the run, or start a new run with another --out"
            )


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def has_ended(folder: str | Path) -> bool:
    """Whether the run in `folder` wrote its end: the manifest's end time is its last write, so a
    run killed while writing final/ or its reports has none, and `--resume` finishes that part."""
    manifest = Path(folder) / "manifest.json"
    try:
        return bool(json.loads(manifest.read_text()).get("finished"))
    except (OSError, ValueError):
        return False


def stage_of(folder: str | Path) -> str | None:
    """The stage that wrote `folder` (its manifest.json's "stage"), or None for any other folder."""
    manifest = Path(folder) / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        stage = json.loads(manifest.read_text(encoding="utf-8")).get("stage")
    except (OSError, ValueError, AttributeError):
        return None
    return stage if isinstance(stage, str) else None


def describe_input(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        return {"path": str(path), "kind": "folder"}
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": file_sha256(path)}
