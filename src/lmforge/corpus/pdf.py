"""PDF text with running headers/footers removed and end-of-line hyphenation undone (pypdf)."""

from __future__ import annotations

import io
import re
from collections import Counter

from lmforge.corpus.errors import ExtractionError

# Lines this far from a page's top or bottom are header/footer candidates.
EDGE_LINES = 2
_DIGITS = re.compile(r"\d+")
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
                raise ExtractionError("the PDF is encrypted with a password; decrypt it first (e.g. `qpdf --decrypt`) or leave it out")
        return [page.extract_text() or "" for page in reader.pages]
    except ExtractionError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, IndexError, AttributeError, OSError) as err:
        raise ExtractionError(f"not a readable PDF ({type(err).__name__}: {err}); re-export or repair it (e.g. `qpdf in.pdf out.pdf`)") from None


def _line_key(line: str) -> str:
    # "Page 3 of 10" and "Page 4 of 10" are the same running footer.
    return _DIGITS.sub("#", line.strip().lower())


def _edge_indices(lines: list[str]) -> list[int]:
    filled = [i for i, line in enumerate(lines) if line.strip()]
    return sorted(set(filled[:EDGE_LINES] + filled[-EDGE_LINES:]))


def remove_running_lines(pages: list[str], repeat_fraction: float) -> tuple[list[str], int]:
    """Drop lines near the top or bottom that recur on more than `repeat_fraction` of pages.

    Returns the cleaned pages and how many lines were removed. Needs at least 3 pages: with
    fewer, a repeated line is as likely to be content as a header.
    """
    if len(pages) < 3:
        return pages, 0
    split_pages = [page.splitlines() for page in pages]
    counts: Counter[str] = Counter()
    for lines in split_pages:
        counts.update({_line_key(lines[i]) for i in _edge_indices(lines)})
    running = {key for key, n in counts.items() if n > repeat_fraction * len(pages) and key}
    removed = 0
    cleaned = []
    for lines in split_pages:
        drop = {i for i in _edge_indices(lines) if _line_key(lines[i]) in running}
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
