"""What the corpus run did, as `report.json` and `report.html` (with the length histogram as SVG).

Workers fill a `Tally` per work unit (flat counters, a few examples, failures); the main process
merges them and adds what only it knows: duplicate clusters, splits, lengths and languages of
the documents written.
"""

from __future__ import annotations

import html
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmforge import report as pages
from lmforge.publish import write_json_atomic

EXCERPT_CHARS = 240
MAX_PROBLEMS = 200
MAX_CLUSTERS_SHOWN = 20
MAX_FAILURES_SHOWN = 500
MAX_SOURCE_COPIES_SHOWN = 20
# Which member of a duplicate cluster survives, as report.json states it.
KEPT_IN_CLUSTER = (
    "the first in processing order, which puts rendered formats (HTML, PDF, DOCX) before the others "
    "(Markdown, text, JSONL, CSV), each in --data order with folders sorted by path: a rendered page wins "
    "over its source; doc ids and splits do not depend on this order"
)


def excerpt(text: str) -> str:
    return text[:EXCERPT_CHARS] + ("…" if len(text) > EXCERPT_CHARS else "")


@dataclass
class Tally:
    """Mergeable counts from one work unit: keys like 'documents_in', 'filter.too_few_words'."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[dict]] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    max_examples: int = 3

    def example(self, key: str, source: str, text: str, **extra) -> None:
        kept = self.examples.setdefault(key, [])
        if len(kept) < self.max_examples:
            kept.append({"source": source, "excerpt": excerpt(text), **extra})

    def merge(self, other: Tally) -> None:
        self.counts.update(other.counts)
        for key, items in other.examples.items():
            kept = self.examples.setdefault(key, [])
            kept.extend(items[: max(self.max_examples - len(kept), 0)])
        self.failures.extend(other.failures)
        self.problems.extend(other.problems[: max(MAX_PROBLEMS - len(self.problems), 0)])


@dataclass
class Cluster:
    kept_doc_id: str
    kept_source: str
    size: int = 1
    members: list[dict] = field(default_factory=list)


class CorpusReport:
    """Everything report.json holds, filled while the run streams."""

    def __init__(self, max_examples: int):
        self.tally = Tally(max_examples=max_examples)
        self.clusters: dict[int, Cluster] = {}
        self.lengths = array("I")  # words per written document
        self.languages: Counter[str] = Counter()
        self.splits = {split: Counter() for split in ("train", "valid", "test")}
        self.skipped: Counter[str] = Counter()
        self.warnings: list[str] = []
        self.max_examples = max_examples
        self.source_copies: list[dict] = []  # {"path", "rendered"}: Sphinx _sources copies left out
        self.dropped: dict[str, int] = {}  # dropped.jsonl lines per reason

    def duplicate(self, kept: int, kept_doc: tuple[str, str], kind: str, similarity: float, doc) -> None:
        cluster = self.clusters.get(kept)
        if cluster is None:
            cluster = self.clusters[kept] = Cluster(kept_doc[0], kept_doc[1])
        cluster.size += 1
        self.tally.counts[f"dedup.{kind}"] += 1
        self.tally.counts[f"dedup.{kind}_chars"] += doc.chars
        if len(cluster.members) < self.max_examples:
            cluster.members.append(
                {
                    "doc_id": doc.doc_id,
                    "source": doc.source,
                    "kind": kind,
                    "similarity": round(similarity, 3),
                    "excerpt": doc.excerpt,
                }
            )

    def written(self, doc, split: str) -> None:
        self.lengths.append(doc.words)
        self.languages[doc.language or "unknown"] += 1
        counter = self.splits[split]
        counter["documents"] += 1
        counter["records"] += doc.records
        counter["chars"] += doc.chars

    def _filters(self) -> dict:
        counts = self.tally.counts
        names = sorted({k.split(".", 1)[1] for k in counts if k.startswith("filter.") and not k.endswith("_chars")})
        return {
            name: {
                "documents": counts[f"filter.{name}"],
                "chars": counts[f"filter.{name}_chars"],
                "examples": self.tally.examples.get(f"filter.{name}", []),
            }
            for name in names
        }

    def _formats(self) -> dict:
        counts = self.tally.counts
        names = sorted({k.split(".")[1] for k in counts if k.startswith("format.")})
        fields = ("files", "bytes", "documents", "chars", "failures")
        return {name: {f: counts[f"format.{name}.{f}"] for f in fields} for name in names}

    def _histogram(self) -> dict:
        if not self.lengths:
            return {"edges": [], "counts": []}
        values = np.frombuffer(self.lengths, dtype=np.uint32)
        top = max(int(values.max()), 2)
        edges = np.unique(np.geomspace(1, top + 1, num=31).round().astype(int))
        counts, _ = np.histogram(values, bins=edges)
        return {
            "edges": edges.tolist(),
            "counts": counts.tolist(),
            "median": float(np.median(values)),
            "mean": float(values.mean()),
            "max": int(values.max()),
        }

    def to_json(self, seconds: float, peak_rss_mb: dict, workers: int) -> dict:
        counts = self.tally.counts
        bytes_in = counts["bytes_in"]
        clusters = sorted(self.clusters.values(), key=lambda c: -c.size)
        out_docs = sum(s["documents"] for s in self.splits.values())
        return {
            "summary": {
                "files_in": counts["files_in"],
                "files_failed": len(self.tally.failures),
                "bytes_in": bytes_in,
                "documents_in": counts["documents_in"],
                "chars_in": counts["chars_in"],
                "documents_out": out_docs,
                "chars_out": sum(s["chars"] for s in self.splits.values()),
                "records_out": sum(s["records"] for s in self.splits.values()),
                "seconds": round(seconds, 2),
                "mb_per_second": round(bytes_in / 1e6 / max(seconds, 1e-9), 2),
                "workers": workers,
                "peak_rss_mb": peak_rss_mb,
            },
            "warnings": self.warnings,
            "splits": {name: dict(c) for name, c in self.splits.items()},
            "formats": self._formats(),
            "cleaning": {k.split(".", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("clean.")},
            "filters": self._filters(),
            "dedup": {
                "exact_removed": counts["dedup.exact"],
                "near_removed": counts["dedup.near"],
                "chars_removed": counts["dedup.exact_chars"] + counts["dedup.near_chars"],
                "clusters": len(self.clusters),
                "kept_in_cluster": KEPT_IN_CLUSTER,
                "largest_clusters": [vars(c) for c in clusters[:MAX_CLUSTERS_SHOWN]],
            },
            "languages": dict(self.languages.most_common()),
            "length_histogram_words": self._histogram(),
            "failures": self.tally.failures[:MAX_FAILURES_SHOWN],
            "record_problems": {"count": counts["record_problems"], "first": self.tally.problems},
            "skipped_suffixes": dict(self.skipped),
            "source_copies_skipped": {
                "count": len(self.source_copies),
                "first": self.source_copies[:MAX_SOURCE_COPIES_SHOWN],
            },
            "dropped": {"log": "dropped.jsonl", "by_reason": dict(sorted(self.dropped.items()))},
            "pdf_running_lines_removed": counts["pdf.running_lines_removed"],
            "undecodable_chars_replaced": counts["replaced_chars"],
        }

    def write(self, out: Path, seconds: float, peak_rss_mb: dict, workers: int) -> dict:
        payload = self.to_json(seconds, peak_rss_mb, workers)
        write_json_atomic(out / "report.json", payload)
        lead, sections = html_sections(payload)
        pages.write_html(out / "report.html", f"lmforge corpus: {out.name}", sections, lead)
        return payload


def histogram_svg(histogram: dict) -> str:
    """The words-per-document histogram as an inline SVG (log-spaced bins)."""
    plt = pages.pyplot()
    figure, axes = plt.subplots(figsize=(7, 3))
    edges, counts = histogram.get("edges", []), histogram.get("counts", [])
    if counts:
        axes.bar(edges[:-1], counts, width=np.diff(edges), align="edge", edgecolor="white")
        axes.set_xscale("log")
    axes.set_xlabel("words per document (written)")
    axes.set_ylabel("documents")
    figure.tight_layout()
    svg = pages.svg_figure(figure)
    plt.close(figure)
    return svg


def _table(rows: list[list], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _examples(items: list[dict]) -> str:
    return "".join(f"<li><code>{html.escape(i['source'])}</code>: {html.escape(i['excerpt'])}</li>" for i in items)


def html_sections(report: dict) -> tuple[pages.Lead, list[tuple[str, str]]]:
    """report.html in the page template every stage shares: the lead (documents kept, per split),
    then summary, splits, formats, cleaning, filters, duplicates, lengths, languages, failures."""
    s, splits = report["summary"], report["splits"]
    lead = pages.Lead(
        f"Corpus from {s.get('files_in', 0):,} input files",
        f"{s.get('documents_out', 0):,} documents kept of {s.get('documents_in', 0):,}",
        "train / valid / test: "
        + " / ".join(f"{splits.get(n, {}).get('documents', 0):,}" for n in ("train", "valid", "test")),
    )
    filters = "".join(
        f"<h3>{html.escape(name)}: {f['documents']} documents, {f['chars']} chars</h3><ul>{_examples(f['examples'])}</ul>"
        for name, f in report["filters"].items()
    )
    d, copies = report["dedup"], report["source_copies_skipped"]
    duplicates = (
        f"<p>exact removed: {d['exact_removed']}, near removed: {d['near_removed']}, clusters: {d['clusters']}. "
        f"Kept from each cluster: {html.escape(d['kept_in_cluster'])}.</p>"
    )
    if copies["count"]:
        duplicates += (
            f"<p>{copies['count']} Sphinx source copies (<code>_sources/</code>) left out because their rendered page is an input "
            f"(extract.skip_source_copies), e.g. <code>{html.escape(copies['first'][0]['path'])}</code>.</p>"
        )
    duplicates += "".join(
        f"<h3>{c['size']} documents, kept <code>{html.escape(c['kept_source'])}</code></h3><ul>{_examples(c['members'])}</ul>"
        for c in d["largest_clusters"]
    )
    dropped, problems = report["dropped"], report["record_problems"]
    sections = [
        ("Warnings", "".join(f"<p><b>warning:</b> {html.escape(w)}</p>" for w in report["warnings"])),
        ("Summary", _table([[k, v] for k, v in s.items()], ["", "value"])),
        (
            "Splits",
            _table(
                [[n, c.get("documents", 0), c.get("records", 0), c.get("chars", 0)] for n, c in splits.items()],
                ["split", "documents", "records", "chars"],
            ),
        ),
        (
            "Formats",
            _table(
                [[n] + list(v.values()) for n, v in report["formats"].items()],
                ["format", "files", "bytes", "documents", "chars", "failures"],
            ),
        ),
        ("Cleaning", _table([[k, v] for k, v in report["cleaning"].items()], ["step", "count"])),
        ("Filters", filters or "<p>no document was filtered out</p>"),
        ("Duplicates", duplicates),
        ("Length histogram", histogram_svg(report["length_histogram_words"])),
        ("Languages", _table(list(report["languages"].items()), ["language", "documents"])),
        (
            "Failures",
            _table([[f["path"], f["format"], f["error"]] for f in report["failures"]], ["file", "format", "error"]),
        ),
        (
            "Dropped documents",
            f"<p>One line per document in <code>{dropped['log']}</code> (source, position, reason, "
            "filter or the kept document it duplicates):</p>"
            + _table(list(dropped["by_reason"].items()), ["reason", "documents"]),
        ),
        (
            f"Skipped records: {problems['count']}",
            "<ul>" + "".join(f"<li>{html.escape(p)}</li>" for p in problems["first"]) + "</ul>",
        ),
    ]
    return lead, sections
