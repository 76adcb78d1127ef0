"""The `lmforge corpus` config: one dataclass per step, every field a `--section.key` flag."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from lmforge.config import option
from lmforge.documents.read import EncodingErrors
from lmforge.documents.split import SplitConfig, corpus_split


@dataclass
class ExtractConfig:
    text_field: str = option("text", "field holding the document text in .jsonl inputs")
    text_column: str = option("text", "column holding the document text in .csv/.tsv inputs")
    metadata_fields: list[str] = option([], "fields (jsonl) or columns (csv) copied into each record's meta")
    html_focus: Literal["precision", "balanced", "recall"] = option(
        "balanced", "trafilatura main-text extraction: precision drops more boilerplate, recall keeps more text"
    )
    html_fallback: bool = option(
        False,
        "also run readability and jusText and keep the better extraction (trafilatura's default; about 1.5x slower)",
    )
    pdf_repeat_fraction: float = option(
        0.5,
        "a PDF line at the top or bottom of more than this fraction of pages (or of the odd or even pages) is a header/footer and is removed; digits count as equal, and so does a line that starts or ends with the page number",
    )
    skip_source_copies: bool = option(
        True,
        "leave out Sphinx's `_sources/PAGE.rst.txt` copies whose rendered PAGE.html is also an input (the same text with reST markup); each is listed in dropped.jsonl",
    )
    encoding_errors: EncodingErrors = option(
        "replace",
        "bytes that are not UTF-8: replace with U+FFFD (counted per file), or strict: the file fails at the first one, "
        "is listed with its byte offset in the report, and is left out (the corpus goes on)",
    )
    max_document_chars: int = option(
        100_000, "a plain-text file longer than this is cut at blank lines into documents of at most this size"
    )
    chunk_bytes: int = option(
        8_000_000,
        "largest work unit: big .txt/.jsonl files are cut into line-aligned chunks of at most this many bytes, big .csv/.tsv/.gz files are read by the main process and handed out in batches of about as many characters, small files grouped up to it (smaller when needed to give every worker 4 units)",
    )


@dataclass
class CleanConfig:
    unicode_normalization: Literal["NFC", "NFKC", "none"] = option(
        "NFC", "Unicode normal form applied to every document"
    )
    fix_mojibake: bool = option(True, "repair mis-decoded text such as 'cafÃ©' -> 'café' with ftfy")
    control_chars: bool = option(True, "remove control characters other than newline and tab")
    whitespace: bool = option(
        True,
        "spaces: runs inside a line collapse to one (indentation kept, also after a doctest prompt `>>> `, `... `), line ends are stripped, at most one blank line in a row",
    )
    lowercase: bool = option(False, "lowercase every document")
    redact_emails: bool = option(False, "replace e-mail addresses with [EMAIL]")
    redact_phones: bool = option(False, "replace phone numbers with [PHONE]")
    redact_urls: bool = option(False, "replace URLs with [URL]")


@dataclass
class FilterConfig:
    min_words: int = option(50, "drop documents with fewer words (Gopher: 50); 0 disables")
    max_words: int = option(100_000, "drop documents with more words (Gopher: 100,000); 0 disables")
    min_alpha_ratio: float = option(
        0.6, "drop documents where letters are less than this fraction of non-space characters; 0 disables"
    )
    min_mean_word_length: float = option(
        3.0, "drop documents whose mean word length is below this (Gopher: 3); 0 disables"
    )
    max_mean_word_length: float = option(
        10.0, "drop documents whose mean word length is above this (Gopher: 10); 0 disables"
    )
    max_word_chars: int = option(1000, "drop documents containing a word longer than this (C4: 1000); 0 disables")
    max_duplicate_line_fraction: float = option(
        0.3, "drop documents whose repeated lines exceed this fraction of lines (Gopher: 0.3); 1 disables"
    )
    max_duplicate_paragraph_fraction: float = option(
        0.3, "drop documents whose repeated paragraphs exceed this fraction of paragraphs (Gopher: 0.3); 1 disables"
    )
    languages: list[str] = option([], "keep only documents in these ISO 639-1 languages (e.g. en de); empty keeps all")
    min_language_score: float = option(
        0.5, "with languages set: drop documents whose language probability is below this"
    )
    detect_language: bool = option(True, "identify each document's language (py3langid) for the report's language mix")


@dataclass
class DedupConfig:
    exact: bool = option(
        True,
        "drop documents whose normalised text (lowercase, no punctuation, single spaces) hashes equal to an earlier one",
    )
    near: bool = option(True, "drop near-duplicates found with MinHash + LSH")
    threshold: float = option(
        0.8, "estimated Jaccard similarity of word shingles above which two documents are near-duplicates"
    )
    num_perm: int = option(128, "MinHash permutations (more: better estimates, more memory)")
    shingle_words: int = option(5, "words per shingle (1 to 8)")


@dataclass
class SnippetConfig:
    """`--snippets.*`: cut documents into snippets of uniform length (retrieval / QA style)."""

    enabled: bool = option(False, "write snippets of uniform length instead of whole documents")
    length: int = option(200, "snippet length in `length_unit`")
    overlap: int = option(0, "words or tokens shared by consecutive snippets of a document")
    length_unit: Literal["words", "tokens"] = option("words", "unit of length and overlap")
    tokenizer: Optional[str] = option(
        None, "tokenizer folder (from `lmforge tokenizer`) or tokenizer.json; needed when length_unit is tokens"
    )
    respect_sentences: bool = option(
        True, "cut snippets at sentence ends (a sentence longer than a snippet is cut at words)"
    )


@dataclass
class CorpusConfig:
    data: list[str] = option(
        [], "inputs: files, folders (recursive) and globs of .txt .md .html .pdf .jsonl .csv .tsv .docx, optionally .gz"
    )
    out: str = option(
        "runs/corpus", "output folder: train/valid/test-NNNNN.jsonl, manifest.json, report.json, report.html"
    )
    workers: int = option(0, "processes that extract and clean; 0 uses every core")
    shard_bytes: int = option(100_000_000, "start a new numbered shard file after this many bytes")
    report_examples: int = option(3, "examples kept per filter and per duplicate cluster in the report")
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    split: SplitConfig = field(default_factory=corpus_split)
    snippets: SnippetConfig = field(default_factory=SnippetConfig)
