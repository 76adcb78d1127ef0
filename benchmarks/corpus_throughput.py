"""Throughput and peak memory of `lmforge corpus` on real and generated document collections.

Collections:
  python-docs  the HTML of Debian's python3.11-doc (`apt-get install -y python3.11-doc`), ~51 MB
  pdfs         PDFs generated here with fpdf2 (running headers/footers, hyphenated line ends)
  text-1gb     ~1 GB of generated English-like text (JSONL shards plus one big .txt file), with
               planted exact and near duplicates and short junk documents
  jsonl-gz-1gb one .jsonl.gz holding ~1 GB of JSONL (the same kind of documents); gzip cannot be
               cut by byte offsets, so the main process reads it and hands out batches
  csv-1gb      one ~1 GB .csv (id, title, text; paragraphs as quoted newlines), read the same way

Each run is the real CLI in a subprocess; peak RSS is sampled every 0.1 s with psutil for the
whole process tree (main process plus workers), the main process alone and the largest worker.
The two single-file cases must stay under 2 GB of peak RSS (issue 8); the JSON and markdown say
whether they did. The peer is the same stage with one worker: the ratio shows what the second
core buys. Generated inputs live under /tmp/lmforge-bench (never in the repository) and are
reused by later runs.

    .venv/bin/python benchmarks/corpus_throughput.py            # everything, ~20 minutes on 2 cores
    .venv/bin/python benchmarks/corpus_throughput.py --quick    # 100 MB instead of 1 GB
    .venv/bin/python benchmarks/corpus_throughput.py --only jsonl-gz csv --results /tmp/corpus.json
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
WORK = Path("/tmp/lmforge-bench")
PYTHON_DOCS = Path("/usr/share/doc/python3.11/html")
RESULTS = REPO / "benchmarks" / "results" / "corpus_throughput.json"
SEED_TEXT = REPO / "src" / "lmforge" / "data" / "tinyshakespeare.txt"
RSS_LIMIT_MB = 2048  # issue 8: a 1 GB .gz or .csv must stay under 2 GB
CASES = ("python-docs", "pdfs", "text", "jsonl-gz", "csv")


def vocabulary() -> tuple[np.ndarray, np.ndarray]:
    """Real English words with their frequencies (Zipf-like), from the bundled tinyshakespeare."""
    counts = Counter(re.findall(r"[a-z]+", SEED_TEXT.read_text(encoding="utf-8").lower()))
    words = np.array(sorted(counts), dtype=object)
    freq = np.array([counts[w] for w in words], dtype=np.float64)
    return words, freq / freq.sum()


def generated_document(rng: np.random.Generator, words: np.ndarray, probs: np.ndarray) -> str:
    n_words = int(rng.integers(150, 1500))
    tokens = words[rng.choice(len(words), size=n_words, p=probs)]
    cuts = np.cumsum(rng.integers(8, 20, size=n_words // 8 + 2))
    sentences, start = [], 0
    for end in cuts:
        if start >= n_words:
            break
        sentence = " ".join(tokens[start:end])
        sentences.append(sentence[:1].upper() + sentence[1:] + ".")
        start = end
    paragraphs = [" ".join(sentences[i : i + 6]) for i in range(0, len(sentences), 6)]
    return "\n\n".join(paragraphs)


def near_copy(rng: np.random.Generator, text: str) -> str:
    words = text.split(" ")
    for i in rng.choice(len(words), size=max(1, len(words) // 100), replace=False):
        words[i] = "changed"
    return " ".join(words)


def document_stream(rng: np.random.Generator) -> Iterator[str]:
    """Endless generated documents: ~3% exact and ~5% near copies of recent ones, ~2% junk."""
    words, probs = vocabulary()
    recent: list[str] = []
    while True:
        roll = rng.random()
        if roll < 0.03 and recent:
            yield recent[int(rng.integers(len(recent)))]
        elif roll < 0.08 and recent:
            yield near_copy(rng, recent[int(rng.integers(len(recent)))])
        elif roll < 0.10:
            yield "Click here to subscribe."
        else:
            text = generated_document(rng, words, probs)
            recent = (recent + [text])[-200:]
            yield text


def _fresh(folder: Path, stamp: str) -> bool:
    """True when `folder` already holds the inputs described by `stamp`; otherwise empties it."""
    marker = folder / ".complete"
    if marker.is_file() and marker.read_text() == stamp:
        return True
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    return False


def make_text_collection(folder: Path, total_bytes: int) -> Path:
    """JSONL shards of ~64 MB plus one .txt file of a tenth of the total; ~3% exact, ~5% near copies."""
    if _fresh(folder, str(total_bytes)):
        return folder
    rng = np.random.default_rng(0)
    words, probs = vocabulary()
    shard, handle = 0, None
    text_part = total_bytes // 10
    with open(folder / "book.txt", "w", encoding="utf-8") as book:
        while book.tell() < text_part:
            book.write(generated_document(rng, words, probs) + "\n\n")
        written = book.tell()
    for text in document_stream(rng):  # the rng goes on from the book: the same files as before
        if written >= total_bytes:
            break
        if handle is None or handle.tell() > 64_000_000:
            if handle is not None:
                handle.close()
            handle = open(folder / f"docs-{shard:03d}.jsonl", "w", encoding="utf-8")
            shard += 1
        line = json.dumps({"text": text, "id": written}) + "\n"
        handle.write(line)
        written += len(line)
    handle.close()
    (folder / ".complete").write_text(str(total_bytes))
    return folder


def make_jsonl_gz(folder: Path, content_bytes: int) -> Path:
    """One `docs.jsonl.gz` whose uncompressed JSONL is `content_bytes` long (gzip level 1: fast to write)."""
    path = folder / "docs.jsonl.gz"
    if _fresh(folder, str(content_bytes)):
        return path
    written = 0
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as handle:
        for number, text in enumerate(document_stream(np.random.default_rng(2))):
            if written >= content_bytes:
                break
            line = json.dumps({"text": text, "id": number}) + "\n"
            handle.write(line)
            written += len(line)
    (folder / ".complete").write_text(str(content_bytes))
    return path


def make_csv(folder: Path, total_bytes: int) -> Path:
    """One `table.csv` of `total_bytes`: id, title, text, with the text's paragraphs as quoted newlines."""
    path = folder / "table.csv"
    if _fresh(folder, str(total_bytes)):
        return path
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "title", "text"])
        for number, text in enumerate(document_stream(np.random.default_rng(3))):
            if handle.tell() >= total_bytes:
                break
            writer.writerow([number, " ".join(text.split()[:6]).title(), text])
    (folder / ".complete").write_text(str(total_bytes))
    return path


