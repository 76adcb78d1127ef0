"""Read found files, streaming: text through one incremental decoder, JSONL line by line, CSV/TSV
row by row, each optionally gzipped, and whole or as a byte range of the file.

Text is UTF-8 (a leading BOM dropped) or BOM-marked UTF-16. `encoding_errors` is the one choice
about other bytes: "strict" raises ReadError naming the byte offset (or file:line for JSONL and
CSV), "replace" substitutes U+FFFD and counts the replacements. Data with NUL bytes, or with more
than 10% of its first block replaced, is not text and raises ReadError either way.

ReadError messages name the offset or line and the fix; the caller adds the path where it is not
in the message already (the corpus stage records failures per file and goes on, the other
stages stop).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from lmforge.config import option
from lmforge.documents.find import InputFile, input_file
from lmforge.errors import LmforgeError

BLOCK_BYTES = 1 << 20
SNIFF_BYTES = 8192
# Above this share of U+FFFD after decoding, a "text" file is really binary.
MAX_REPLACED_FRACTION = 0.1
_PARAGRAPH_BREAK = "\n\n"
EncodingErrors = Literal["strict", "replace"]
# The flag the text stages' messages name (the corpus stage names extract.encoding_errors).
ENCODING_SETTING = "read.encoding_errors"


@dataclass
class ReadConfig:
    """How the text stages (tokenizer, shards, pretrain, evaluate: `--read.*`) read their inputs."""

    encoding_errors: EncodingErrors = option(
        "strict", "non-UTF-8 bytes: strict stops with file and byte offset; replace substitutes U+FFFD and counts them"
    )
    text_field: str = option("text", "field holding the text in .jsonl inputs")


class ReadError(Exception):
    """A file (or one record of it) that cannot be read; the message says why and what to do."""


@dataclass(frozen=True)
class FilePart:
    """A whole file, or the byte range [start, end) of one that begins at line `first_line`."""

    file: InputFile
    start: int = 0
    end: int | None = None
    first_line: int = 1
    chunk: int = 0


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
class DecodeStats:
    """U+FFFD substitutions per file, over a whole run (the text stages' report)."""

    replaced: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.replaced.values())


def _fix(setting: str | None) -> str:
    return (
        f"convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8) or set {setting}: replace"
        if setting
        else "convert the file to UTF-8"
    )


def check_not_binary(head: bytes) -> None:
    # UTF-16 text has NUL bytes too, but starts with a byte-order mark.
    if b"\x00" in head[:SNIFF_BYTES] and not head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ReadError("binary data (NUL bytes) where text was expected; remove the file or give it its real suffix")


class TextDecoder:
    """The one incremental decoder: feed the blocks of a file (from byte `start`) in order.

    `setting` is the flag named in the fix of an error message (e.g. `read.encoding_errors`).
    """

    def __init__(self, errors: EncodingErrors = "strict", start: int = 0, setting: str | None = None):
        self.start, self.offset, self.setting = start, start, setting
        self.replaced = 0  # in the last decode() call
        self._first = True
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors=errors)

    def decode(self, block: bytes, final: bool = False) -> str:
        first = self._first and bool(block)  # the first non-empty block: sniff it, look for a BOM
        if first:
            self._first = False
            check_not_binary(block)
            if self.start == 0 and block.startswith(codecs.BOM_UTF8):
                block, self.offset = block[len(codecs.BOM_UTF8) :], self.offset + len(codecs.BOM_UTF8)
            elif self.start == 0 and block.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                self._decoder = codecs.getincrementaldecoder("utf-16")(errors="replace")
        try:
            text = self._decoder.decode(block, final)
        except UnicodeDecodeError as err:
            raise ReadError(
                f"bytes at offset {self.offset + err.start} are not UTF-8 ({err.reason}); {_fix(self.setting)}"
            ) from None
        self.replaced = text.count("\ufffd")
        if first and self.replaced > MAX_REPLACED_FRACTION * max(len(text), 1):
            raise ReadError(
                f"{self.replaced} of the first {len(text)} characters are not UTF-8: this is not text; convert it to UTF-8 or leave it out"
            )
        self.offset += len(block)
        return text


