"""Split documents into train / valid (/ test) by one stable hash, so a document's split never
depends on the order of the inputs.

The text stages (tokenizer, shards, pretrain) stream (block, ends_document) pairs of one split
(`iter_split`); the corpus stage assigns each document by its id (`assign_split`). Both read one
SplitConfig, with each stage's defaults (`text_split`, `corpus_split`).
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
    ReadConfig,
    line_boundary_after,
    read_jsonl_documents,
    read_text_blocks,
)
from lmforge.errors import LmforgeError

# Part of every cache key: shards built under other split rules must not be reused.
SPLIT_RULES = "v3: jsonl by normalised text, files by path under the input root, salted by split.seed"


SplitMode = Literal["auto", "tail", "files", "documents"]


@dataclass
class SplitConfig:
    """How a stage (`--split.*`) holds out text: the text stages (tokenizer, shards, pretrain) split
    valid from train (`text_split()`); `lmforge corpus` assigns documents, after deduplication, to
    train / valid / test (`corpus_split()`). Every assignment is the one stable hash below, so a
    document's split never depends on the order of the inputs."""

    valid_fraction: float = option(0.1, "fraction of the text (corpus: of the documents) held out for validation")
    test_fraction: float = option(
        0.0, "fraction of the documents in test (corpus only; the text stages hold out valid)"
    )
    seed: int = option(0, "salt of the hash that assigns splits; change it for a different split")
    mode: SplitMode = option(
        "auto",
        "what goes to a split as a whole. Text stages: tail (the last part of each file is valid, in order), files "
        "(whole files, by their path), auto (files when >= 10 text files, else tail). Corpus: documents (each "
        "document; a text file longer than extract.max_document_chars is cut into documents at blank lines, so one "
        "long file lands in every split) or files (each input file with all its documents; needs many files)",
    )


def text_split() -> SplitConfig:
    """The text stages' defaults: 10% valid, no test, tail or files by the number of files."""
    return SplitConfig()


def corpus_split() -> SplitConfig:
    """`lmforge corpus`'s defaults: 5% valid and 5% test, by document."""
    return SplitConfig(valid_fraction=0.05, test_fraction=0.05, mode="documents")


def check_split(split: SplitConfig, stage: Literal["text", "corpus"]) -> None:
    """One-line errors for a split the stage cannot make."""
    modes = ("auto", "tail", "files") if stage == "text" else ("documents", "files")
    if split.mode not in modes:
        raise LmforgeError(f"--split.mode {split.mode} is not a mode of this stage; choose one of: {', '.join(modes)}")
    if stage == "text" and split.test_fraction:
        raise LmforgeError(
            "--split.test_fraction: the text stages hold out valid only; "
            "build a corpus with `lmforge corpus` for a test split, and pass its folder as --data"
        )
    if not (0 <= split.valid_fraction and 0 <= split.test_fraction and split.valid_fraction + split.test_fraction < 1):
        raise LmforgeError(
            "split.valid_fraction + split.test_fraction must be in [0, 1) so train keeps text; lower them"
        )


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by `key` (blake2b, 64 bits): the one hash every split is drawn from."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big") / 2**64


def assign_split(doc_id: str, cfg: SplitConfig) -> str:
    """train / valid / test from a hash of the document id: stable under reordering of inputs."""
    position = stable_fraction(f"{cfg.seed}:{doc_id}")
    if position < cfg.test_fraction:
        return "test"
    if position < cfg.test_fraction + cfg.valid_fraction:
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
    cfg: SplitConfig,
    read: ReadConfig | None = None,
    stats: DecodeStats | None = None,
) -> Iterator[tuple[str, bool]]:
    """Yield (text block, ends_document) for one split ("train" or "valid"), streaming.

    Text files: `tail` puts the last `valid_fraction` of each file's bytes (cut at a line end) in
    valid, in order, like nanoGPT's 90/10 split (a file's two parts are contiguous, so only the
    one seam between them joins train and valid text); `files` sends whole files to valid by a
    stable hash of their path under the input folder. JSONL documents go to valid by a stable
    hash of their normalised text, so copies of a document land in one split only. Corpus
    folders keep the split they were written with.
    """
    mode = choose_split_mode(sources, cfg.mode)
    read = read or ReadConfig()
    errors, text_field = read.encoding_errors, read.text_field
    for source in sources:
        if source.split is not None:
            if source.split == split:
                for _, text in read_jsonl_documents(source.path, text_field, errors):
                    yield text, True
            continue
        if source.kind == "jsonl":
            for _, text in read_jsonl_documents(source.path, text_field, errors):
                in_valid = stable_fraction(f"{cfg.seed}:{normalised_text(text)}") < cfg.valid_fraction
                if in_valid == (split == "valid"):
                    yield text, True
            continue
        size = source.path.stat().st_size
        if mode == "files":
            in_valid = stable_fraction(f"{cfg.seed}:{source.key}") < cfg.valid_fraction
            if in_valid != (split == "valid"):
                continue
            start, end = 0, size
        else:
            fraction = cfg.valid_fraction
            cut = line_boundary_after(source.path, int(size * (1.0 - fraction))) if fraction > 0 else size
            start, end = (0, cut) if split == "train" else (cut, size)
        if end <= start:
            continue
        yield from ending_last(read_text_blocks(source.path, start, end, errors, stats))


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