def make_pdf_collection(folder: Path, count: int) -> Path:
    """`count` PDFs of 6 pages, each with a running header, page-number footer and hyphenation."""
    from fpdf import FPDF

    marker = folder / ".complete"
    if marker.is_file() and int(marker.read_text()) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    words, probs = vocabulary()
    for number in range(count):
        pdf = FPDF()
        pdf.set_auto_page_break(False)
        for page in range(6):
            pdf.add_page()
            pdf.set_font("Helvetica", size=10)
            pdf.set_xy(10, 8)
            pdf.cell(text=f"Report {number} - generated collection")
            pdf.set_xy(10, 20)
            text = " ".join(words[rng.choice(len(words), size=600, p=probs)])
            pdf.multi_cell(w=190, text=text)
            pdf.set_xy(10, 285)
            pdf.cell(text=f"Page {page + 1} of 6")
        pdf.output(str(folder / f"report-{number:04d}.pdf"))
    marker.write_text(str(count))
    return folder


def busy_cpu_percent(seconds: float = 2.0) -> float:
    """CPU use of the whole machine (100 = every core busy) over `seconds`."""
    return psutil.cpu_percent(interval=seconds)


def _machine_busy_seconds() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_for_quiet(limit_seconds: float = 180.0) -> float:
    """Wait until other work leaves the cores idle (the machine is shared); returns the last reading."""
    deadline = time.time() + limit_seconds
    busy = busy_cpu_percent()
    while busy > 15 and time.time() < deadline:
        busy = busy_cpu_percent()
    return busy


def _sample_rss(root: psutil.Process, peaks: dict) -> None:
    """Update the peaks (bytes) of the tree, the main process and the largest worker."""
    try:
        main = root.memory_info().rss
        workers = [p.memory_info().rss for p in root.children(recursive=True) if p.is_running()]
    except psutil.Error:
        return
    peaks["tree"] = max(peaks["tree"], main + sum(workers))
    peaks["main"] = max(peaks["main"], main)
    peaks["worker"] = max([peaks["worker"], *workers])


