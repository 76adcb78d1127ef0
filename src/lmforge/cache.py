"""The cache of derived data, one folder per entry, named by a hash of what made it:

    $LMFORGE_CACHE (default ~/.cache/lmforge)/
        tokenizers/<key>/   tokenizer files, report.json, manifest.json
        shards/<key>/       train.bin, valid.bin, *.docs.npy, meta.json, manifest.json

A key is the first 16 hex digits of the sha256 of the entry's inputs as sorted JSON (settings,
content hashes of the input files, encoding rules), so new inputs make a new entry and the same
inputs reuse the old one. manifest.json says what made the entry: those inputs, the lmforge
version and the creation time. An entry appears whole (`publish.publish_folder`); when two
processes fill the same entry, the first one's is kept; a build that was killed leaves a temp
folder that the next build of an entry of that kind removes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from lmforge import __version__, publish
from lmforge.runfolder import now_iso

Kind = Literal["tokenizers", "shards"]
# The file whose presence marks a finished entry (entries cached before manifest.json have no manifest).
COMPLETE_MARKER: dict[str, str] = {"tokenizers": "tokenizer.json", "shards": "meta.json"}
MANIFEST = "manifest.json"


def root() -> Path:
    """Where derived data (tokenizers, shards) is cached: $LMFORGE_CACHE or ~/.cache/lmforge."""
    return Path(os.environ.get("LMFORGE_CACHE") or Path.home() / ".cache" / "lmforge")


def key(inputs: dict) -> str:
    """The entry name for these inputs (JSON-serialisable settings and content hashes)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def folder(kind: Kind, inputs: dict) -> Path:
    return root() / kind / key(inputs)


def is_complete(kind: Kind, entry_folder: Path) -> bool:
    return (Path(entry_folder) / COMPLETE_MARKER[kind]).is_file()


@contextmanager
def entry(kind: Kind, inputs: dict) -> Iterator[Path]:
    """Yield an empty temp folder to fill; when the block ends it becomes `folder(kind, inputs)`,
    with manifest.json beside what the block wrote. An exception leaves the cache as it was."""
    target = folder(kind, inputs)
    publish.clean_leftovers(target.parent, shared=True)  # temp folders of killed builds, by any process
    if target.exists() and not is_complete(kind, target):
        publish.discard(target)  # unfinished entries are never published: this one was made by hand
    with publish.publish_folder(target, replace=False) as tmp:
        yield tmp
        manifest = {"kind": kind, "key": target.name, "inputs": inputs, "lmforge": __version__, "created": now_iso()}
        publish.write_json_atomic(tmp / MANIFEST, manifest)
