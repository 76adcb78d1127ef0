"""The one input layer: find what `--data` names, read it, split it.

    find.py   files, folders, globs, builtin: names, corpus folders -> InputFile / Source
    read.py   one incremental decoder and one `encoding_errors` choice for text, JSONL, CSV/TSV, .gz;
              ReadConfig (`--read.*`) of the text stages
    split.py  the one SplitConfig (`--split.*`) of every stage and the one stable hash behind every split

Every stage finds its inputs here; the corpus stage adds its own extractors (HTML, PDF, DOCX,
Markdown) on top of these readers, and `tasks/` parses labelled rows read here.
"""

from lmforge.documents.find import (
    FORMATS,
    InputFile,
    Inventory,
    Source,
    builtin_path,
    detect_format,
    find,
    input_file,
    resolve_sources,
)
from lmforge.documents.read import (
    DecodeStats,
    EncodingErrors,
    FilePart,
    RawDocument,
    ReadConfig,
    ReadError,
    ReadLog,
    TextDecoder,
    jsonl_values,
    line_boundary_after,
    read_jsonl_documents,
    read_plain_text,
    read_text_blocks,
    table_rows,
    text_blocks,
    whole,
)
from lmforge.documents.split import (
    SPLIT_RULES,
    SplitConfig,
    SplitMode,
    assign_split,
    check_split,
    choose_split_mode,
    corpus_split,
    input_fingerprint,
    iter_split,
    normalised_text,
    stable_fraction,
    text_split,
)

__all__ = [
    "FORMATS",
    "InputFile",
    "Inventory",
    "Source",
    "builtin_path",
    "detect_format",
    "find",
    "input_file",
    "resolve_sources",
    "DecodeStats",
    "EncodingErrors",
    "FilePart",
    "RawDocument",
    "ReadConfig",
    "ReadError",
    "ReadLog",
    "TextDecoder",
    "jsonl_values",
    "line_boundary_after",
    "read_jsonl_documents",
    "read_plain_text",
    "read_text_blocks",
    "table_rows",
    "text_blocks",
    "whole",
    "SPLIT_RULES",
    "SplitConfig",
    "SplitMode",
    "assign_split",
    "check_split",
    "choose_split_mode",
    "corpus_split",
    "input_fingerprint",
    "iter_split",
    "normalised_text",
    "stable_fraction",
    "text_split",
]