def run_stage(
    name: str, data: list[str], workers: int, extra: list[str] = (), content_bytes: int | None = None, wait: bool = True
) -> dict:
    """Run `lmforge corpus` in a subprocess; wall time, peak RSS and the report's numbers."""
    busy_before = wait_for_quiet() if wait else busy_cpu_percent()
    busy_cpu_before = _machine_busy_seconds()
    ours_before = _children_cpu_seconds()
    out = WORK / "out" / f"{name}-w{workers}"
    command = [
        sys.executable,
        "-m",
        "lmforge",
        "corpus",
        "--data",
        *data,
        "--out",
        str(out),
        "--workers",
        str(workers),
        *extra,
    ]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(process.pid)
    peaks = {"tree": 0, "main": 0, "worker": 0}
    while process.poll() is None:
        _sample_rss(root, peaks)
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    # CPU that other programs took during the run: the machine is shared, so say how much.
    others = (_machine_busy_seconds() - busy_cpu_before) - (_children_cpu_seconds() - ours_before)
    other_load = max(0.0, others) / (seconds * (os.cpu_count() or 1)) * 100
    output = process.stdout.read()
    if process.returncode != 0:
        raise SystemExit(f"{name} failed ({process.returncode}):\n{output}")
    report = json.loads((out / "report.json").read_text())
    s = report["summary"]
    return {
        "collection": name,
        "workers": workers,
        "input_mb": round(s["bytes_in"] / 1e6, 1),
        "content_mb": round((content_bytes or s["bytes_in"]) / 1e6, 1),
        "files": s["files_in"],
        "documents_in": s["documents_in"],
        "documents_out": s["documents_out"],
        "wall_seconds": round(seconds, 1),
        "stage_seconds": s["seconds"],
        "mb_per_second": round(s["bytes_in"] / 1e6 / seconds, 2),
        "stage_mb_per_second": s["mb_per_second"],
        "peak_rss_mb_tree": round(peaks["tree"] / 2**20, 1),
        "peak_rss_mb_main": round(peaks["main"] / 2**20, 1),
        "peak_rss_mb_largest_worker": round(peaks["worker"] / 2**20, 1),
        "peak_rss_mb_getrusage": s["peak_rss_mb"],
        "exact_removed": report["dedup"]["exact_removed"],
        "near_removed": report["dedup"]["near_removed"],
        "failures": s["files_failed"],
        "machine_busy_percent_before": busy_before,
        "other_programs_cpu_percent_during": round(other_load, 1),
    }


def with_rss_limit(row: dict) -> dict:
    """Mark a single-big-file run with the 2 GB limit it must stay under (main process plus workers)."""
    return {**row, "rss_limit_mb": RSS_LIMIT_MB, "under_rss_limit": row["peak_rss_mb_tree"] < RSS_LIMIT_MB}


