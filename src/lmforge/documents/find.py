"""Find the inputs named by `--data`, for every stage: files, folders, globs and `builtin:` names.

Folders are searched recursively in sorted order; hidden entries, the stage's own output folder
and lmforge run folders inside them (a report.html is not a document) are skipped. A folder that
is itself a `lmforge corpus` output (its manifest.json says `"stage": "corpus"`) contributes only
its `train-*` / `valid-*` / `test-*` .jsonl files, with their split kept. The format comes from
the suffix, under an optional `.gz`; a file named explicitly with an unknown suffix is read as text.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.runfolder import stage_of

FORMATS = {
    ".txt": "text",
    ".text": "text",
    ".rst": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".pdf": "pdf",
    ".docx": "docx",
    ".jsonl": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
}
CORPUS_SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class InputFile:
    """One found file. `key` names it for file-level splits: its path under the folder or glob
    root given in --data (two `index.md` in different folders are two keys; moving the folder
    changes nothing). `split` is set for the files of a corpus folder."""

    path: str
    format: str
    gzip: bool
    size: int
    key: str = ""
    split: str | None = None


@dataclass
class Inventory:
    """What `--data` names: readable files, inputs that yielded nothing, and skipped suffixes."""

    files: list[InputFile] = field(default_factory=list)
    roots: list[str] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    source_copies: list[dict] = field(default_factory=list)  # {"path", "rendered"} left out (corpus)


def detect_format(path: Path) -> tuple[str | None, bool]:
    """(format, gzipped) from the file name; format is None for an unsupported suffix."""
    name = path.name.lower()
    gzipped = name.endswith(".gz")
    if gzipped:
        name = name[:-3]
    return FORMATS.get(Path(name).suffix), gzipped


def input_file(path: str | Path, key: str = "", split: str | None = None, fmt: str | None = None) -> InputFile:
    """The InputFile of an existing path; `fmt` overrides the format guessed from the suffix."""
    path = Path(path)
    guessed, gzipped = detect_format(path)
    return InputFile(str(path), fmt or guessed or "text", gzipped, path.stat().st_size, key or str(path), split)


def builtin_path(name: str) -> Path:
    """`builtin:tinyshakespeare` -> the copy shipped inside the package (public domain)."""
    path = Path(__file__).parent.parent / "data" / f"{name.split(':', 1)[1]}.txt"
    if not path.is_file():
        raise LmforgeError(f"--data {name}: no such built-in text; the built-in one is builtin:tinyshakespeare")
    return path


def _wanted(path: Path, formats: set[str] | None, gzip: bool) -> bool:
    fmt, gzipped = detect_format(path)
    return fmt is not None and (formats is None or fmt in formats) and (gzip or not gzipped)


def walk(
    folder: Path, inventory: Inventory, out: Path | None = None, formats: set[str] | None = None, gzip: bool = True
) -> list[Path]:
    """Files of the wanted formats under `folder`, sorted; hidden entries, `out` and lmforge run
    folders are left out (counted in `inventory.skipped`, as are unwanted suffixes)."""
    found = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        kept_dirs = []
        for name in sorted(dirs):
            sub = here / name
            if name.startswith(".") or (out is not None and sub.resolve() == out) or stage_of(sub) is not None:
                inventory.skipped["(hidden or lmforge run folder)"] += 1
                continue
            kept_dirs.append(name)
        dirs[:] = kept_dirs
        for name in sorted(files):
            path = here / name
            if name.startswith(".") or not path.is_file():
                continue
            if not _wanted(path, formats, gzip):
                inventory.skipped[path.suffix.lower() or "(no suffix)"] += 1
                continue
            found.append(path)
    return sorted(found)


def corpus_files(folder: Path) -> list[InputFile]:
    """The split files of a `lmforge corpus` output folder, train first."""
    paths = []
    for split in CORPUS_SPLITS:
        paths += [(split, p) for p in sorted(folder.glob(f"{split}-*.jsonl")) + sorted(folder.glob(f"{split}.jsonl"))]
    return [input_file(p, split=split) for split, p in paths]


def _glob_root(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard (`docs/**/*.md` -> docs)."""
    parts = Path(pattern).parts
    fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if any(ch in p for ch in "*?["))]]
    return Path(*fixed) if fixed else Path(".")


