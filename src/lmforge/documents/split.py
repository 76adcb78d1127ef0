"""Split documents into train / valid (/ test) by one stable hash, so a document's split never
depends on the order of the inputs.

The text stages (tokenizer, shards, pretrain) stream (block, ends_document) pairs of one split
(`iter_split`); the corpus stage assigns each document by its id (`assign_split`).
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from lmforge.config import option
from lmforge.documents.find import Source
from lmforge.documents.read import (
    DecodeStats,
    EncodingErrors,
    line_boundary_after,
    read_jsonl_documents,
    read_text_blocks,
)

# Part of every cache key: shards built under other split rules must not be reused.
SPLIT_RULES = "v2: jsonl by normalised text, files by path under the input root"


@dataclass
class SplitConfig:
    """How the text stages (tokenizer, shards, pretrain: `--split.*`) hold out validation text."""

    valid_fraction: float = option(0.1, "fraction of the text held out for validation")
    mode: Literal["auto", "tail", "files"] = option(
        "auto",
        "tail: last part of each file is valid (in order); files: whole files go to valid; auto: files when >= 10 text files",
    )
    encoding_errors: EncodingErrors = option(
        "strict", "non-UTF-8 bytes: strict stops with file and byte offset; replace substitutes U+FFFD and counts them"
    )
    text_field: str = option("text", "field holding the text in .jsonl inputs")


@dataclass
class CorpusSplitConfig:
    """How `lmforge corpus` (`--split.*`) assigns documents to train / valid / test: by the one stable
    hash below, after deduplication, so a document's split never depends on the order of the inputs."""

    valid_fraction: float = option(0.05, "fraction of documents (after deduplication) in valid")
    test_fraction: float = option(0.05, "fraction of documents (after deduplication) in test")
    seed: int = option(0, "salt of the document-id hash that assigns splits; change it for a different split")
    mode: Literal["documents", "files"] = option(
        "documents",
        "what is assigned to a split as a whole: each document (the pieces of a text file longer than "
        "extract.max_document_chars too, so one long file lands in every split, its pieces meeting at blank lines), "
        "or each input file with all its documents (held-out files: needs many files)",
    )


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by `key` (blake2b, 64 bits): the one hash every split is drawn from."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big") / 2**64


def assign_split(doc_id: str, valid_fraction: float, test_fraction: float, seed: int) -> str:
    """train / valid / test from a hash of the document id: stable under reordering of inputs."""
    position = stable_fraction(f"{seed}:{doc_id}")
    if position < test_fraction:
        return "test"
    if position < test_fraction + valid_fraction:
        return "valid"
    return "train"


def normalised_text(text: str) -> str:
    """What makes two documents the same for splitting: NFKC, whitespace runs as one space."""
    return unicodedata.normalize("NFKC", " ".join(text.split()))


def choose_split_mode(sources: list[Source], mode: str) -> str:
    """`auto` splits whole files when there are at least 10 text files, else the tail of each file."""
    if mode != "auto":
        return mode
    return "files" if sum(s.kind == "text" for s in sources) >= 10 else "tail"


def iter_split(
    sources: list[Source],
    split: str,
    valid_fraction: float,
    mode: str = "auto",
    encoding_errors: EncodingErrors = "strict",
    stats: DecodeStats | None = None,
    text_field: str = "text",
) -> Iterator[tuple[str, bool]]:
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
                for _, text in read_jsonl_documents(source.path, text_field, encoding_errors):
                    yield text, True
            continue
        if source.kind == "jsonl":
            for _, text in read_jsonl_documents(source.path, text_field, encoding_errors):
                in_valid = stable_fraction(normalised_text(text)) < valid_fraction
                if in_valid == (split == "valid"):
                    yield text, True
            continue
        size = source.path.stat().st_size
        if mode == "files":
            in_valid = stable_fraction(source.key) < valid_fraction
            if in_valid != (split == "valid"):
                continue
            start, end = 0, size
        else:
            cut = line_boundary_after(source.path, int(size * (1.0 - valid_fraction))) if valid_fraction > 0 else size
            start, end = (0, cut) if split == "train" else (cut, size)
        if end <= start:
            continue
        yield from ending_last(read_text_blocks(source.path, start, end, encoding_errors, stats))


def ending_last(blocks: Iterator[str]) -> Iterator[tuple[str, bool]]:
    """(block, ends_document) for the blocks of one document: only the last one ends it."""
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
