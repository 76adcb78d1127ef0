"""Find the text inputs named by `--data` and read them as documents, streaming.

Inputs are files, folders (searched recursively for text files) and globs. Plain text files
(.txt, .md, .text, .rst) are read in blocks of about 1 MiB cut at line ends, so a 1 GB file
never sits in memory whole. A `.jsonl` file holds one document per line in its `text` field.
A folder written by `lmforge corpus` (its manifest.json says `"stage": "corpus"`) contributes
its `train-*.jsonl` / `valid-*.jsonl` files with their split kept.

Bytes that are not UTF-8 stop the run with the file and byte offset, unless
`encoding_errors="replace"`, which substitutes U+FFFD and counts the replacements.
"""

from __future__ import annotations

import codecs
import glob
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.runfolder import stage_of

TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst"}
JSONL_SUFFIXES = {".jsonl"}
BLOCK_BYTES = 1 << 20


# Part of every cache key: shards built under other split rules must not be reused.
SPLIT_RULES = "v2: jsonl by normalised text, files by path under the input root"


@dataclass
class Source:
    """One input file; `split` is set when the file already belongs to a split (corpus folders).
    `key` names the file for the `files` split: its path under the folder given in --data (so
    two `index.md` in different folders are two keys, and moving the folder changes nothing)."""

    path: Path
    kind: str  # "text" | "jsonl"
    split: str | None = None
    key: str = ""

    def __post_init__(self):
        self.key = self.key or str(self.path)


@dataclass
class DecodeStats:
    replaced: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.replaced.values())


def _corpus_sources(folder: Path) -> list[Source]:
    sources = []
    for split in ("train", "valid", "test"):
        for path in sorted(folder.glob(f"{split}-*.jsonl")) + sorted(folder.glob(f"{split}.jsonl")):
            sources.append(Source(path, "jsonl", split))
    return sources


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return "text"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    return None


def resolve_sources(paths: list[str | Path]) -> list[Source]:
    """Expand files, folders and globs into text sources, in a stable order.

    Raises LmforgeError for a path that does not exist, a folder without text files, or
    when every file is empty.
    """
    if not paths:
        raise LmforgeError("no input given; pass text files, folders or globs with --data PATH ...")
    sources: list[Source] = []
    for raw in paths:
        raw = str(raw)
        if raw.startswith("builtin:"):
            sources.append(Source(builtin_path(raw), "text"))
            continue
        if any(ch in raw for ch in "*?["):
            matches = sorted(glob.glob(raw, recursive=True))
            if not matches:
                raise LmforgeError(f"--data {raw}: the glob matches no file; check the pattern")
            candidates = [Path(m) for m in matches if Path(m).is_file()]
            root = _glob_root(raw)
            sources.extend(Source(p, _kind(p) or "text", key=_relative_key(p, root)) for p in candidates)
            continue
        path = Path(raw)
        if not path.exists():
            raise LmforgeError(f"--data {path}: no such file or folder; check the path")
        if path.is_dir():
            if stage_of(path) == "corpus":
                found = _corpus_sources(path)
            else:
                found = [Source(p, k, key=_relative_key(p, path)) for p in sorted(path.rglob("*")) if p.is_file() and (k := _kind(p))]
            if not found:
                suffixes = ", ".join(sorted(TEXT_SUFFIXES | JSONL_SUFFIXES))
                raise LmforgeError(f"--data {path}: the folder holds no text files ({suffixes}); point at a folder of text or run `lmforge corpus` on it first")
            sources.extend(found)
        else:
            sources.append(Source(path, _kind(path) or "text"))
    if all(s.path.stat().st_size == 0 for s in sources):
        names = ", ".join(str(s.path) for s in sources[:3])
        raise LmforgeError(f"--data: every input file is empty ({names}); give files with text in them")
    return sources


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


def builtin_path(name: str) -> Path:
    """`builtin:tinyshakespeare` -> the copy shipped inside the package (public domain)."""
    path = Path(__file__).parent / "data" / f"{name.split(':', 1)[1]}.txt"
    if not path.is_file():
        raise LmforgeError(f"--data {name}: no such built-in text; the built-in one is builtin:tinyshakespeare")
    return path


def _decode_error(path: Path, offset: int, err: UnicodeDecodeError) -> LmforgeError:
    return LmforgeError(
        f"{path}: bytes at offset {offset + err.start} are not UTF-8 ({err.reason}); convert the file to UTF-8 "
        "(e.g. iconv -f latin1 -t utf-8) or set data.encoding_errors: replace"
    )


