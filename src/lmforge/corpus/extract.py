"""Read one input file (or a byte range of one) as documents, per format, streaming.

Formats: plain text, Markdown (markdown-it tokens to plain text), HTML (trafilatura main text:
no navigation, scripts, styles or boilerplate; `<pre>` blocks keep their lines and indentation,
header permalinks such as Sphinx's `¶` are dropped), PDF (see pdf.py), JSONL (one document per line,
text in `extract.text_field`), CSV/TSV (one document per row, text in `extract.text_column`),
DOCX (python-docx paragraphs and tables, in order), and gzip of any of them.

The text, JSONL and CSV/TSV bytes are read by `documents.read`; this module turns its records into
documents (`extract.text_field`, `extract.text_column`, `extract.metadata_fields`). A broken file
raises ExtractionError; a broken record (a JSONL line that is not JSON) is
appended to `problems` as (position, "file:line: why") and the rest of the file is still read, so
nothing read before a failure is lost.

A big CSV/TSV or .gz file is read here by the main process (`read_in_batches`), which hands its
documents to the workers in batches of about one work unit, in file order.
"""

from __future__ import annotations

import csv
import gzip
import html
import io
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from lmforge.corpus.config import ExtractConfig
from lmforge.corpus.errors import ExtractionError
from lmforge.corpus.pdf import pdf_text
from lmforge.documents.read import (
    FilePart,
    RawDocument,
    ReadError,
    ReadLog,
    check_not_binary,
    decode,
    jsonl_values,
    read_all,
    read_plain_text,
    table_rows,
)

ENCODING_SETTING = "extract.encoding_errors"
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
# Permalinks next to headings and definitions: Sphinx and MkDocs `<a class="headerlink">¶</a>`,
# and other generators' anchors whose only text is a mark.
_PERMALINKS = (
    "//a[contains(concat(' ', normalize-space(@class), ' '), ' headerlink ')]"
    " | //a[starts-with(@href, '#') and (normalize-space(.) = '¶' or normalize-space(.) = '§' or normalize-space(.) = '#')]"
)


@dataclass
class DocumentBatch:
    """Documents of a streamed file, read in file order by the main process, for one worker."""

    documents: list[RawDocument]
    bytes: int  # input consumed for them (compressed bytes for .gz)
    first: bool  # the file's first batch, which counts the file
    problems: list[tuple[str, str]] = field(default_factory=list)
    replaced_chars: int = 0
    failure: str | None = None


def _copy_fields(record: dict, names: list[str]) -> dict:
    return {
        name: record[name] for name in names if name in record and isinstance(record[name], (str, int, float, bool))
    }


def read_jsonl(part: FilePart, cfg: ExtractConfig, log: ReadLog) -> Iterator[RawDocument]:
    """One document per line, text in `extract.text_field`; a bad line is logged as file:line and skipped."""
    for line, record in jsonl_values(part, cfg.encoding_errors, log, ENCODING_SETTING):
        if not isinstance(record, dict) or not isinstance(record.get(cfg.text_field), str):
            log.problems.append(
                (
                    f"line{line}",
                    f"{part.file.path}:{line}: no string field '{cfg.text_field}'; fix the line or set extract.text_field",
                )
            )
            continue
        yield RawDocument(
            record[cfg.text_field], f"line{line}", {"line": line, **_copy_fields(record, cfg.metadata_fields)}
        )


def read_table(part: FilePart, cfg: ExtractConfig, log: ReadLog) -> Iterator[RawDocument]:
    """One document per row of a .csv (RFC 4180 quoting) or .tsv (tabs, no quoting), text in `extract.text_column`."""
    rows = table_rows(part, cfg.encoding_errors, log, quoting=part.file.format != "tsv", setting=ENCODING_SETTING)
    columns = next(rows, (0, []))[1]
    if cfg.text_column not in columns:
        shown = ", ".join(columns[:12]) or "none: the file is empty"
        raise ExtractionError(
            f"no column '{cfg.text_column}' (columns: {shown}); set extract.text_column to the column with the text"
        )
    for line, fields in rows:
        row = dict(zip(columns, fields))
        text = row.get(cfg.text_column)
        if text is None:
            log.problems.append(
                (f"row{line}", f"{part.file.path}:{line}: the row has no '{cfg.text_column}' value; fix the row")
            )
            continue
        yield RawDocument(text, f"row{line}", {"line": line, **_copy_fields(row, cfg.metadata_fields)})


def markdown_to_text(source: str) -> str:
    """Markdown to plain text: keep words, code and alt text; drop markup, link targets, raw HTML."""
    from markdown_it import MarkdownIt

    blocks: list[str] = []
    for token in MarkdownIt("commonmark").enable("table").parse(source):
        if token.type == "inline":
            parts = []
            for child in token.children or []:
                if child.type in ("text", "code_inline"):
                    parts.append(child.content)
                elif child.type in ("softbreak", "hardbreak"):
                    parts.append("\n")
                elif child.type == "image":
                    parts.append(child.content)
            blocks.append("".join(parts))
        elif token.type in ("fence", "code_block"):
            blocks.append(token.content.rstrip("\n"))
    return "\n\n".join(block for block in blocks if block.strip())


