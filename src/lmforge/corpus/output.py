"""The corpus folder's shards: `train-00000.jsonl`, `valid-00000.jsonl`, `test-00000.jsonl`, ...
and `dropped.jsonl`, one line per document that was left out and why.

Shards are written as `*.partial` and published (fsynced, renamed: `publish.publish_file`) when
the run succeeds, so a failed run never leaves a folder that `lmforge tokenizer` or
`lmforge shards` would take for a finished corpus; the next run into the folder removes them.
dropped.jsonl is written as the run goes and kept when it fails: it says why nothing was left.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from lmforge import publish
from lmforge.errors import LmforgeError
from lmforge.runfolder import stage_of

SPLITS = ("train", "valid", "test")
DROPPED_LOG = "dropped.jsonl"


def prepare_out_folder(out: Path) -> None:
    """Remove the shards of an earlier `lmforge corpus` run in `out`; refuse to mix with other files."""
    stale = [p for split in SPLITS for p in out.glob(f"{split}-*.jsonl*")]
    if not stale:
        return
    if stage_of(out) != "corpus":
        raise LmforgeError(
            f"--out {out}: the folder holds {stale[0].name} but was not written by `lmforge corpus`; choose an empty or new --out folder"
        )
    for path in stale:
        path.unlink()


class ShardWriter:
    """Append JSON lines to `{split}-NNNNN.jsonl`, starting a new file past `shard_bytes`."""

    def __init__(self, out: Path, split: str, shard_bytes: int):
        self.out, self.split, self.shard_bytes = out, split, shard_bytes
        self.paths: list[Path] = []
        self.records = 0
        self.bytes = 0
        self._handle = None
        self._shard_size = 0
        self._open_next()  # train-00000.jsonl exists even when a split gets nothing

    def _open_next(self) -> None:
        if self._handle is not None:
            self._handle.close()
        path = self.out / f"{self.split}-{len(self.paths):05d}.jsonl"
        self.paths.append(path)
        self._handle = open(publish.partial_path(path), "wb")
        self._shard_size = 0

    def write(self, payload: bytes, records: int) -> None:
        if self._shard_size and self._shard_size + len(payload) > self.shard_bytes:
            self._open_next()
        self._handle.write(payload)
        self._shard_size += len(payload)
        self.bytes += len(payload)
        self.records += records

    def close(self, keep: bool) -> list[str]:
        """Close; publish the shards under their final names when `keep`, else delete them."""
        self._handle.close()
        for path in self.paths:
            if keep:
                publish.publish_file(publish.partial_path(path), path)
            else:
                publish.partial_path(path).unlink(missing_ok=True)
        return [p.name for p in self.paths] if keep else []


class DroppedLog:
    """dropped.jsonl: one JSON object per dropped document, written as it comes (never held in
    memory); `counts` per reason for the report."""

    def __init__(self, out: Path):
        self._handle = open(out / DROPPED_LOG, "w", encoding="utf-8")
        self.counts: Counter[str] = Counter()

    def write(self, entry: dict) -> None:
        self.counts[entry["reason"]] += 1
        self._handle.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self._handle.close()
