"""Read one input file (or a byte range of one) as documents, per format, streaming.

Formats: plain text, Markdown (markdown-it tokens to plain text), HTML (trafilatura main text:
no navigation, scripts, styles or boilerplate; `<pre>` blocks keep their lines and indentation,
header permalinks such as Sphinx's `¶` are dropped), PDF (see pdf.py), JSONL (one document per line,
text in `extract.text_field`), CSV/TSV (one document per row, text in `extract.text_column`),
DOCX (python-docx paragraphs and tables, in order), and gzip of any of them.

A broken file raises ExtractionError; a broken record (a JSONL line that is not JSON) is
appended to `problems` as (position, "file:line: why") and the rest of the file is still read, so
nothing read before a failure is lost.

A big CSV/TSV or .gz file is read here by the main process (`read_in_batches`), which hands its
documents to the workers in batches of about one work unit, in file order.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import html
import io
import json
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO

from lmforge.corpus.config import ExtractConfig
from lmforge.corpus.errors import ExtractionError
from lmforge.corpus.pdf import pdf_text
from lmforge.corpus.sources import FilePart

BLOCK_BYTES = 1 << 20
SNIFF_BYTES = 8192
# Above this share of U+FFFD after decoding, a "text" file is really binary.
MAX_REPLACED_FRACTION = 0.1
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
# Permalinks next to headings and definitions: Sphinx and MkDocs `<a class="headerlink">¶</a>`,
# and other generators' anchors whose only text is a mark.
_PERMALINKS = ("//a[contains(concat(' ', normalize-space(@class), ' '), ' headerlink ')]"
               " | //a[starts-with(@href, '#') and (normalize-space(.) = '¶' or normalize-space(.) = '§' or normalize-space(.) = '#')]")
_PARAGRAPH_BREAK = "\n\n"


@dataclass
class RawDocument:
    """Extracted text before cleaning; `position` (line, chunk) makes its doc_id unique in the file."""

    text: str
    position: str
    meta: dict = field(default_factory=dict)


@dataclass
class ReadLog:
    """What reading one file noticed besides documents; `raw` is the open file under any gzip
    layer, whose position says how much of the input has been read."""

    problems: list[tuple[str, str]] = field(default_factory=list)  # (position, "file:line: why")
    replaced_chars: int = 0
    raw: BinaryIO | None = None


@dataclass
class DocumentBatch:
    """Documents of a streamed file, read in file order by the main process, for one worker."""

    documents: list[RawDocument]
    bytes: int  # input consumed for them (compressed bytes for .gz)
    first: bool  # the file's first batch, which counts the file
    problems: list[tuple[str, str]] = field(default_factory=list)
    replaced_chars: int = 0
    failure: str | None = None


@contextmanager
def _open(part: FilePart, log: ReadLog | None = None) -> Iterator[BinaryIO]:
    with open(part.file.path, "rb") as raw:
        if log is not None:
            log.raw = raw
        if part.file.gzip:
            with gzip.GzipFile(fileobj=raw, mode="rb") as handle:
                yield handle
        else:
            yield raw


def _read_all(part: FilePart) -> bytes:
    with _open(part) as handle:
        return handle.read()


def _check_not_binary(head: bytes) -> None:
    # UTF-16 text has NUL bytes too, but starts with a byte-order mark.
    if b"\x00" in head[:SNIFF_BYTES] and not head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ExtractionError("binary data (NUL bytes) where text was expected; remove the file or give it its real suffix")


def decode(data: bytes, errors: str, log: ReadLog) -> str:
    """Bytes of a whole file to text: UTF-8 (BOM allowed) or BOM-marked UTF-16."""
    _check_not_binary(data)
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", errors="replace")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        if errors == "skip":
            raise ExtractionError(f"bytes at offset {err.start} are not UTF-8; convert the file to UTF-8 or set extract.encoding_errors: replace") from None
    text = data.decode("utf-8-sig", errors="replace")
    replaced = text.count("\ufffd")
    if replaced > MAX_REPLACED_FRACTION * max(len(text), 1):
        raise ExtractionError(f"{replaced} of {len(text)} characters are not UTF-8: this is not text; convert it to UTF-8 or leave it out")
    log.replaced_chars += replaced
    return text


def _byte_blocks(part: FilePart, log: ReadLog) -> Iterator[bytes]:
    with _open(part, log) as handle:
        if part.start:
            handle.seek(part.start)
        remaining = None if part.end is None else part.end - part.start
        # gzip: read1 returns what one step of decompression gives, so a stream that ends early
        # loses only its last piece; read(n) would drop everything decompressed in the call.
        read = handle.read1 if part.file.gzip else handle.read
        while remaining is None or remaining > 0:
            block = read(BLOCK_BYTES if remaining is None else min(BLOCK_BYTES, remaining))
            if not block:
                return
            if remaining is not None:
                remaining -= len(block)
            yield block


def _text_blocks(part: FilePart, errors: str, log: ReadLog) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict" if errors == "skip" else "replace")
    offset = part.start
    for number, block in enumerate(_byte_blocks(part, log)):
        if number == 0:
            _check_not_binary(block)
            if part.start == 0 and block.startswith(codecs.BOM_UTF8):
                block = block[len(codecs.BOM_UTF8):]
            elif part.start == 0 and block.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                decoder = codecs.getincrementaldecoder("utf-16")(errors="replace")
        try:
            text = decoder.decode(block)
        except UnicodeDecodeError as err:
            raise ExtractionError(f"bytes at offset {offset + err.start} are not UTF-8; convert the file to UTF-8 or set extract.encoding_errors: replace") from None
        replaced = text.count("\ufffd")
        if number == 0 and replaced > MAX_REPLACED_FRACTION * max(len(text), 1):
            raise ExtractionError(f"{replaced} of the first {len(text)} characters are not UTF-8: this is not text; convert it to UTF-8 or leave it out")
        log.replaced_chars += replaced
        offset += len(block)
        yield text
    yield decoder.decode(b"", final=True)


def read_plain_text(part: FilePart, cfg: ExtractConfig, log: ReadLog) -> Iterator[RawDocument]:
    """A text file is one document; past `max_document_chars` it is cut at paragraph breaks."""
    limit = cfg.max_document_chars
    buffer = ""
    pieces = 0
    for text in _text_blocks(part, cfg.encoding_errors, log):
        buffer += text
        while len(buffer) > limit:
            cut = buffer.rfind(_PARAGRAPH_BREAK, 0, limit)
            if cut <= 0:
                cut = buffer.rfind("\n", 0, limit)
            if cut <= 0:
                cut = limit
            yield RawDocument(buffer[:cut], f"{part.chunk}.{pieces}", {"piece": pieces})
            buffer = buffer[cut:].lstrip("\n")
            pieces += 1
    if buffer or pieces == 0:
        yield RawDocument(buffer, f"{part.chunk}.{pieces}", {"piece": pieces} if pieces else {})


def _copy_fields(record: dict, names: list[str]) -> dict:
    return {name: record[name] for name in names if name in record and isinstance(record[name], (str, int, float, bool))}


def read_jsonl(part: FilePart, cfg: ExtractConfig, log: ReadLog) -> Iterator[RawDocument]:
    """One document per line; a bad line is logged as file:line and skipped."""
    path = part.file.path
    errors = "strict" if cfg.encoding_errors == "skip" else "replace"
    pending = b""
    line = part.first_line
    for number, block in enumerate(_byte_blocks(part, log)):
        if number == 0:
            _check_not_binary(block)
        lines = (pending + block).split(b"\n")
        pending = lines.pop()
        for raw in lines:
            yield from _jsonl_record(raw, path, line, cfg, errors, log)
            line += 1
    if pending.strip():
        yield from _jsonl_record(pending, path, line, cfg, errors, log)


def _jsonl_record(raw: bytes, path: str, line: int, cfg: ExtractConfig, errors: str, log: ReadLog) -> Iterator[RawDocument]:
    if not raw.strip():
        return
    try:
        record = json.loads(raw.decode("utf-8", errors=errors))
    except UnicodeDecodeError as err:
        log.problems.append((f"line{line}", f"{path}:{line}: bytes are not UTF-8 ({err.reason}); convert the file or set extract.encoding_errors: replace"))
        return
    except ValueError as err:
        log.problems.append((f"line{line}", f"{path}:{line}: not valid JSON ({err}); fix or remove that line"))
        return
    if not isinstance(record, dict) or not isinstance(record.get(cfg.text_field), str):
        log.problems.append((f"line{line}", f"{path}:{line}: no string field '{cfg.text_field}'; fix the line or set extract.text_field"))
        return
    yield RawDocument(record[cfg.text_field], f"line{line}", {"line": line, **_copy_fields(record, cfg.metadata_fields)})


def read_table(part: FilePart, cfg: ExtractConfig, log: ReadLog) -> Iterator[RawDocument]:
    """One document per row of a .csv (RFC 4180 quoting) or .tsv (tabs, no quoting)."""
    csv.field_size_limit(1 << 30)
    tsv = part.file.format == "tsv"
    with _open(part, log) as raw:
        _check_not_binary(raw.peek(SNIFF_BYTES)[:SNIFF_BYTES] if hasattr(raw, "peek") else b"")
        errors = "strict" if cfg.encoding_errors == "skip" else "replace"
        handle = io.TextIOWrapper(raw, encoding="utf-8-sig", errors=errors, newline="")
        reader = csv.DictReader(handle, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
        columns = reader.fieldnames or []
        if cfg.text_column not in columns:
            shown = ", ".join(columns[:12]) or "none: the file is empty"
            raise ExtractionError(f"no column '{cfg.text_column}' (columns: {shown}); set extract.text_column to the column with the text")
        for row in reader:
            text = row.get(cfg.text_column)
            if text is None:
                log.problems.append((f"row{reader.line_num}", f"{part.file.path}:{reader.line_num}: the row has no '{cfg.text_column}' value; fix the row"))
                continue
            yield RawDocument(text, f"row{reader.line_num}", {"line": reader.line_num, **_copy_fields(row, cfg.metadata_fields)})


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
        _prepared_tree(data), fast=not fallback, output_format="txt", include_comments=False, include_tables=True, include_images=False,
        include_links=False, favor_precision=focus == "precision", favor_recall=focus == "recall",
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
        raise ExtractionError(f"not a readable .docx ({type(err).__name__}: {err}); re-save it from a word processor") from None
    blocks = []
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            for row in item.rows:
                blocks.append(" | ".join(cell.text.strip() for cell in row.cells))
        else:
            blocks.append(item.text)
    return "\n\n".join(block for block in blocks if block.strip())


def _whole_file_document(part: FilePart, cfg: ExtractConfig, log: ReadLog) -> RawDocument:
    data = _read_all(part)
    fmt = part.file.format
    if fmt == "html":
        _check_not_binary(data)
        text, meta = html_to_text(data, cfg.html_focus, cfg.html_fallback)
    elif fmt == "pdf":
        text, meta = pdf_text(data, cfg.pdf_repeat_fraction)
    elif fmt == "docx":
        text, meta = docx_to_text(data), {}
    else:  # markdown
        text, meta = markdown_to_text(decode(data, cfg.encoding_errors, log)), {}
    return RawDocument(text, "0", meta)


def read_documents(part: FilePart, cfg: ExtractConfig, log: ReadLog) -> Iterator[RawDocument]:
    """Documents of one file part. Raises ExtractionError when the file cannot be read further."""
    try:
        fmt = part.file.format
        if fmt == "text":
            yield from read_plain_text(part, cfg, log)
        elif fmt == "jsonl":
            yield from read_jsonl(part, cfg, log)
        elif fmt in ("csv", "tsv"):
            yield from read_table(part, cfg, log)
        else:
            yield _whole_file_document(part, cfg, log)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise ExtractionError(f"the gzip stream is broken or ends early ({err}); re-download or re-compress the file") from None
    except UnicodeDecodeError as err:
        raise ExtractionError(f"bytes at offset {err.start} are not UTF-8; convert the file to UTF-8 or set extract.encoding_errors: replace") from None
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
        position = part.file.size if failure is not None or log.raw is None or log.raw.closed else min(log.raw.tell(), part.file.size)
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
