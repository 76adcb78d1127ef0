"""PDF text with running headers/footers removed and end-of-line hyphenation undone (pypdf)."""

from __future__ import annotations

import io
import re
from collections import Counter

from lmforge.corpus.errors import ExtractionError

# Lines this far from a page's top or bottom are header/footer candidates.
EDGE_LINES = 2
MIN_PAGES = 3
_DIGITS = re.compile(r"\d+")
# A number of at most 4 digits that opens or closes a line: where page numbers sit in headers.
_EDGE_NUMBER = re.compile(r"^\d{1,4}\b|\b\d{1,4}$")
_HYPHEN_BREAK = re.compile(r"([^\W\d_])-[ \t]*\n[ \t]*([^\W\d_]+)")


def read_pages(data: bytes) -> list[str]:
    """Text of every page. Raises ExtractionError for a corrupt or password-protected PDF."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")  # many PDFs are "encrypted" with an empty user password
            except Exception:  # pypdf raises several types here, e.g. when a cipher needs `cryptography`
                opened = 0
            if not opened:
                raise ExtractionError(
                    "the PDF is encrypted with a password; decrypt it first (e.g. `qpdf --decrypt`) or leave it out"
                )
        return [page.extract_text() or "" for page in reader.pages]
    except ExtractionError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, IndexError, AttributeError, OSError) as err:
        raise ExtractionError(
            f"not a readable PDF ({type(err).__name__}: {err}); re-export or repair it (e.g. `qpdf in.pdf out.pdf`)"
        ) from None


def _line_key(line: str) -> str:
    # "Page 3 of 10" and "Page 4 of 10" are the same running footer.
    return _DIGITS.sub("#", line.strip().lower())


def _edge_indices(lines: list[str]) -> list[int]:
    filled = [i for i, line in enumerate(lines) if line.strip()]
    return sorted(set(filled[:EDGE_LINES] + filled[-EDGE_LINES:]))


def _repeated_keys(split_pages: list[list[str]], repeat_fraction: float) -> set[str]:
    """Edge-line keys on more than `repeat_fraction` of all pages, or of the odd or the even pages
    (books alternate: title on even pages, chapter on odd ones; each is on only half of all pages)."""
    groups = [range(len(split_pages))]
    if len(split_pages) >= 2 * MIN_PAGES:
        groups += [range(0, len(split_pages), 2), range(1, len(split_pages), 2)]
    running: set[str] = set()
    for group in groups:
        counts: Counter[str] = Counter()
        for index in group:
            lines = split_pages[index]
            counts.update({_line_key(lines[i]) for i in _edge_indices(lines)})
        running.update(key for key, n in counts.items() if n > repeat_fraction * len(group) and key)
    return running


def _outer_indices(lines: list[str]) -> list[int]:
    """The first and last filled lines: where a page number sits. Only these, since a chapter that
    begins on page 1 has "1 Introduction" just below the number 1."""
    filled = [i for i, line in enumerate(lines) if line.strip()]
    return sorted({filled[0], filled[-1]}) if filled else []


def _page_number_offset(split_pages: list[list[str]], repeat_fraction: float) -> int | None:
    """The o for which a page's first or last line starts or ends with the number page_index + o,
    on more than `repeat_fraction` of the pages (printed numbers often start after front matter)."""
    counts: Counter[int] = Counter()
    for index, lines in enumerate(split_pages):
        offsets = set()
        for i in _outer_indices(lines):
            for number in _EDGE_NUMBER.findall(lines[i].strip()):
                offsets.add(int(number) - index)
        counts.update(offsets)
    if not counts:
        return None
    offset, pages = counts.most_common(1)[0]
    return offset if pages > repeat_fraction * len(split_pages) else None


def _has_page_number(line: str, number: int) -> bool:
    return any(int(found) == number for found in _EDGE_NUMBER.findall(line.strip()))


def remove_running_lines(pages: list[str], repeat_fraction: float) -> tuple[list[str], int]:
    """Drop lines near the top or bottom that recur on more than `repeat_fraction` of pages (or of
    the odd or even pages) once digits are ignored, and first or last lines that start or end with
    the page's printed number ("Chapter 2: Soil   17").

    Returns the cleaned pages and how many lines were removed. Needs at least 3 pages: with
    fewer, a repeated line is as likely to be content as a header.
    """
    if len(pages) < MIN_PAGES:
        return pages, 0
    split_pages = [page.splitlines() for page in pages]
    running = _repeated_keys(split_pages, repeat_fraction)
    offset = _page_number_offset(split_pages, repeat_fraction)
    removed = 0
    cleaned = []
    for index, lines in enumerate(split_pages):
        drop = {i for i in _edge_indices(lines) if _line_key(lines[i]) in running}
        if offset is not None:
            drop.update(i for i in _outer_indices(lines) if _has_page_number(lines[i], index + offset))
        removed += len(drop)
        cleaned.append("\n".join(line for i, line in enumerate(lines) if i not in drop))
    return cleaned, removed


def rejoin_hyphenation(text: str) -> str:
    """'exam-\\nple' -> 'example' when the word goes on in lowercase ('Jean-\\nPaul' is kept).

    The two lines become one, so the joined word is not left dangling at a line start.
    """

    def join(match: re.Match) -> str:
        head, tail = match.group(1), match.group(2)
        return head + tail if tail[0].islower() else match.group(0)

    return _HYPHEN_BREAK.sub(join, text)


def pdf_text(data: bytes, repeat_fraction: float) -> tuple[str, dict]:
    """The document text of a PDF and metadata (pages, header/footer lines removed)."""
    pages = read_pages(data)
    pages, removed = remove_running_lines(pages, repeat_fraction)
    text = rejoin_hyphenation("\n\n".join(pages))
    return text, {"pages": len(pages), "running_lines_removed": removed}