def _prepared_tree(data: bytes):
    """The page as an lxml tree without permalink marks, each `<pre>` reduced to one text span.

    trafilatura keeps a `<pre>` verbatim only when it holds a single span (or highlight.js spans);
    Sphinx and Pygments write one span per token, and such a block came out on one line
    ("def all(iterable): for element in ..."). The newlines around the code put it on lines of its
    own, also where trafilatura joins it to the paragraph before.
    """
    import trafilatura
    from lxml import etree

    tree = trafilatura.load_html(data)
    if tree is None:
        return data  # not HTML that lxml can parse; trafilatura says so by finding nothing
    for link in tree.xpath(_PERMALINKS):
        link.drop_tree()  # keeps the link's tail text
    for pre in list(tree.iter("pre")):  # a list: the loop edits the tree
        code = pre.text_content().strip("\n")
        for child in list(pre):
            pre.remove(child)
        pre.text = None
        etree.SubElement(pre, "span").text = f"\n{code}\n"
    return tree


def html_to_text(data: bytes, focus: str, fallback: bool = False) -> tuple[str, dict]:
    """Main text of an HTML page with trafilatura; '' when it finds no main content."""
    import trafilatura

    text = trafilatura.extract(
        _prepared_tree(data),
        fast=not fallback,
        output_format="txt",
        include_comments=False,
        include_tables=True,
        include_images=False,
        include_links=False,
        favor_precision=focus == "precision",
        favor_recall=focus == "recall",
    )
    meta = {}
    title = _TITLE.search(data[:65536])
    if title:
        meta["title"] = re.sub(r"\s+", " ", html.unescape(title.group(1).decode("utf-8", errors="replace"))).strip()
    return text or "", meta


def docx_to_text(data: bytes) -> str:
    """Paragraphs and table rows of a .docx, in document order."""
    import docx
    from docx.table import Table

    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as err:  # python-docx raises zipfile, KeyError and XML errors for broken files
        raise ExtractionError(
            f"not a readable .docx ({type(err).__name__}: {err}); re-save it from a word processor"
        ) from None
    blocks = []
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            for row in item.rows:
                blocks.append(" | ".join(cell.text.strip() for cell in row.cells))
        else:
            blocks.append(item.text)
    return "\n\n".join(block for block in blocks if block.strip())


def _whole_file_document(part: FilePart, cfg: ExtractConfig, log: ReadLog) -> RawDocument:
    data = read_all(part)
    fmt = part.file.format
    if fmt == "html":
        check_not_binary(data)
        text, meta = html_to_text(data, cfg.html_focus, cfg.html_fallback)
    elif fmt == "pdf":
        text, meta = pdf_text(data, cfg.pdf_repeat_fraction)
    elif fmt == "docx":
        text, meta = docx_to_text(data), {}
    else:  # markdown
        text, meta = markdown_to_text(decode(data, cfg.encoding_errors, log, ENCODING_SETTING)), {}
    return RawDocument(text, "0", meta)


def read_documents(part: FilePart, cfg: ExtractConfig, log: ReadLog) -> Iterator[RawDocument]:
    """Documents of one file part. Raises ExtractionError when the file cannot be read further."""
    try:
        fmt = part.file.format
        if fmt == "text":
            yield from read_plain_text(part, cfg.encoding_errors, log, cfg.max_document_chars, ENCODING_SETTING)
        elif fmt == "jsonl":
            yield from read_jsonl(part, cfg, log)
        elif fmt in ("csv", "tsv"):
            yield from read_table(part, cfg, log)
        else:
            yield _whole_file_document(part, cfg, log)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise ExtractionError(
            f"the gzip stream is broken or ends early ({err}); re-download or re-compress the file"
        ) from None
    except ReadError as err:
        raise ExtractionError(str(err)) from None
    except UnicodeDecodeError as err:
        raise ExtractionError(
            f"bytes at offset {err.start} are not UTF-8; convert the file to UTF-8 or set extract.encoding_errors: replace"
        ) from None
    except csv.Error as err:
        raise ExtractionError(f"not valid {part.file.format.upper()} ({err}); fix the quoting of that row") from None


def read_in_batches(part: FilePart, cfg: ExtractConfig, batch_chars: int) -> Iterator[DocumentBatch]:
    """The documents of a whole file in batches of about `batch_chars` characters, in file order.

    Runs in the main process for files that cannot be cut by byte offsets (CSV/TSV: quoted
    newlines; .gz: no seeking); each batch is one work unit. A read error ends the file with a
    last batch whose `failure` says why; the documents read before it are still handed out.
    """
    log = ReadLog()
    documents: list[RawDocument] = []
    chars, consumed, first = 0, 0, True

    def batch(failure: str | None = None) -> DocumentBatch:
        nonlocal documents, chars, consumed, first
        position = (
            part.file.size
            if failure is not None or log.raw is None or log.raw.closed
            else min(log.raw.tell(), part.file.size)
        )
        made = DocumentBatch(documents, position - consumed, first, log.problems[:], log.replaced_chars, failure)
        log.problems.clear()
        log.replaced_chars = 0
        documents, chars, consumed, first = [], 0, position, False
        return made

    try:
        for document in read_documents(part, cfg, log):
            documents.append(document)
            chars += len(document.text)
            if chars >= batch_chars:
                yield batch()
    except ExtractionError as err:
        yield batch(str(err))
        return
    except Exception as err:  # as in a worker: libraries raise anything on corrupt input
        yield batch(f"{type(err).__name__}: {err}; the file may be corrupt")
        return
    log.raw = None  # closed by now: the last batch takes the rest of the file's bytes
    yield batch()
