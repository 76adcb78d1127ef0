"""Document quality filters after Gopher (Rae et al., 2021) and C4 (Raffel et al., 2020),
plus language identification with py3langid.

Each document is charged to the first filter that rejects it, so the report's counts add up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lmforge.corpus.config import FilterConfig

_NOT_LETTER = re.compile(r"[\W\d_]+")
_PARAGRAPHS = re.compile(r"\n\s*\n")
# Language identification reads the start of a document. py3langid walks its n-gram automaton
# in Python at ~1 us per byte, so the sample is short: 600 characters identify the major
# languages reliably.
LANGUAGE_SAMPLE_CHARS = 600
# Every ASCII byte that is not a letter, deleted by bytes.translate to count letters fast.
_ASCII_NOT_LETTERS = bytes(b for b in range(128) if not chr(b).isalpha())
_IDENTIFIER = None


def identify_language(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) from py3langid's bundled model; the model loads once per process."""
    global _IDENTIFIER
    if _IDENTIFIER is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _IDENTIFIER = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    language, probability = _IDENTIFIER.classify(text[:LANGUAGE_SAMPLE_CHARS])
    return language, float(probability)


def _repeated_fraction(items: list[str]) -> float:
    """Share of items that repeat an earlier item (Gopher's dup_line_frac / dup_para_frac)."""
    if len(items) < 2:
        return 0.0
    return (len(items) - len(set(items))) / len(items)


@dataclass
class Verdict:
    reason: str | None
    language: str | None
    words: int


class QualityFilter:
    """`check(text)` -> Verdict with the first failing filter's name, or reason None to keep."""

    def __init__(self, cfg: FilterConfig):
        self.cfg = cfg
        self.languages = {code.lower() for code in cfg.languages}

    def _shape_reason(self, text: str, words: list[str]) -> str | None:
        cfg = self.cfg
        if not words:
            return "empty"
        if cfg.min_words and len(words) < cfg.min_words:
            return "too_few_words"
        if cfg.max_words and len(words) > cfg.max_words:
            return "too_many_words"
        longest = max(map(len, words))
        if cfg.max_word_chars and longest > cfg.max_word_chars:
            return "very_long_word"
        non_space = sum(map(len, words))
        mean_length = non_space / len(words)
        if cfg.min_mean_word_length and mean_length < cfg.min_mean_word_length:
            return "mean_word_length"
        if cfg.max_mean_word_length and mean_length > cfg.max_mean_word_length:
            return "mean_word_length"
        if cfg.min_alpha_ratio:
            if text.isascii():
                letters = len(text.encode("ascii").translate(None, _ASCII_NOT_LETTERS))
            else:
                letters = len(_NOT_LETTER.sub("", text))
            if letters < cfg.min_alpha_ratio * non_space:
                return "alpha_ratio"
        return None

    def _repetition_reason(self, text: str) -> str | None:
        cfg = self.cfg
        if cfg.max_duplicate_line_fraction < 1:
            lines = [line.strip() for line in text.split("\n") if line.strip()]
            if _repeated_fraction(lines) > cfg.max_duplicate_line_fraction:
                return "repeated_lines"
        if cfg.max_duplicate_paragraph_fraction < 1:
            paragraphs = [p.strip() for p in _PARAGRAPHS.split(text) if p.strip()]
            if _repeated_fraction(paragraphs) > cfg.max_duplicate_paragraph_fraction:
                return "repeated_paragraphs"
        return None

    def check(self, text: str) -> Verdict:
        words = text.split()
        reason = self._shape_reason(text, words) or self._repetition_reason(text)
        language = None
        if reason is None and (self.cfg.detect_language or self.languages):
            language, probability = identify_language(text)
            if self.languages and (language not in self.languages or probability < self.cfg.min_language_score):
                reason = "language"
        return Verdict(reason, language, len(words))