def _relative_key(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def find(
    data: list[str | Path], out: str | Path | None = None, formats: set[str] | None = None, gzip: bool = True
) -> Inventory:
    """Expand `--data` into files in `--data` order (sorted inside folders and globs), each once.

    `formats` (default: all of FORMATS) and `gzip` choose what a folder walk keeps. A path or glob
    that matches nothing raises LmforgeError (a typo, before any work); a folder with no wanted
    file is recorded in `inventory.failures`: the stage decides whether that stops it.
    """
    if not data:
        raise LmforgeError(
            "no input given; pass documents with --data PATH ... (files, folders, globs or builtin:tinyshakespeare)"
        )
    out = Path(out).resolve() if out is not None else None
    inventory = Inventory()
    files: list[InputFile] = []
    for raw in map(str, data):
        if raw.startswith("builtin:"):
            files.append(input_file(builtin_path(raw)))
            inventory.roots.append(str(files[-1].path))
            continue
        if any(ch in raw for ch in "*?["):
            matches = [Path(m) for m in sorted(glob.glob(raw, recursive=True)) if Path(m).is_file()]
            if not matches:
                raise LmforgeError(
                    f"--data {raw}: the glob matches no file; check the pattern (quote it so the shell does not expand it)"
                )
            root = _glob_root(raw)
            files.extend(input_file(m, _relative_key(m, root)) for m in matches)
            inventory.roots.extend(str(m) for m in matches)
            continue
        path = Path(raw)
        if not path.exists():
            raise LmforgeError(f"--data {path}: no such file or folder; check the path")
        inventory.roots.append(str(path))
        if not path.is_dir():
            files.append(input_file(path))
            continue
        found = (
            corpus_files(path)
            if stage_of(path) == "corpus"
            else [input_file(p, _relative_key(p, path)) for p in walk(path, inventory, out, formats, gzip)]
        )
        if not found:
            suffixes = " ".join(sorted(s for s, f in FORMATS.items() if formats is None or f in formats))
            inventory.failures.append(
                {
                    "path": str(path),
                    "format": "folder",
                    "error": f"the folder holds no supported documents ({suffixes}{', optionally .gz' if gzip else ''})",
                }
            )
        files.extend(found)
    seen: set[Path] = set()
    for file in files:
        resolved = Path(file.path).resolve()
        if resolved not in seen:
            seen.add(resolved)
            inventory.files.append(file)
    return inventory


@dataclass
class Source:
    """One input of the tokenizer, shards, pretrain and evaluate stages: a text or JSONL file.
    `split` is set when the file already belongs to a split (corpus folders); `key` as InputFile's."""

    path: Path
    kind: str  # "text" | "jsonl"
    split: str | None = None
    key: str = ""

    def __post_init__(self):
        self.key = self.key or str(self.path)


# What the tokenizer/shards/pretrain stages read: plain files (they are cut by byte offsets).
TEXT_FORMATS = {"text", "markdown", "jsonl"}


def resolve_sources(paths: list[str | Path]) -> list[Source]:
    """`find` for the text stages: text and JSONL files (Markdown read as text), no .gz.

    Raises LmforgeError for a path that does not exist, a folder without text files, or
    when every file is empty.
    """
    if not paths:
        raise LmforgeError("no input given; pass text files, folders or globs with --data PATH ...")
    inventory = find(paths, formats=TEXT_FORMATS, gzip=False)
    if inventory.failures:
        suffixes = ", ".join(sorted(s for s, f in FORMATS.items() if f in TEXT_FORMATS))
        raise LmforgeError(
            f"--data {inventory.failures[0]['path']}: the folder holds no text files ({suffixes}); "
            "point at a folder of text or run `lmforge corpus` on it first"
        )
    sources = [
        Source(Path(f.path), "jsonl" if f.format == "jsonl" else "text", f.split, f.key) for f in inventory.files
    ]
    if all(s.path.stat().st_size == 0 for s in sources):
        names = ", ".join(str(s.path) for s in sources[:3])
        raise LmforgeError(f"--data: every input file is empty ({names}); give files with text in them")
    return sources