@contextmanager
def open_part(part: FilePart, log: ReadLog | None = None) -> Iterator[BinaryIO]:
    with open(part.file.path, "rb") as raw:
        if log is not None:
            log.raw = raw
        if part.file.gzip:
            with gzip.GzipFile(fileobj=raw, mode="rb") as handle:
                yield handle
        else:
            yield raw


def read_all(part: FilePart) -> bytes:
    with open_part(part) as handle:
        return handle.read()


def decode(data: bytes, errors: EncodingErrors, log: ReadLog, setting: str | None = None) -> str:
    """Bytes of a whole file to text (see TextDecoder)."""
    decoder = TextDecoder(errors, 0, setting)
    text = decoder.decode(data, final=True)
    log.replaced_chars += decoder.replaced
    return text


def byte_blocks(part: FilePart, log: ReadLog) -> Iterator[bytes]:
    """The part's bytes (decompressed for .gz) in blocks of up to BLOCK_BYTES."""
    with open_part(part, log) as handle:
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


def line_blocks(blocks: Iterator[bytes]) -> Iterator[bytes]:
    """`blocks` regrouped so that each ends just after a newline (the last one: where the data ends)."""
    carry = b""
    for block in blocks:
        data = carry + block
        cut = data.rfind(b"\n") + 1
        carry = data[cut:]
        if cut:
            yield data[:cut]
    if carry:
        yield carry


def text_blocks(
    part: FilePart, errors: EncodingErrors, log: ReadLog, setting: str | None = None, lines: bool = False
) -> Iterator[str]:
    """Decoded text of the part, block by block (`lines`: blocks cut at line ends); replacements
    are counted in `log.replaced_chars`."""
    decoder = TextDecoder(errors, part.start, setting)
    blocks = byte_blocks(part, log)
    for block in line_blocks(blocks) if lines else blocks:
        text = decoder.decode(block)
        log.replaced_chars += decoder.replaced
        yield text
    tail = decoder.decode(b"", final=True)
    if tail or not lines:
        yield tail


def read_plain_text(
    part: FilePart, errors: EncodingErrors, log: ReadLog, max_chars: int, setting: str | None = None
) -> Iterator[RawDocument]:
    """A text file is one document; past `max_chars` it is cut at paragraph breaks."""
    buffer = ""
    pieces = 0
    for text in text_blocks(part, errors, log, setting):
        buffer += text
        while len(buffer) > max_chars:
            cut = buffer.rfind(_PARAGRAPH_BREAK, 0, max_chars)
            if cut <= 0:
                cut = buffer.rfind("\n", 0, max_chars)
            if cut <= 0:
                cut = max_chars
            yield RawDocument(buffer[:cut], f"{part.chunk}.{pieces}", {"piece": pieces})
            buffer = buffer[cut:].lstrip("\n")
            pieces += 1
    if buffer or pieces == 0:
        yield RawDocument(buffer, f"{part.chunk}.{pieces}", {"piece": pieces} if pieces else {})


def jsonl_values(
    part: FilePart, errors: EncodingErrors, log: ReadLog, setting: str | None = None, problems: bool = True
) -> Iterator[tuple[int, Any]]:
    """(line, JSON value) for each non-blank line. A line that is not UTF-8 or not JSON is appended to
    `log.problems` as ("lineN", "file:N: why") and skipped, or with `problems=False` raises ReadError."""
    path = part.file.path
    pending = b""
    line = part.first_line

    def parse(raw: bytes) -> Iterator[tuple[int, Any]]:
        if not raw.strip():
            return
        if line == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            yield line, json.loads(raw.decode("utf-8", errors=errors))
            return
        except UnicodeDecodeError as err:
            message = f"{path}:{line}: bytes are not UTF-8 ({err.reason}); {_fix(setting)}"
        except ValueError as err:
            message = f"{path}:{line}: not valid JSON ({err}); fix or remove that line"
        if not problems:
            raise ReadError(message)
        log.problems.append((f"line{line}", message))

    for number, block in enumerate(byte_blocks(part, log)):
        if number == 0:
            check_not_binary(block)
        lines = (pending + block).split(b"\n")
        pending = lines.pop()
        for raw in lines:
            yield from parse(raw)
            line += 1
    yield from parse(pending)


