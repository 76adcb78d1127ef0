"""Cleaning steps, each switchable and counted: mojibake repair, Unicode normalisation, control
characters, whitespace, lowercasing and redaction of e-mail addresses, phone numbers and URLs.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable

from lmforge.corpus.config import CleanConfig

# C0 and C1 controls except tab and newline (\r is handled by the whitespace step), DEL, and
# stray byte-order marks left inside text by concatenated files.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff]")
_LINE_END_SPACE = re.compile(r"[^\S\n]+$", re.MULTILINE)
# Runs of spaces after the first non-blank of a line; leading indentation (code) is kept, and so
# is the indentation after a doctest prompt (">>> " or "... "; a fixed-width look-behind cannot
# tell a prompt from a mid-line "...", which keeps its two spaces too). Starting with the literal
# space lets `re` jump between spaces: 2x faster than a leading look-behind.
_INNER_SPACE = re.compile(r" (?<=\S )(?<!^>>> )(?<!^\.\.\. )(?<! >>> )(?<! \.\.\. ) +", re.MULTILINE)
_OTHER_SPACE = re.compile(r"[\u00a0\u2000-\u200a\u202f\u205f\u3000]")
_BLANK_LINES = re.compile(r"\n{3,}")
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_URL = re.compile(r"\b(?:https?://|ftp://|www\.)[^\s<>\"']*[^\s<>\"'.,;:!?)\]]")
# International (+49 30 1234567), bracketed area code ((030) 123 4567) or NANP (555-123-4567).
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,8}){1,4}"
    r"|\(\d{2,5}\)[ .-]?\d{3,4}[ .-]?\d{3,4}"
    r"|\d{3}[.-]\d{3}[.-]\d{4})(?![\w-])"
)
MIN_PHONE_DIGITS = 7
# UTF-8 read as Latin-1 or Windows-1252 always shows a lead byte as one of these characters; text
# without any cannot hold that mojibake, and skipping ftfy there saves ~150 ms per MB.
_MOJIBAKE_LEAD = re.compile(r"[\u00c2-\u00f4]")


def _fix_mojibake(text: str) -> str:
    if text.isascii() or not _MOJIBAKE_LEAD.search(text):
        return text
    import ftfy

    # Only encoding repairs: quotes, ligatures, widths and line breaks are left as written.
    config = ftfy.TextFixerConfig(
        unescape_html=False,
        remove_terminal_escapes=True,
        fix_latin_ligatures=False,
        fix_character_width=False,
        uncurl_quotes=False,
        fix_line_breaks=False,
        remove_control_chars=False,
        normalization=None,
        explain=False,
    )
    return ftfy.fix_text(text, config)


def _normalizer(form: str) -> Callable[[str], str]:
    def normalize(text: str) -> str:
        if text.isascii() or unicodedata.is_normalized(form, text):
            return text
        return unicodedata.normalize(form, text)

    return normalize


def _remove_controls(text: str) -> str:
    return _CONTROL.sub("", text)


def _normalize_whitespace(text: str) -> str:
    # Each regex runs only when a cheap `in` test says it could change something: most documents
    # need none of them, and the scans cost ~30 ms per MB each.
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\t" in text:
        text = text.replace("\t", " ")
    if not text.isascii():
        text = _OTHER_SPACE.sub(" ", text)
    if " \n" in text or text.endswith(" "):
        text = _LINE_END_SPACE.sub("", text)
    if "  " in text:
        text = _INNER_SPACE.sub(" ", text)
    if "\n\n\n" in text:
        text = _BLANK_LINES.sub("\n\n", text)
    return text.strip("\n")


def _phone_or_keep(match: re.Match) -> str:
    digits = sum(ch.isdigit() for ch in match.group(0))
    return "[PHONE]" if digits >= MIN_PHONE_DIGITS else match.group(0)


class Cleaner:
    """Apply the enabled steps in order; `counts[step]` is the number of documents each changed."""

    def __init__(self, cfg: CleanConfig):
        steps: list[tuple[str, Callable[[str], str]]] = []
        if cfg.fix_mojibake:
            steps.append(("fix_mojibake", _fix_mojibake))
        if cfg.unicode_normalization != "none":
            steps.append((f"unicode_{cfg.unicode_normalization}", _normalizer(cfg.unicode_normalization)))
        if cfg.control_chars:
            steps.append(("control_chars", _remove_controls))
        if cfg.whitespace:
            steps.append(("whitespace", _normalize_whitespace))
        if cfg.lowercase:
            steps.append(("lowercase", str.lower))
        self.steps = steps
        # Redaction runs last so its placeholders survive lowercasing unchanged.
        self.redactions: list[tuple[str, re.Pattern, object]] = []
        if cfg.redact_emails:
            self.redactions.append(("emails", _EMAIL, "[EMAIL]"))
        if cfg.redact_urls:
            self.redactions.append(("urls", _URL, "[URL]"))
        if cfg.redact_phones:
            self.redactions.append(("phones", _PHONE, _phone_or_keep))
        self.counts: Counter[str] = Counter()
        self.chars_removed: Counter[str] = Counter()
        self.redacted: Counter[str] = Counter()

    def __call__(self, text: str) -> str:
        for name, step in self.steps:
            cleaned = step(text)
            if cleaned != text:
                self.counts[name] += 1
                self.chars_removed[name] += len(text) - len(cleaned)
                text = cleaned
        for name, pattern, replacement in self.redactions:
            before = text
            text, found = pattern.subn(replacement, text)
            if name == "phones":  # subn also counts the short numbers kept as they were
                found = text.count("[PHONE]") - before.count("[PHONE]")
            if found:
                self.redacted[name] += found
                self.counts[f"redact_{name}"] += 1
        return text
