"""`lmforge corpus`: documents -> cleaned, filtered, deduplicated, split JSONL shards.

Worker processes take work units (a few MB of input each), extract, clean, filter, sign
(MinHash) and cut documents into records. Big CSV/TSV and .gz files, which cannot be cut by byte
offsets, are read by the main process itself and handed out as units of documents. The main
process receives the units in input order, drops duplicates with one `DuplicateIndex`, assigns
each surviving document to a split by a hash of its id and appends its records to the split's
shard; every dropped document gets a line in dropped.jsonl (filter, duplicate of which kept
document, unreadable record, failed file, source copy). Memory stays bounded: at most
3 units per worker in flight (each about `extract.chunk_bytes` of input or less), plus about 2 KB
of duplicate index per kept document.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import resource
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmforge.corpus.clean import Cleaner
from lmforge.corpus.config import CorpusConfig, ExtractConfig
from lmforge.corpus.dedup import DuplicateIndex, Signer, canonical_words, normalised_hash
from lmforge.corpus.errors import ExtractionError
from lmforge.corpus.extract import read_documents, read_in_batches
from lmforge.corpus.filters import QualityFilter
from lmforge.corpus.output import DROPPED_LOG, SPLITS, DroppedLog, ShardWriter, prepare_out_folder
from lmforge.corpus.report import CorpusReport, Tally, excerpt
from lmforge.corpus.snippets import Snipper, load_token_counter
from lmforge.corpus.units import WorkUnit, content_size, plan_units, resolve_inputs, unit_target
from lmforge.documents import FilePart, RawDocument, ReadLog, assign_split, check_split
from lmforge.errors import LmforgeError
from lmforge.runfolder import RunFolder

UNITS_IN_FLIGHT_PER_WORKER = 3
PROGRESS_SECONDS = 5.0


@dataclass
class KeptDocument:
    """A document that passed the filters, with its records already serialised as JSON lines."""

    doc_id: str
    source: str
    position: str
    exact_hash: int
    signature: np.ndarray | None
    payload: bytes
    records: int
    chars: int
    words: int
    language: str | None
    excerpt: str
    file_key: str = ""  # the file's path under the folder given: what `--split.mode files` assigns


# What a worker hands back for a unit, in input order: kept documents, and dropped ones as their
# line of dropped.jsonl (a dict).
UnitDocuments = list[KeptDocument | dict]


class UnitWorker:
    """The per-process state (cleaner, filters, MinHash permutations, tokenizer) for work units."""

    def __init__(self, config: CorpusConfig):
        self.config = config
        self.cleaner = Cleaner(config.clean)
        self.filter = QualityFilter(config.filter)
        self.signer = Signer(config.dedup) if config.dedup.near else None
        self.snipper = Snipper(config.snippets) if config.snippets.enabled else None

    def _records(self, text: str, base: dict) -> tuple[bytes, int]:
        pieces = self.snipper.cut(text) if self.snipper else [text]
        lines = []
        for number, piece in enumerate(pieces):
            meta = dict(base["meta"], snippet=number, snippets=len(pieces)) if self.snipper else base["meta"]
            lines.append(
                json.dumps(
                    {"text": piece, "source": base["source"], "doc_id": base["doc_id"], "meta": meta},
                    ensure_ascii=False,
                )
            )
        return ("\n".join(lines) + "\n").encode("utf-8"), len(pieces)

    def _document(self, raw: RawDocument, part: FilePart, tally: Tally) -> KeptDocument | dict:
        source, fmt = part.file.path, part.file.format
        tally.counts["documents_in"] += 1
        tally.counts["chars_in"] += len(raw.text)
        text = self.cleaner(raw.text)
        verdict = self.filter.check(text)
        # the file's path under the folder given (not where that folder lives): the same documents
        # get the same ids, and so the same splits, wherever the collection is copied
        doc_id = hashlib.blake2b(f"{part.file.key or source}\0{raw.position}".encode(), digest_size=8).hexdigest()
        if verdict.reason is not None:
            tally.counts[f"filter.{verdict.reason}"] += 1
            tally.counts[f"filter.{verdict.reason}_chars"] += len(text)
            tally.example(f"filter.{verdict.reason}", f"{source} ({raw.position})", text or raw.text)
            return {
                "source": source,
                "position": raw.position,
                "doc_id": doc_id,
                "reason": "filter",
                "filter": verdict.reason,
                "chars": len(text),
                "words": verdict.words,
            }
        meta = {"format": fmt, "language": verdict.language, "words": verdict.words, **raw.meta}
        payload, records = self._records(text, {"source": source, "doc_id": doc_id, "meta": meta})
        tally.counts[f"format.{fmt}.documents"] += 1
        tally.counts[f"format.{fmt}.chars"] += len(text)
        words = canonical_words(text)
        return KeptDocument(
            doc_id,
            source,
            raw.position,
            normalised_hash(words),
            self.signer.signature(words) if self.signer else None,
            payload,
            records,
            len(text),
            verdict.words,
            verdict.language,
            excerpt(text),
            part.file.key or source,
        )

    def _count_input(self, part: FilePart, first: bool, size: int, tally: Tally) -> None:
        fmt = part.file.format
        if first:
            tally.counts["files_in"] += 1
            tally.counts[f"format.{fmt}.files"] += 1
        tally.counts["bytes_in"] += size
        tally.counts[f"format.{fmt}.bytes"] += size

    def _take(self, raws: Iterable[RawDocument], part: FilePart, tally: Tally, documents: UnitDocuments) -> str | None:
        """Clean, filter and sign `raws` into `documents`; the failure that ended the reading, if any."""
        try:
            for raw in raws:
                documents.append(self._document(raw, part, tally))
                if raw.meta.get("running_lines_removed"):
                    tally.counts["pdf.running_lines_removed"] += raw.meta["running_lines_removed"]
        except ExtractionError as err:
            return str(err)
        except Exception as err:  # libraries raise anything on corrupt input; one file must not stop the run
            return f"{type(err).__name__}: {err}; the file may be corrupt"
        return None

    def _after_read(
        self,
        part: FilePart,
        problems: list[tuple[str, str]],
        replaced: int,
        failure: str | None,
        tally: Tally,
        documents: UnitDocuments,
    ) -> None:
        path = part.file.path
        for position, message in problems:
            documents.append({"source": path, "position": position, "reason": "unreadable_record", "error": message})
        tally.counts["record_problems"] += len(problems)
        tally.problems.extend(message for _, message in problems)
        tally.counts["replaced_chars"] += replaced
        if failure is not None:
            tally.failures.append({"path": path, "format": part.file.format, "error": failure})
            tally.counts[f"format.{part.file.format}.failures"] += 1
            documents.append({"source": path, "position": None, "reason": "extraction_failed", "error": failure})

    def process(self, unit: WorkUnit) -> tuple[UnitDocuments, Tally]:
        """Extract (unless the main process did: `unit.batch`), clean, filter and sign every document of the unit."""
        tally = Tally(max_examples=self.config.report_examples)
        documents: UnitDocuments = []
        if unit.batch is not None:
            part, batch = unit.parts[0], unit.batch
            self._count_input(part, batch.first, batch.bytes, tally)
            failure = self._take(batch.documents, part, tally, documents)
            self._after_read(part, batch.problems, batch.replaced_chars, batch.failure or failure, tally, documents)
        else:
            for part in unit.parts:
                self._count_input(
                    part, part.chunk == 0, (part.end if part.end is not None else part.file.size) - part.start, tally
                )
                log = ReadLog()
                failure = self._take(read_documents(part, self.config.extract, log), part, tally, documents)
                self._after_read(part, log.problems, log.replaced_chars, failure, tally, documents)
        for name, count in self.cleaner.counts.items():
            tally.counts[f"clean.{name}"] += count
        for name, count in self.cleaner.redacted.items():
            tally.counts[f"clean.redacted_{name}"] += count
        for name, count in self.cleaner.chars_removed.items():
            tally.counts[f"clean.{name}_chars_removed"] += count
        self.cleaner.counts.clear(), self.cleaner.redacted.clear(), self.cleaner.chars_removed.clear()
        return documents, tally


_WORKER: UnitWorker | None = None


def _init_worker(config: CorpusConfig) -> None:
    global _WORKER
    _WORKER = UnitWorker(config)


def _process_unit(unit: WorkUnit) -> tuple[UnitDocuments, Tally]:
    return _WORKER.process(unit)


def ordered_map(fn: Callable, items: Iterable, workers: int, initializer: Callable, initargs: tuple) -> Iterator:
    """`map(fn, items)` on `workers` processes, in order, with at most a few items in flight."""
    if workers <= 1:
        initializer(*initargs)
        yield from map(fn, items)
        return
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=initializer, initargs=initargs) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= workers * UNITS_IN_FLIGHT_PER_WORKER:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def validate(config: CorpusConfig) -> None:
    """Reject settings that cannot work, naming the field and the fix."""
    split, snippets, dedup = config.split, config.snippets, config.dedup
    check_split(split, "corpus")
    if not 0 < dedup.threshold <= 1:
        raise LmforgeError(f"dedup.threshold {dedup.threshold}: must be in (0, 1]; 0.8 is usual")
    if dedup.num_perm < 2 or not 1 <= dedup.shingle_words <= 8:
        raise LmforgeError("dedup.num_perm must be >= 2 and dedup.shingle_words between 1 and 8")
    if snippets.enabled and not 0 <= snippets.overlap < snippets.length:
        raise LmforgeError(
            f"snippets.overlap {snippets.overlap} must be >= 0 and below snippets.length {snippets.length}"
        )
    if snippets.enabled and snippets.length_unit == "tokens":
        if not snippets.tokenizer:
            raise LmforgeError(
                "snippets.length_unit tokens needs snippets.tokenizer: a folder made by `lmforge tokenizer` or a tokenizer.json"
            )
        load_token_counter(snippets.tokenizer)
    if config.extract.chunk_bytes < 1 or config.shard_bytes < 1 or config.extract.max_document_chars < 1:
        raise LmforgeError("extract.chunk_bytes, extract.max_document_chars and shard_bytes must be positive")


def _peak_rss_mb() -> dict:
    # ru_maxrss is in KiB on Linux; RUSAGE_CHILDREN gives the largest finished worker.
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"main": round(own, 1), "largest_worker": round(child, 1)}


def why_empty(report: CorpusReport, out: Path) -> str:
    """One line: why no document survived, with the fix for the biggest cause."""
    counts, failures = report.tally.counts, report.tally.failures
    reasons = []
    if failures:
        first = failures[0]
        reasons.append(f"{len(failures)} input(s) failed (first: {first['path']}: {first['error']})")
    filtered = {k.split(".")[1]: v for k, v in counts.items() if k.startswith("filter.") and not k.endswith("_chars")}
    if filtered:
        name, n = max(filtered.items(), key=lambda kv: kv[1])
        hints = {
            "too_few_words": "lower filter.min_words",
            "language": "check filter.languages",
            "alpha_ratio": "lower filter.min_alpha_ratio",
            "empty": "check the files hold text",
        }
        reasons.append(
            f"{sum(filtered.values())} document(s) removed by filters, most by {name} ({n}): {hints.get(name, 'relax filter settings')}"
        )
    if counts["record_problems"]:
        reasons.append(f"{counts['record_problems']} record(s) unreadable (first: {report.tally.problems[0]})")
    if not reasons:
        reasons.append("the inputs hold no documents")
    return f"nothing usable remains: {'; '.join(reasons)}; details in {out / 'report.html'}"


class CorpusAssembler:
    """Main-process side: drop duplicates, pick each survivor's split, append its records, and log
    every dropped document to dropped.jsonl."""

    def __init__(self, config: CorpusConfig, out: Path, report: CorpusReport):
        self.config, self.report = config, report
        self.index = DuplicateIndex(config.dedup)
        # (doc_id, source, position) per kept number, for dropped.jsonl and cluster reports; one
        # string object per source file, not per document.
        self.kept_docs: list[tuple[str, str, str]] = []
        self._sources: dict[str, str] = {}
        self.writers = {split: ShardWriter(out, split, config.shard_bytes) for split in SPLITS}
        self.dropped = DroppedLog(out)

    def add(self, documents: UnitDocuments, tally: Tally) -> None:
        self.report.tally.merge(tally)
        split_cfg = self.config.split
        for doc in documents:
            if isinstance(doc, dict):
                self.dropped.write(doc)
                continue
            match = self.index.match(doc.exact_hash, doc.signature)
            if match is not None:
                kept_id, kept_source, kept_position = self.kept_docs[match.kept]
                self.report.duplicate(match.kept, (kept_id, kept_source), match.kind, match.similarity, doc)
                self.dropped.write(
                    {
                        "source": doc.source,
                        "position": doc.position,
                        "doc_id": doc.doc_id,
                        "reason": f"{match.kind}_duplicate",
                        "similarity": round(match.similarity, 3),
                        "duplicate_of": {"doc_id": kept_id, "source": kept_source, "position": kept_position},
                    }
                )
                continue
            source = self._sources.setdefault(doc.source, doc.source)
            self.kept_docs.append((doc.doc_id, source, doc.position))
            key = doc.file_key if split_cfg.mode == "files" else doc.doc_id
            split = assign_split(key, split_cfg)
            self.writers[split].write(doc.payload, doc.records)
            self.report.written(doc, split)

    def close(self, keep: bool) -> dict[str, list[str]]:
        self.dropped.close()
        return {split: writer.close(keep=keep) for split, writer in self.writers.items()}


def work_units(units: list[WorkUnit], extract: ExtractConfig, batch_chars: int) -> Iterator[WorkUnit]:
    """The planned units, with each streamed file read here, lazily, into units of documents."""
    for unit in units:
        if not unit.stream:
            yield unit
            continue
        for batch in read_in_batches(unit.parts[0], extract, batch_chars):
            yield WorkUnit(unit.number, unit.parts, batch=batch)


def _stream(
    config: CorpusConfig, units: Iterable[WorkUnit], workers: int, assembler: CorpusAssembler, total_bytes: int
) -> None:
    started = last_progress = time.perf_counter()
    try:
        for documents, tally in ordered_map(_process_unit, units, workers, _init_worker, (config,)):
            assembler.add(documents, tally)
            if time.perf_counter() - last_progress > PROGRESS_SECONDS:
                last_progress = time.perf_counter()
                done = assembler.report.tally.counts["bytes_in"]
                print(
                    f"corpus: {done / 1e6:,.0f}/{total_bytes / 1e6:,.0f} MB, {done / 1e6 / (last_progress - started):.1f} MB/s, "
                    f"{len(assembler.kept_docs):,} documents kept",
                    file=sys.stderr,
                    flush=True,
                )
    except BaseException:
        assembler.close(keep=False)
        raise


def run(config: CorpusConfig) -> Path:
    """Build the corpus folder `config.out` from `config.data`; returns the folder.

    Raises LmforgeError for unusable settings or inputs, and when no document survives.
    """
    started = time.perf_counter()
    validate(config)
    out = Path(config.out)
    inventory = resolve_inputs(config.data, out, config.extract.skip_source_copies)
    out.mkdir(parents=True, exist_ok=True)
    prepare_out_folder(out)
    folder = RunFolder(out, "corpus").start(config, inventory.roots)
    workers = config.workers or os.cpu_count() or 1
    target = unit_target(inventory.files, config.extract.chunk_bytes, workers)
    units = plan_units(inventory.files, config.extract.chunk_bytes, workers)
    expected_units = sum(-(-content_size(unit.parts[0].file) // target) if unit.stream else 1 for unit in units)
    workers = max(1, min(workers, expected_units))
    report = CorpusReport(config.report_examples)
    report.tally.failures.extend(inventory.failures)
    report.skipped.update(inventory.skipped)
    report.source_copies = inventory.source_copies
    assembler = CorpusAssembler(config, out, report)
    for copy in inventory.source_copies:
        assembler.dropped.write(
            {"source": copy["path"], "position": None, "reason": "source_copy", "rendered": copy["rendered"]}
        )
    _stream(config, work_units(units, config.extract, target), workers, assembler, sum(f.size for f in inventory.files))
    usable = len(assembler.kept_docs) > 0
    shards = assembler.close(keep=usable)
    report.dropped = dict(assembler.dropped.counts)
    for split, fraction in (("valid", config.split.valid_fraction), ("test", config.split.test_fraction)):
        if usable and fraction > 0 and not report.splits[split]["documents"]:
            report.warnings.append(
                f"the {split} split is empty: {len(assembler.kept_docs)} document(s) are too few for "
                f"split.{split}_fraction {fraction}; add documents or use --snippets.enabled true with more text"
            )
    for warning in report.warnings:
        print(f"corpus: warning: {warning}", file=sys.stderr)
    payload = report.write(out, time.perf_counter() - started, _peak_rss_mb(), workers)
    if not usable:
        folder.finish(status="failed", summary=payload["summary"])
        raise LmforgeError(why_empty(report, out))
    folder.finish(
        status="complete",
        summary=payload["summary"],
        shards=shards,
        splits=payload["splits"],
        report=["report.json", "report.html", DROPPED_LOG],
    )
    s = payload["summary"]
    print(
        f"corpus: {s['documents_out']:,} of {s['documents_in']:,} documents kept ({s['records_out']:,} records) "
        f"from {s['files_in']:,} files, {s['files_failed']} failed; {s['mb_per_second']} MB/s -> {out}",
        flush=True,
    )
    return out
