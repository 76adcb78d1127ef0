"""Cut documents into snippets of uniform length (words or tokens, with overlap) that end at
sentence boundaries, the way retrieval and QA preprocessing (e.g. DPR's 100-word passages) does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from lmforge import tokenizer as tokenizer_mod
from lmforge.corpus.config import SnippetConfig
from lmforge.errors import LmforgeError

# A sentence ends at . ! ? or … (plus closing quotes/brackets: group 1) followed by space and a
# capital, digit or opening quote.
_BOUNDARY = re.compile(r"([.!?…][\"'”’)\]]*)\s+(?=[\"'“‘(\[]?[A-Z0-9À-ÖØ-Þ])")
_PARAGRAPH = re.compile(r"\n\s*\n")
_ABBREVIATIONS = {
    "mr",
    "mrs",
    "ms",
    "dr",
    "prof",
    "sr",
    "jr",
    "st",
    "vs",
    "etc",
    "e.g",
    "i.e",
    "cf",
    "fig",
    "figs",
    "no",
    "nos",
    "vol",
    "pp",
    "p",
    "eq",
    "eqs",
    "approx",
    "ca",
    "al",
    "inc",
    "ltd",
    "co",
    "corp",
    "dept",
    "jan",
    "feb",
    "mar",
    "apr",
    "jun",
    "jul",
    "aug",
    "sep",
    "sept",
    "oct",
    "nov",
    "dec",
    "u.s",
    "u.k",
    "sec",
    "ch",
}


def sentences(text: str) -> list[str]:
    """Sentences of `text`, paragraph breaks always ending one; abbreviations and initials do not."""
    found: list[str] = []
    for paragraph in _PARAGRAPH.split(text):
        start = 0
        for boundary in _BOUNDARY.finditer(paragraph):
            before = paragraph[start : boundary.start() + 1].rsplit(None, 1)
            last_word = before[-1].rstrip(".!?…\"')]").lower() if before else ""
            if last_word in _ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha()):
                continue
            found.append(paragraph[start : boundary.end(1)].strip())
            start = boundary.end()
        found.append(paragraph[start:].strip())
    return [s for s in found if s]


def load_token_counter(path: str) -> Callable[[list[str]], list[int]]:
    """Token counts per string with a tokenizer folder (tokenizer.json) or file; LmforgeError if absent."""
    from tokenizers import Tokenizer

    file = Path(path)
    if file.is_dir():
        file = file / "tokenizer.json"
    if not file.is_file():
        raise LmforgeError(
            f"snippets.tokenizer {path}: no tokenizer.json there; pass a folder made by `lmforge tokenizer` or a tokenizer.json file"
        )
    tokenizer = Tokenizer.from_file(str(file))
    tokenizer.no_padding()  # a saved padding (MiniLM's: 128) would make every count 128
    tokenizer.no_truncation()

    def count(pieces: list[str]) -> list[int]:
        return [len(tokenizer_mod.encode_text(tokenizer, piece)) for piece in pieces]  # as the shards will count them

    return count


def _word_counts(pieces: list[str]) -> list[int]:
    return [len(piece.split()) for piece in pieces]


class Snipper:
    """`cut(text)` -> snippets: pieces (sentences, or words) packed greedily up to the length."""

    def __init__(self, cfg: SnippetConfig):
        self.cfg = cfg
        if cfg.length_unit == "tokens":
            self.measure = load_token_counter(cfg.tokenizer or "")
        else:
            self.measure = _word_counts

    def _pieces(self, text: str) -> tuple[list[str], list[int]]:
        units = sentences(text) if self.cfg.respect_sentences else text.split()
        lengths = self.measure(units) if units else []
        pieces, sizes = [], []
        for unit, size in zip(units, lengths):
            if size <= self.cfg.length:
                pieces.append(unit)
                sizes.append(size)
                continue
            # A sentence longer than a snippet is cut into word runs that fit.
            words = unit.split()
            word_sizes = self.measure(words)
            run, run_size = [], 0
            for word, word_size in zip(words, word_sizes):
                if run and run_size + word_size > self.cfg.length:
                    pieces.append(" ".join(run))
                    sizes.append(run_size)
                    run, run_size = [], 0
                run.append(word)
                run_size += word_size
            if run:
                pieces.append(" ".join(run))
                sizes.append(run_size)
        return pieces, sizes

    def cut(self, text: str) -> list[str]:
        pieces, sizes = self._pieces(text)
        limit, overlap = self.cfg.length, self.cfg.overlap
        snippets: list[str] = []
        start = 0
        while start < len(pieces):
            end, total = start, 0
            while end < len(pieces) and (end == start or total + sizes[end] <= limit):
                total += sizes[end]
                end += 1
            snippets.append(" ".join(pieces[start:end]))
            if end >= len(pieces):
                break
            # Step back over whole pieces that fit in the overlap, but always move forward.
            back, shared = end, 0
            while back - 1 > start and shared + sizes[back - 1] <= overlap:
                back -= 1
                shared += sizes[back]
            start = back
        return snippets