def table_rows(
    part: FilePart, errors: EncodingErrors, log: ReadLog, quoting: bool, setting: str | None = None
) -> Iterator[tuple[int, list[str]]]:
    """(line, fields) for each non-empty row of a .csv (RFC 4180 quoting when `quoting`) or .tsv
    (tab-separated) file; `line` is the row's last line. Raises csv.Error for broken quoting."""
    csv.field_size_limit(1 << 30)
    delimiter = "\t" if part.file.format == "tsv" else ","
    line = 0
    with open_part(part, log) as raw:
        check_not_binary(raw.peek(SNIFF_BYTES)[:SNIFF_BYTES] if hasattr(raw, "peek") else b"")
        handle = io.TextIOWrapper(raw, encoding="utf-8-sig", errors=errors, newline="")
        reader = csv.reader(handle, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
        try:
            for row in reader:
                line = reader.line_num
                if row:
                    yield line, row
        except UnicodeDecodeError as err:
            raise ReadError(
                f"{part.file.path}: bytes after line {line} are not UTF-8 ({err.reason}); {_fix(setting)}"
            ) from None


def whole(path: str | Path, fmt: str | None = None) -> FilePart:
    """The FilePart of a whole file (`fmt` overrides the format guessed from the suffix)."""
    return FilePart(input_file(path, fmt=fmt))


def line_boundary_after(path: Path, offset: int) -> int:
    """The byte offset just past the first newline at or after `offset` (or the file size)."""
    size = path.stat().st_size
    if offset >= size:
        return size
    with open(path, "rb") as handle:
        handle.seek(offset)
        while block := handle.read(1 << 16):
            at = block.find(b"\n")
            if at >= 0:
                return offset + at + 1
            offset += len(block)
    return size


# --- the text stages (tokenizer, shards, pretrain, evaluate): errors stop the run ---------------


def _plain(path: Path, fmt: str) -> InputFile:
    # never gzip here: the text stages cut files by byte offsets of the file itself
    return InputFile(str(path), fmt, False, path.stat().st_size)


def read_text_blocks(
    path: Path,
    start: int = 0,
    end: int | None = None,
    encoding_errors: EncodingErrors = "strict",
    stats: DecodeStats | None = None,
    setting: str = ENCODING_SETTING,
) -> Iterator[str]:
    """Yield decoded blocks of `path` between byte offsets [start, end), cut at line ends.
    Raises LmforgeError naming the file and byte offset of bytes that are not UTF-8."""
    path = Path(path)
    log = ReadLog()
    try:
        for text in text_blocks(FilePart(_plain(path, "text"), start, end), encoding_errors, log, setting, lines=True):
            if stats is not None and log.replaced_chars:
                stats.replaced[str(path)] = stats.replaced.get(str(path), 0) + log.replaced_chars
            log.replaced_chars = 0
            yield text
    except ReadError as err:
        raise LmforgeError(f"{path}: {err}") from None


def read_jsonl_documents(
    path: Path, text_field: str = "text", encoding_errors: EncodingErrors = "strict", setting: str = ENCODING_SETTING
) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) for each JSONL line; a bad line is an error naming file:line."""
    try:
        for number, record in jsonl_values(
            FilePart(_plain(Path(path), "jsonl")), encoding_errors, ReadLog(), setting, problems=False
        ):
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise LmforgeError(
                    f"{path}:{number}: expected an object with a string field '{text_field}'; fix the line or set read.text_field"
                )
            yield number, record[text_field]
    except ReadError as err:
        raise LmforgeError(str(err)) from None
