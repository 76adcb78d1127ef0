"""Order the corpus stage's inputs and cut them into work units for the worker processes.

Inputs come from `documents.find`. Rendered formats (HTML, PDF, DOCX) are processed first, so that
the copy the main process keeps from a near-duplicate cluster is the rendered page, not its
source; a Sphinx `_sources/PAGE.rst.txt` whose `PAGE.html` is also an input is left out.

Every unit is about `chunk_bytes` of input or less, which keeps the memory in flight bounded:
big uncompressed .txt/.jsonl files are cut into line-aligned byte ranges; big CSV/TSV files and
big .gz files (which cannot be cut by byte offsets: quoted newlines, no seeking) become "streamed"
units that the main process reads in order and hands out as batches of documents; small files are
grouped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.documents import FilePart, InputFile, Inventory, find

if TYPE_CHECKING:  # annotations only
    from lmforge.corpus.extract import DocumentBatch

# Formats a worker reads as a stream of lines, so a big file can be cut by byte ranges.
SPLITTABLE = {"text", "jsonl"}
# Formats read record by record: a big file of these (or a big .gz of SPLITTABLE) is streamed.
STREAMABLE = SPLITTABLE | {"csv", "tsv"}
# Processed before other formats: the first document of a duplicate cluster is the one kept.
RENDERED = ("html", "pdf", "docx")
# Suffixes of the sources Sphinx copies to `_sources/` (with `.txt` appended) for "Show source".
SPHINX_SOURCE_SUFFIXES = (".rst", ".md", ".txt", ".ipynb")
MAX_PARTS_PER_UNIT = 256
MIN_UNIT_BYTES = 1 << 14
# Seconds of work per byte relative to plain text (measured roughly on this machine's kind:
# text ~4 MB/s per core, HTML via trafilatura ~1.8, PDF via pypdf ~0.4, DOCX similar).
FORMAT_COST = {"html": 3, "pdf": 12, "docx": 8}


@dataclass
class WorkUnit:
    """Files or ranges a worker reads; or, when `stream` is set, one big file that the main process
    reads and hands out as `batch`es of documents (see extract.read_in_batches)."""

    number: int
    parts: list[FilePart]
    stream: bool = False
    batch: DocumentBatch | None = None


def _rendered_page_of(path: str, html_pages: set[str]) -> str | None:
    """The page Sphinx rendered from the source copy `ROOT/_sources/DIR/PAGE.rst.txt`: ROOT/DIR/PAGE.html
    (or DIR/PAGE/index.html, or .htm, or gzipped) when it is in `html_pages`; None otherwise."""
    parts = Path(path).parts
    if "_sources" not in parts[:-1]:
        return None
    cut = len(parts) - 1 - parts[::-1].index("_sources")
    root, relative = Path(*parts[:cut]), Path(*parts[cut + 1 :])
    name = relative.name[:-3] if relative.name.lower().endswith(".gz") else relative.name
    if name.lower().endswith(".txt") and Path(name[:-4]).suffix:
        name = name[:-4]  # page.rst.txt -> page.rst (html_sourcelink_suffix)
    stem, suffix = Path(name).stem, Path(name).suffix.lower()
    if suffix not in SPHINX_SOURCE_SUFFIXES:
        return None
    for page in (relative.parent / stem, relative.parent / stem / "index"):
        for ending in (".html", ".htm", ".html.gz", ".htm.gz"):
            candidate = str(root / page) + ending
            if candidate in html_pages:
                return candidate
    return None


def _order_and_drop_copies(files: list[InputFile], inventory: Inventory, skip_source_copies: bool) -> list[InputFile]:
    html_pages = {str(Path(f.path)) for f in files if f.format == "html"}
    kept = []
    for file in files:
        rendered = (
            _rendered_page_of(file.path, html_pages)
            if skip_source_copies and file.format in ("text", "markdown")
            else None
        )
        if rendered is None:
            kept.append(file)
        else:
            inventory.source_copies.append({"path": file.path, "rendered": rendered})
    # A stable sort: within each group the --data order (paths sorted inside folders) is kept.
    return sorted(kept, key=lambda f: f.format not in RENDERED)


def resolve_inputs(data: list[str], out: str | Path, skip_source_copies: bool = True) -> Inventory:
    """`documents.find` for the corpus stage (every format, .gz too; `out` is not walked), in the
    order the stage processes files: rendered formats (HTML, PDF, DOCX) first, then the rest, each
    in `--data` order. With `skip_source_copies`, Sphinx `_sources/` copies of pages that are also
    inputs are left out (listed in `inventory.source_copies`).

    A path or glob that matches nothing raises LmforgeError (a typo, before any work); a folder
    with no supported document is recorded as a failure, so other inputs still go ahead.
    """
    inventory = find(data, out)
    inventory.files = _order_and_drop_copies(inventory.files, inventory, skip_source_copies)
    return inventory


def _line_ranges(file: InputFile, chunk_bytes: int, count_lines: bool) -> list[FilePart]:
    """Cut `file` into ranges of about `chunk_bytes`, each ending just after a newline."""
    parts: list[FilePart] = []
    start, line = 0, 1
    with open(file.path, "rb") as handle:
        while start < file.size:
            handle.seek(min(start + chunk_bytes, file.size))
            end = (
                min(handle.tell() + len(handle.readline()), file.size) if start + chunk_bytes < file.size else file.size
            )
            parts.append(FilePart(file, start, end, line, len(parts)))
            if count_lines:  # only JSONL needs true line numbers, for file:line messages
                handle.seek(start)
                remaining = end - start
                while remaining > 0:
                    block = handle.read(min(1 << 22, remaining))
                    line += block.count(b"\n")
                    remaining -= len(block)
            start = end
    return parts


def unit_target(files: list[InputFile], chunk_bytes: int, workers: int = 1) -> int:
    """Bytes of input per unit: a unit's work is its bytes times the format's cost per byte, capped
    at `chunk_bytes`; the target shrinks (to 16 kB at least) so that there are 4 units per worker,
    otherwise 2 MB of PDFs would be one unit and one core would do everything."""
    total_cost = sum(f.size * FORMAT_COST.get(f.format, 1) for f in files)
    return max(min(chunk_bytes, total_cost // (4 * max(workers, 1))), MIN_UNIT_BYTES)


def content_size(file: InputFile) -> int:
    """Bytes of the file's content: for .gz, the uncompressed size from the gzip trailer (ISIZE,
    modulo 4 GiB; that of the last member), or the file size if larger."""
    if not file.gzip or file.size < 18:  # 10-byte header + 8-byte trailer
        return file.size
    with open(file.path, "rb") as handle:
        handle.seek(-4, os.SEEK_END)
        return max(file.size, int.from_bytes(handle.read(4), "little"))


def is_streamed(file: InputFile, target: int) -> bool:
    """A big CSV/TSV, or a .gz of text/JSONL/CSV/TSV with a big content: read by the main process, in order."""
    if file.format not in STREAMABLE or not (file.gzip or file.format not in SPLITTABLE):
        return False
    return content_size(file) > target


def plan_units(files: list[InputFile], chunk_bytes: int, workers: int = 1) -> list[WorkUnit]:
    """Group files (and ranges of big files) into units of about equal work (see `unit_target`).

    A streamed file is one unit with `stream` set; the pipeline turns it into units of documents
    while it runs (extract.read_in_batches).
    """
    target = unit_target(files, chunk_bytes, workers)
    units: list[WorkUnit] = []
    current: list[FilePart] = []
    current_cost = 0

    def flush() -> None:
        nonlocal current, current_cost
        if current:
            units.append(WorkUnit(len(units), current))
        current, current_cost = [], 0

    for file in files:
        if file.format in SPLITTABLE and not file.gzip and file.size > target:
            flush()
            for part in _line_ranges(file, target, count_lines=file.format == "jsonl"):
                units.append(WorkUnit(len(units), [part]))
            continue
        if is_streamed(file, target):
            flush()
            units.append(WorkUnit(len(units), [FilePart(file)], stream=True))
            continue
        current.append(FilePart(file))
        current_cost += file.size * FORMAT_COST.get(file.format, 1)
        if current_cost >= target or len(current) >= MAX_PARTS_PER_UNIT:
            flush()
    flush()
    return units