def read_text_blocks(path: Path, start: int = 0, end: int | None = None, encoding_errors: str = "strict",
                     stats: DecodeStats | None = None) -> Iterator[str]:
    """Yield decoded blocks of `path` between byte offsets [start, end), cut at line ends."""
    end = path.stat().st_size if end is None else end
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    with open(path, "rb") as handle:
        handle.seek(start)
        offset = start
        carry = b""
        while offset < end:
            block = handle.read(min(BLOCK_BYTES, end - offset))
            if not block:
                break
            data = carry + block
            offset += len(block)
            cut = data.rfind(b"\n") + 1 if offset < end else len(data)
            if cut == 0:
                carry = data
                continue
            chunk, carry = data[:cut], data[cut:]
            yield _decode(path, chunk, offset - len(data), decoder, encoding_errors, stats)
        if carry:
            yield _decode(path, carry, offset - len(carry), decoder, encoding_errors, stats)


def _decode(path: Path, chunk: bytes, chunk_offset: int, decoder, encoding_errors: str, stats: DecodeStats | None) -> str:
    try:
        return decoder.decode(chunk, final=False)
    except UnicodeDecodeError as err:
        if encoding_errors != "replace":
            raise _decode_error(path, chunk_offset, err) from None
        decoder.reset()
        text = chunk.decode("utf-8", errors="replace")
        if stats is not None:
            stats.replaced[str(path)] = stats.replaced.get(str(path), 0) + text.count("\ufffd")
        return text


def read_jsonl_documents(path: Path, text_field: str = "text") -> Iterator[tuple[int, str]]:
    """Yield (line number, text) for each JSONL line; a bad line is an error naming file:line."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except UnicodeDecodeError as err:
                raise LmforgeError(f"{path}:{number}: bytes are not UTF-8 ({err.reason}); convert the file to UTF-8") from None
            except ValueError as err:
                raise LmforgeError(f"{path}:{number}: not valid JSON ({err}); fix or remove that line") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise LmforgeError(f"{path}:{number}: expected an object with a string field '{text_field}'; fix the line or set data.text_field")
            yield number, record[text_field]


def line_boundary_after(path: Path, offset: int) -> int:
    """The byte offset just past the first newline at or after `offset` (or the file size)."""
    size = path.stat().st_size
    if offset >= size:
        return size
    with open(path, "rb") as handle:
        handle.seek(offset)
        while block := handle.read(1 << 16):
            at = block.find(b"\n")
            if at >= 0:
                return offset + at + 1
            offset += len(block)
    return size


def _stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by `key`, so a document's split never depends on input order."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big") / 2**64


def normalised_text(text: str) -> str:
    """What makes two documents the same for splitting: NFKC, whitespace runs as one space."""
    import unicodedata

    return unicodedata.normalize("NFKC", " ".join(text.split()))


def choose_split_mode(sources: list[Source], mode: str) -> str:
    """`auto` splits whole files when there are at least 10 text files, else the tail of each file."""
    if mode != "auto":
        return mode
    return "files" if sum(s.kind == "text" for s in sources) >= 10 else "tail"


def iter_split(sources: list[Source], split: str, valid_fraction: float, mode: str = "auto",
               encoding_errors: str = "strict", stats: DecodeStats | None = None,
               text_field: str = "text") -> Iterator[tuple[str, bool]]:
    """Yield (text block, ends_document) for one split ("train" or "valid"), streaming.

    Text files: `tail` puts the last `valid_fraction` of each file's bytes (cut at a line end) in
    valid, in order, like nanoGPT's 90/10 split (a file's two parts are contiguous, so only the
    one seam between them joins train and valid text); `files` sends whole files to valid by a
    stable hash of their path under the input folder. JSONL documents go to valid by a stable
    hash of their normalised text, so copies of a document land in one split only. Corpus
    folders keep the split they were written with.
    """
    mode = choose_split_mode(sources, mode)
    for source in sources:
        if source.split is not None:
            if source.split == split:
                for _, text in read_jsonl_documents(source.path, text_field):
                    yield text, True
            continue
        if source.kind == "jsonl":
            for number, text in read_jsonl_documents(source.path, text_field):
                in_valid = _stable_fraction(normalised_text(text)) < valid_fraction
                if in_valid == (split == "valid"):
                    yield text, True
            continue
        size = source.path.stat().st_size
        if mode == "files":
            in_valid = _stable_fraction(source.key) < valid_fraction
            if in_valid != (split == "valid"):
                continue
            start, end = 0, size
        else:
            cut = line_boundary_after(source.path, int(size * (1.0 - valid_fraction))) if valid_fraction > 0 else size
            start, end = (0, cut) if split == "train" else (cut, size)
        if end <= start:
            continue
        blocks = read_text_blocks(source.path, start, end, encoding_errors, stats)
        previous = next(blocks, None)
        for block in blocks:
            yield previous, False
            previous = block
        if previous is not None:
            yield previous, True


def input_fingerprint(sources: list[Source]) -> list[str]:
    """Content hashes of every source, for cache keys."""
    from lmforge.runfolder import file_sha256

    return [SPLIT_RULES] + [f"{s.key}:{s.split}:{file_sha256(s.path)}" for s in sources]
