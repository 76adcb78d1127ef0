"""Throughput and peak memory of `lmforge corpus` on real and generated document collections.

Collections:
  python-docs  the HTML of Debian's python3.11-doc (`apt-get install -y python3.11-doc`), ~51 MB
  pdfs         PDFs generated here with fpdf2 (running headers/footers, hyphenated line ends)
  text-1gb     ~1 GB of generated English-like text (JSONL shards plus one big .txt file), with
               planted exact and near duplicates and short junk documents

Each run is the real CLI in a subprocess; peak RSS is the largest sum of RSS over the process
tree (main process plus workers), sampled every 0.1 s with psutil. The peer is the same stage
with one worker: the ratio shows what the second core buys. Generated inputs live under
/tmp/lmforge-bench (never in the repository) and are reused by later runs.

    .venv/bin/python benchmarks/corpus_throughput.py            # everything, ~8 minutes on 2 cores
    .venv/bin/python benchmarks/corpus_throughput.py --quick    # 100 MB instead of 1 GB
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
WORK = Path("/tmp/lmforge-bench")
PYTHON_DOCS = Path("/usr/share/doc/python3.11/html")
RESULTS = REPO / "benchmarks" / "results" / "corpus_throughput.json"
SEED_TEXT = REPO / "src" / "lmforge" / "data" / "tinyshakespeare.txt"


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
    paragraphs = [" ".join(sentences[i:i + 6]) for i in range(0, len(sentences), 6)]
    return "\n\n".join(paragraphs)


def near_copy(rng: np.random.Generator, text: str) -> str:
    words = text.split(" ")
    for i in rng.choice(len(words), size=max(1, len(words) // 100), replace=False):
        words[i] = "changed"
    return " ".join(words)


def make_text_collection(folder: Path, total_bytes: int) -> Path:
    """JSONL shards of ~64 MB plus one .txt file of a tenth of the total; ~3% exact, ~5% near copies."""
    marker = folder / ".complete"
    if marker.is_file() and int(marker.read_text()) == total_bytes:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    rng = np.random.default_rng(0)
    words, probs = vocabulary()
    written, shard, handle, recent = 0, 0, None, []
    text_part = total_bytes // 10
    with open(folder / "book.txt", "w", encoding="utf-8") as book:
        while book.tell() < text_part:
            book.write(generated_document(rng, words, probs) + "\n\n")
        written = book.tell()
    while written < total_bytes:
        if handle is None or handle.tell() > 64_000_000:
            if handle is not None:
                handle.close()
            handle = open(folder / f"docs-{shard:03d}.jsonl", "w", encoding="utf-8")
            shard += 1
        roll = rng.random()
        if roll < 0.03 and recent:
            text = recent[int(rng.integers(len(recent)))]
        elif roll < 0.08 and recent:
            text = near_copy(rng, recent[int(rng.integers(len(recent)))])
        elif roll < 0.10:
            text = "Click here to subscribe."
        else:
            text = generated_document(rng, words, probs)
            recent = (recent + [text])[-200:]
        line = json.dumps({"text": text, "id": written}) + "\n"
        handle.write(line)
        written += len(line)
    handle.close()
    marker.write_text(str(total_bytes))
    return folder


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


def run_stage(name: str, data: list[str], workers: int, extra: list[str] = ()) -> dict:
    """Run `lmforge corpus` in a subprocess; wall time, peak tree RSS and the report's numbers."""
    busy_before = wait_for_quiet()
    busy_cpu_before = _machine_busy_seconds()
    ours_before = _children_cpu_seconds()
    out = WORK / "out" / f"{name}-w{workers}"
    command = [sys.executable, "-m", "lmforge", "corpus", "--data", *data, "--out", str(out),
               "--workers", str(workers), *extra]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        try:
            tree = [root] + root.children(recursive=True)
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
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
        "collection": name, "workers": workers, "input_mb": round(s["bytes_in"] / 1e6, 1),
        "files": s["files_in"], "documents_in": s["documents_in"], "documents_out": s["documents_out"],
        "wall_seconds": round(seconds, 1), "stage_seconds": s["seconds"],
        "mb_per_second": round(s["bytes_in"] / 1e6 / seconds, 2), "stage_mb_per_second": s["mb_per_second"],
        "peak_rss_mb_tree": round(peak / 2**20, 1), "peak_rss_mb_getrusage": s["peak_rss_mb"],
        "exact_removed": report["dedup"]["exact_removed"], "near_removed": report["dedup"]["near_removed"],
        "failures": s["files_failed"], "machine_busy_percent_before": busy_before,
        "other_programs_cpu_percent_during": round(other_load, 1),
    }


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 MB generated text instead of 1 GB")
    args = parser.parse_args()
    total = 100_000_000 if args.quick else 1_000_000_000
    rows = []
    if PYTHON_DOCS.is_dir():
        for workers in (1, 2):
            rows.append(run_stage("python-docs-html", [str(PYTHON_DOCS / "**" / "*.html")], workers))
    else:
        print(f"skipping python-docs-html: {PYTHON_DOCS} is missing (apt-get install -y python3.11-doc)", file=sys.stderr)
    pdfs = make_pdf_collection(WORK / "pdfs", 150)
    for workers in (1, 2):
        rows.append(run_stage("generated-pdfs", [str(pdfs)], workers))
    text = make_text_collection(WORK / f"text-{total // 1_000_000}mb", total)
    subset = [str(p) for p in sorted(text.glob("docs-00[01].jsonl"))]
    rows.append(run_stage("generated-text-128mb", subset, 1))
    rows.append(run_stage("generated-text-128mb", subset, 2))
    rows.append(run_stage(f"generated-text-{total // 1_000_000}mb", [str(text)], 2))
    header = (f"{'collection':<24}{'workers':>8}{'MB':>9}{'docs in':>10}{'docs out':>10}{'seconds':>9}{'MB/s':>8}"
              f"{'peak RSS MB':>13}{'others CPU %':>14}")
    print(header)
    for r in rows:
        print(f"{r['collection']:<24}{r['workers']:>8}{r['input_mb']:>9}{r['documents_in']:>10}{r['documents_out']:>10}"
              f"{r['wall_seconds']:>9}{r['mb_per_second']:>8}{r['peak_rss_mb_tree']:>13}{r['other_programs_cpu_percent_during']:>14}")
    ratios = {}
    for name in {r["collection"] for r in rows}:
        by_workers = {r["workers"]: r for r in rows if r["collection"] == name}
        if 1 in by_workers and 2 in by_workers:
            ratios[name] = round(by_workers[2]["mb_per_second"] / by_workers[1]["mb_per_second"], 2)
    print("speed-up of 2 workers over 1:", ratios)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine(), "runs": rows, "speedup_2_over_1_workers": ratios}, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
