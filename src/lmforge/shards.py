"""Tokenize text into packed token shards: one flat memmap per split, documents joined by a boundary token.

Layout of a shards folder:
    train.bin, valid.bin    raw token ids (uint16 when the vocabulary fits, else uint32)
    train.docs.npy, ...     int64 offsets where each document starts
    meta.json               dtype, token counts, boundary token id, tokenizer hash, tokens/s
Text is read in ~1 MiB blocks and appended to the files as it is encoded, so memory stays
flat however large the corpus. A folder is built under a temporary name and renamed when
complete (`publish.publish_folder`), so a killed run never leaves a half-written folder; the
cached ones (`cached`) live in `cache`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmforge import cache, documents, publish
from lmforge import tokenizer as tokenizer_mod
from lmforge.config import option
from lmforge.documents import ReadConfig, SplitConfig, check_split, text_split
from lmforge.errors import LmforgeError
from lmforge.runfolder import RunFolder, file_sha256

SPLITS = ("train", "valid")
# Part of the cache key: shards encoded under older rules (whole blocks; saved padding/truncation on) are not reused.
ENCODING_RULES = "v2: line by line, no padding or truncation"


@dataclass
class ShardsConfig:
    data: list[str] = option([], "input text: files, folders or globs (.txt .md .rst .jsonl, or a corpus/ folder)")
    out: str = option("runs/shards", "output folder for train.bin / valid.bin / meta.json")
    tokenizer: str = option("", "tokenizer folder (from `lmforge tokenizer` or any HF model folder)")
    split: SplitConfig = field(default_factory=text_split)
    read: ReadConfig = field(default_factory=ReadConfig)


def tokenizer_hash(folder: str | Path) -> str:
    folder = Path(folder)
    digest = hashlib.sha256()
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json"):
        if (folder / name).is_file():
            digest.update(file_sha256(folder / name).encode())
    return digest.hexdigest()[:16]


def boundary_token_id(tokenizer) -> int:
    """The token that separates documents: EOS for causal tokenizers, SEP for BERT-style ones."""
    for token_id in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if token_id is not None:
            return int(token_id)
    raise LmforgeError(
        "the tokenizer has neither an EOS nor a SEP token to mark document boundaries; train it with `lmforge tokenizer`"
    )


class TokenizeProgress:
    """A line every ~10 s while tokenizing (characters read of the inputs' total, tokens/s, ETA):
    on a large corpus this phase takes minutes and printed nothing."""

    def __init__(self, total_chars: int, every: float = 10.0):
        self.total, self.every = max(total_chars, 1), every
        self.chars = self.tokens = 0
        self.started = self.last = time.monotonic()

    def add(self, chars: int, tokens: int) -> None:
        self.chars += chars
        self.tokens += tokens
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            rate, done = self.tokens / (now - self.started), min(self.chars / self.total, 1.0)
            eta = (now - self.started) * (1 - done) / done if done > 0 else 0
            print(
                f"tokenizing: {done:.0%} of the text, {self.tokens:,} tokens, {rate / 1000:.0f}k tokens/s, ETA {eta:.0f} s",
                flush=True,
            )


def _encode_split(
    tokenizer, blocks, handle, dtype, boundary: int, progress: TokenizeProgress | None = None
) -> tuple[int, list[int]]:
    """Append one split's tokens to `handle`; return (token count, document start offsets)."""
    written = 0
    starts = [0]
    for block, ends_document in blocks:
        ids = np.asarray(tokenizer_mod.encode_text(tokenizer, block), dtype=np.int64)
        if progress is not None:
            progress.add(len(block), len(ids))
        if ends_document:
            ids = np.append(ids, boundary)
        ids.astype(dtype).tofile(handle)
        written += len(ids)
        if ends_document:
            starts.append(written)
    return written, starts[:-1] if len(starts) > 1 else starts


def build(
    sources: list[documents.Source], tokenizer_dir: str | Path, split: SplitConfig, read: ReadConfig, out: Path
) -> dict:
    """Tokenize both splits into `out`, published whole (an earlier `out` is swapped out). Returns meta.json's content."""
    with publish.publish_folder(out) as tmp:
        meta = _tokenize_into(tmp, sources, tokenizer_dir, split, read)
    return meta


def _tokenize_into(
    folder: Path, sources: list[documents.Source], tokenizer_dir: str | Path, split: SplitConfig, read: ReadConfig
) -> dict:
    """Write both splits' token files and meta.json into the (temp) `folder`; return meta.json's content."""
    tokenizer = tokenizer_mod.load(tokenizer_dir)
    vocab = len(tokenizer)
    dtype = np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.uint32
    boundary = boundary_token_id(tokenizer)
    stats = documents.DecodeStats()
    meta = {
        "dtype": np.dtype(dtype).name,
        "vocab_size": vocab,
        "boundary_token_id": boundary,
        "tokenizer_hash": tokenizer_hash(tokenizer_dir),
        "tokenizer": str(tokenizer_dir),
        "splits": {},
    }
    started = time.time()
    progress = TokenizeProgress(sum(os.path.getsize(s.path) for s in sources if Path(s.path).is_file()))
    for name in SPLITS:
        blocks = documents.iter_split(sources, name, split, read, stats)
        with open(folder / f"{name}.bin", "wb") as handle:
            count, starts = _encode_split(tokenizer, blocks, handle, dtype, boundary, progress)
        np.save(folder / f"{name}.docs.npy", np.asarray(starts, dtype=np.int64))
        meta["splits"][name] = {"tokens": count, "documents": len(starts) if count else 0}
    seconds = max(time.time() - started, 1e-9)
    total = sum(s["tokens"] for s in meta["splits"].values())
    meta.update(
        tokenize_seconds=round(seconds, 3), tokens_per_second=round(total / seconds, 1), replaced_characters=stats.total
    )
    publish.write_json_atomic(folder / "meta.json", meta)
    return meta


def cache_inputs(tokenizer_dir: str | Path, split: SplitConfig, read: ReadConfig, fingerprint: list[str]) -> dict:
    """What cached shards depend on (`cache.key` hashes it into the entry name)."""
    return {
        "tokenizer": tokenizer_hash(tokenizer_dir),
        "split": split.__dict__,
        "read": read.__dict__,
        "inputs": fingerprint,
        "encoding": ENCODING_RULES,
    }


def cached(sources: list[documents.Source], tokenizer_dir: str | Path, split: SplitConfig, read: ReadConfig) -> Path:
    """Shards for these inputs and tokenizer, built once and reused (keyed by their hashes)."""
    inputs = cache_inputs(tokenizer_dir, split, read, documents.input_fingerprint(sources))
    folder = cache.folder("shards", inputs)
    if not cache.is_complete("shards", folder):
        with cache.entry("shards", inputs) as tmp:
            _tokenize_into(tmp, sources, tokenizer_dir, split, read)
    return folder


@dataclass
class TokenShards:
    """Read side: memory-mapped token arrays of a shards folder."""

    folder: Path
    meta: dict
    train: np.ndarray
    valid: np.ndarray

    @classmethod
    def open(cls, folder: str | Path) -> TokenShards:
        folder = Path(folder)
        if (folder / "tokens" / "meta.json").is_file():  # a `lmforge shards` run folder
            folder = folder / "tokens"
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            raise LmforgeError(f"{folder}: not a shards folder (no meta.json); build one with `lmforge shards`")
        meta = json.loads(meta_path.read_text())
        arrays = {}
        for name in SPLITS:
            path = folder / f"{name}.bin"
            arrays[name] = (
                np.memmap(path, dtype=meta["dtype"], mode="r") if path.stat().st_size else np.zeros(0, meta["dtype"])
            )
        return cls(folder, meta, arrays["train"], arrays["valid"])


def run(config: ShardsConfig) -> Path:
    """`lmforge shards`: tokenize inputs into train/valid token files in `out`."""
    if not config.tokenizer:
        raise LmforgeError("--tokenizer is required: a tokenizer folder from `lmforge tokenizer` or an HF model folder")
    check_split(config.split, "text")
    sources = documents.resolve_sources(config.data)
    out = Path(config.out)
    folder = RunFolder(out, "shards").start(config, [s.path for s in sources])
    meta = build(sources, config.tokenizer, config.split, config.read, out / "tokens")
    folder.finish(meta=meta)
    print(
        f"shards in {out / 'tokens'}: train {meta['splits']['train']['tokens']:,} tokens, valid {meta['splits']['valid']['tokens']:,} tokens; "
        f"{meta['tokens_per_second']:,.0f} tokens/s"
    )
    return out