def markdown(results: dict, command: str) -> str:
    m = results["machine"]
    lines = [
        "# Corpus throughput and peak memory",
        "",
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, Python {m['python']}, {m['date']}.",
        "",
        f"Command: `{command}`",
        "",
        "| collection | workers | input MB | content MB | docs in | docs out | seconds | MB/s | peak RSS MiB (tree / main / largest worker) | under 2 GB | others' CPU % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        limit = {True: "yes", False: "**no**"}.get(r.get("under_rss_limit"), "")
        worker = f"{r['peak_rss_mb_largest_worker']:,.0f}" if r["workers"] > 1 else "- (in the main process)"
        lines.append(
            f"| {r['collection']} | {r['workers']} | {r['input_mb']} | {r['content_mb']} | {r['documents_in']:,} | {r['documents_out']:,} "
            f"| {r['wall_seconds']} | {r['mb_per_second']} | {r['peak_rss_mb_tree']:,.0f} / {r['peak_rss_mb_main']:,.0f} / "
            f"{worker} | {limit} | {r['other_programs_cpu_percent_during']} |"
        )
    lines += [
        "",
        f"Speed-up of 2 workers over 1: {results['speedup_2_over_1_workers']}.",
        "",
        "Notes:",
        "- MB/s is input bytes (compressed bytes for .gz) over wall time; *content MB* is what the .gz holds.",
        "- Peak RSS is sampled every 0.1 s with psutil: the sum over the process tree, the main process alone and the "
        "largest worker; `peak_rss_mb_getrusage` in the JSON is the stage's own report (ru_maxrss).",
        "- A single .jsonl.gz or .csv cannot be cut by byte offsets: the main process reads it in order and hands the "
        "workers batches of about `extract.chunk_bytes` of documents, so memory stays bounded (limit: 2 GB).",
    ]
    return "\n".join(lines) + "\n"


def machine() -> dict:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 MB generated text instead of 1 GB")
    parser.add_argument("--only", nargs="+", choices=CASES, default=list(CASES), help="run these cases only")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON to write (the markdown goes beside it)")
    parser.add_argument(
        "--no-wait", action="store_true", help="do not wait for idle cores before each run (RSS checks only)"
    )
    args = parser.parse_args()
    total = 100_000_000 if args.quick else 1_000_000_000
    size = f"{total // 1_000_000}mb"
    wait = not args.no_wait
    rows = []
    if "python-docs" in args.only and PYTHON_DOCS.is_dir():
        for workers in (1, 2):
            rows.append(run_stage("python-docs-html", [str(PYTHON_DOCS / "**" / "*.html")], workers, wait=wait))
    elif "python-docs" in args.only:
        print(
            f"skipping python-docs-html: {PYTHON_DOCS} is missing (apt-get install -y python3.11-doc)", file=sys.stderr
        )
    if "pdfs" in args.only:
        pdfs = make_pdf_collection(WORK / "pdfs", 150)
        for workers in (1, 2):
            rows.append(run_stage("generated-pdfs", [str(pdfs)], workers, wait=wait))
    if "text" in args.only:
        text = make_text_collection(WORK / f"text-{size}", total)
        subset = [str(p) for p in sorted(text.glob("docs-00[01].jsonl"))]
        rows.append(run_stage("generated-text-128mb", subset, 1, wait=wait))
        rows.append(run_stage("generated-text-128mb", subset, 2, wait=wait))
        rows.append(run_stage(f"generated-text-{size}", [str(text)], 2, wait=wait))
    if "jsonl-gz" in args.only:
        gz = make_jsonl_gz(WORK / f"jsonl-gz-{size}", total)
        rows.append(
            with_rss_limit(run_stage(f"generated-jsonl-gz-{size}", [str(gz)], 2, content_bytes=total, wait=wait))
        )
    if "csv" in args.only:
        table = make_csv(WORK / f"csv-{size}", total)
        rows.append(with_rss_limit(run_stage(f"generated-csv-{size}", [str(table)], 2, wait=wait)))
    header = (
        f"{'collection':<26}{'workers':>8}{'MB':>9}{'docs in':>10}{'docs out':>10}{'seconds':>9}{'MB/s':>8}"
        f"{'peak RSS MB':>13}{'main':>8}{'worker':>8}{'others CPU %':>14}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['collection']:<26}{r['workers']:>8}{r['input_mb']:>9}{r['documents_in']:>10}{r['documents_out']:>10}"
            f"{r['wall_seconds']:>9}{r['mb_per_second']:>8}{r['peak_rss_mb_tree']:>13}{r['peak_rss_mb_main']:>8.0f}"
            f"{r['peak_rss_mb_largest_worker']:>8.0f}{r['other_programs_cpu_percent_during']:>14}"
        )
    ratios = {}
    for name in {r["collection"] for r in rows}:
        by_workers = {r["workers"]: r for r in rows if r["collection"] == name}
        if 1 in by_workers and 2 in by_workers:
            ratios[name] = round(by_workers[2]["mb_per_second"] / by_workers[1]["mb_per_second"], 2)
    print("speed-up of 2 workers over 1:", ratios)
    results = {"machine": machine(), "runs": rows, "speedup_2_over_1_workers": ratios}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    args.results.with_suffix(".md").write_text(markdown(results, " ".join(["python", *sys.argv])))
    print(f"wrote {args.results} and {args.results.with_suffix('.md').name}")


if __name__ == "__main__":
    main()
