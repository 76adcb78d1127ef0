"""Document-level deduplication: exact (hash of normalised text) and near (MinHash + LSH).

Workers compute each document's exact hash and MinHash signature (datasketch, word shingles).
The main process keeps one `DuplicateIndex` and sees documents in input order, so the first of
each duplicate cluster survives and later members are dropped: no near-duplicate pair can end
up in two splits.

The band parameters (b bands of r rows) are datasketch's choice for the threshold. The index
itself is a dict per band from a 64-bit hash of the band to a document number, with signatures
in one uint32 array: about 2.1 KB per kept document at 128 permutations and 14 bands (measured
on 100k documents), where datasketch's MinHashLSH took 3.6 KB with 9 bands: for 1 GB of text
(~200k documents) that difference decides whether the run stays well under 2 GB.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass

import numpy as np

from lmforge.corpus.config import DedupConfig

_WORD = re.compile(r"\w+")
_MINHASH_SEED = 1


# Odd 64-bit multipliers that mix the word hashes of a shingle into one (position-dependent).
_SHINGLE_MIX = np.array(
    [
        0x9E3779B97F4A7C15,
        0xC2B2AE3D27D4EB4F,
        0x165667B19E3779F9,
        0xD6E8FEB86659FD93,
        0xFF51AFD7ED558CCD,
        0xC4CEB9FE1A85EC53,
        0x94D049BB133111EB,
        0xBF58476D1CE4E5B9,
    ],
    dtype=np.uint64,
)


def canonical_words(text: str) -> list[str]:
    """Lowercased words without punctuation: what both duplicate tests compare."""
    return _WORD.findall(text.lower())


def normalised_hash(words: list[str]) -> int:
    """64-bit hash of the canonical words joined by single spaces."""
    return int.from_bytes(hashlib.blake2b(" ".join(words).encode("utf-8"), digest_size=8).digest(), "big")


class _WordHashes(dict):
    """crc32 of each word, computed once per distinct word (word frequencies are Zipfian)."""

    def __missing__(self, word: str) -> int:
        if len(self) > 2_000_000:  # bound the memory of a worker
            self.clear()
        value = self[word] = zlib.crc32(word.encode("utf-8"))
        return value


_WORD_HASHES = _WordHashes()


def shingle_hashes(words: list[str], k: int) -> np.ndarray:
    """32-bit hashes of the k-word shingles (one shingle when the text is shorter).

    Each word is hashed once and shingles are combined in numpy, about 4x faster than hashing
    every joined shingle string. Repeats are left in: MinHash takes a minimum, so they are harmless.
    """
    if not words:
        return np.zeros(1, dtype=np.uint64)
    if k > len(_SHINGLE_MIX):
        raise ValueError(f"shingles of at most {len(_SHINGLE_MIX)} words are supported")
    word_hashes = np.fromiter(map(_WORD_HASHES.__getitem__, words), dtype=np.uint64, count=len(words))
    k = min(k, len(words))
    n = len(words) - k + 1
    combined = np.zeros(n, dtype=np.uint64)
    for j in range(k):
        combined += word_hashes[j : j + n] * _SHINGLE_MIX[j]  # wraps modulo 2**64, as intended
    return combined >> np.uint64(32)


class Signer:
    """MinHash signatures of word shingles; one per process (the permutations are built once)."""

    def __init__(self, cfg: DedupConfig):
        from datasketch import MinHash

        self.shingle_words = cfg.shingle_words
        # The shingle hashes are already 32-bit integers; datasketch permutes them.
        self.template = MinHash(num_perm=cfg.num_perm, seed=_MINHASH_SEED, hashfunc=int)

    def signature(self, words: list[str]) -> np.ndarray:
        minhash = self.template
        minhash.clear()
        minhash.update_batch(shingle_hashes(words, self.shingle_words))
        return minhash.digest().astype(np.uint32)


# Weights of false positives and false negatives when datasketch chooses the bands. Every LSH
# candidate is checked against its signature, so a false positive costs one comparison while a
# false negative keeps a duplicate: at threshold 0.8 this gives 14 bands of 9 rows, which finds
# 97% of pairs at similarity 0.85 (equal weights: 9 bands of 13 rows, 69%).
LSH_WEIGHTS = (0.1, 0.9)


def band_layout(cfg: DedupConfig) -> tuple[int, int]:
    """(bands, rows) that datasketch's MinHashLSH picks for this threshold and permutation count."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, weights=LSH_WEIGHTS)
    return lsh.b, lsh.r


@dataclass
class Match:
    kind: str  # "exact" | "near"
    kept: int  # number of the kept document it duplicates
    similarity: float


class DuplicateIndex:
    """Remembers kept documents; `match` says whether a new one duplicates one of them."""

    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg
        self.exact: dict[int, int] = {}
        self.bands, self.rows = band_layout(cfg) if cfg.near else (0, 0)
        self.tables: list[dict[int, int | list[int]]] = [{} for _ in range(self.bands)]
        self.signatures = np.empty((1024 if cfg.near else 0, cfg.num_perm), dtype=np.uint32)
        self.kept = 0

    def _band_keys(self, signature: np.ndarray) -> list[int]:
        r = self.rows
        return [hash(signature[i * r : (i + 1) * r].tobytes()) for i in range(self.bands)]

    def _near(self, keys: list[int], signature: np.ndarray) -> Match | None:
        tried: set[int] = set()
        for table, key in zip(self.tables, keys):
            found = table.get(key)
            for candidate in [found] if isinstance(found, int) else found or []:
                if candidate in tried:
                    continue
                tried.add(candidate)
                # LSH only proposes; the signature agreement estimates the Jaccard similarity.
                similarity = float(np.mean(self.signatures[candidate] == signature))
                if similarity >= self.cfg.threshold:
                    return Match("near", candidate, similarity)
        return None

    def _remember(self, number: int, keys: list[int], signature: np.ndarray) -> None:
        if number >= len(self.signatures):
            grown = np.empty((2 * len(self.signatures), self.signatures.shape[1]), dtype=np.uint32)
            grown[: len(self.signatures)] = self.signatures
            self.signatures = grown
        self.signatures[number] = signature
        for table, key in zip(self.tables, keys):
            found = table.get(key)
            if found is None:
                table[key] = number
            elif isinstance(found, int):
                table[key] = [found, number]  # a band collision that was not a duplicate
            else:
                found.append(number)

    def match(self, exact_hash: int, signature: np.ndarray | None) -> Match | None:
        """None when the document is new (it is then remembered as kept number `self.kept`)."""
        if self.cfg.exact and exact_hash in self.exact:
            return Match("exact", self.exact[exact_hash], 1.0)
        keys: list[int] = []
        if self.cfg.near and signature is not None:
            keys = self._band_keys(signature)
            found = self._near(keys, signature)
            if found is not None:
                return found
        number = self.kept
        self.kept += 1
        if self.cfg.exact:
            self.exact[exact_hash] = number
        if self.cfg.near and signature is not None:
            self._remember(number, keys, signature)
        return None
