"""Serving load: `lmforge serve` (dynamic micro-batching) vs a transformers `pipeline` per request.

    .venv/bin/python benchmarks/serve_throughput.py --data ../shared/data            # ~15 min on 2 cores
    .venv/bin/python benchmarks/serve_throughput.py --data ../shared/data --requests 200 --out /tmp/serve  # smoke

Model: MiniLM-L6 fine-tuned on 2,000 SST-2 train sentences (1 epoch, `lmforge finetune`), exported with
`lmforge export --onnx true --quantize int8` (its card has the SST-2 dev accuracy before and after int8).
Every side is a separate server process on loopback, alone on the machine while it is measured:

  lmforge           `lmforge serve` (torch backend, its default precision, --max_batch 32 --max_wait_ms 5)
  lmforge-onnx-int8 `lmforge serve --backend onnx --onnx_file model.int8.onnx`
  pipeline          a FastAPI app whose endpoint calls `transformers.pipeline("text-classification")` once per
                    request (the model loaded once, in the precision lmforge serves in: the like-for-like row)
  pipeline-fp32     the same app with the pipeline's defaults (fp32): a second, labelled row

Load: --requests requests (SST-2 dev sentences, cycled) at each concurrency (1, 8, 32) from an httpx
async client; sides alternate order per concurrency. Reported: requests/s, p50 and p99 latency, errors.
Target: 0 errors, and at concurrency 32 lmforge >= 3x the pipeline's requests/s at an equal or better p99.
Writes benchmarks/results/serve_throughput.{json,md} (or --out PREFIX).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LMFORGE = [sys.executable, "-m", "lmforge"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pipeline_app(model: str, dtype: str):
    """The peer: one pipeline, called per request inside FastAPI (sync endpoint: FastAPI's thread pool)."""
    import torch
    from fastapi import FastAPI
    from pydantic import BaseModel
    from transformers import pipeline

    classifier = pipeline("text-classification", model=model, device="cpu", dtype=getattr(torch, dtype))
    app = FastAPI()

    class Body(BaseModel):
        text: str

    @app.post("/v1/classify")
    def classify(body: Body):
        with torch.inference_mode():
            (out,) = classifier(body.text, truncation=True)
        return {"predictions": [{"label": out["label"], "score": out["score"]}]}

    @app.get("/readyz")
    def ready():
        return {"status": "ready"}

    return app


def start(side: str, model: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if side.startswith("pipeline"):
        dtype = "float32" if side == "pipeline-fp32" else lmforge_dtype()
        command = [sys.executable, __file__, "--serve-pipeline", str(model), "--dtype", dtype, "--port", str(port)]
    else:
        command = [*LMFORGE, "serve", "--model", str(model), "--port", str(port)]
        if side == "lmforge-onnx-int8":
            command += ["--backend", "onnx", "--onnx_file", "model.int8.onnx"]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def lmforge_dtype() -> str:
    import torch

    from lmforge import hardware

    return str(hardware.resolve_precision("auto", torch.device("cpu"))).removeprefix("torch.")


async def load(port: int, texts: list[str], requests: int, concurrency: int) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    queue = list(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60) as client:

        async def worker():
            nonlocal errors
            while queue:
                i = queue.pop()
                started = time.perf_counter()
                try:
                    response = await client.post("/v1/classify", json={"text": texts[i % len(texts)]})
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - started)
                errors += not ok

        for _ in range(min(20, requests)):  # warm-up, not counted
            await client.post("/v1/classify", json={"text": texts[0]})
        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": requests,
        "concurrency": concurrency,
        "requests_per_s": round(requests / wall, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
        "errors": errors,
        "wall_s": round(wall, 1),
    }


def wait_ready(port: int, process: subprocess.Popen) -> None:
    import httpx

    deadline = time.time() + 180
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {process.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("server did not start in 3 minutes")


def measure(side: str, model: Path, texts: list[str], requests: int, concurrency: int) -> dict:
    port = free_port()
    process = start(side, model, port)
    try:
        wait_ready(port, process)
        return {"side": side, **asyncio.run(load(port, texts, requests, concurrency))}
    finally:
        process.terminate()
        process.wait(60)


def prepare(data: Path, work: Path) -> Path:
    """Fine-tune and export the served model once (kept in the work folder)."""
    export = work / "export"
    if (export / "model.int8.onnx").is_file():
        return export
    sst2 = data / "glue" / "SST-2"
    run = work / "sst2"
    if not (run / "final" / "config.json").is_file():
        subprocess.run([*LMFORGE, "finetune", "--task", "classification", "--model", "minilm", "--train_file", sst2 / "train.tsv", "--valid_file", sst2 / "dev.tsv", "--format.limit", "2000", "--epochs", "1", "--train.lr", "1e-4", "--out", run], check=True, cwd=ROOT)  # fmt: skip
    subprocess.run([*LMFORGE, "export", "--model", run, "--out", export, "--onnx", "true", "--quantize", "int8", "--parity_examples", "0"], check=True, cwd=ROOT)  # fmt: skip
    return export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--work", default=str(ROOT / "runs" / "serve_throughput"))
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--sides", default="lmforge,pipeline,lmforge-onnx-int8,pipeline-fp32")
    parser.add_argument("--out", default=None, help="results path without suffix")
    parser.add_argument("--serve-pipeline", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_pipeline:  # the peer's server process
        import uvicorn

        uvicorn.run(
            pipeline_app(args.serve_pipeline, args.dtype), host="127.0.0.1", port=args.port, log_level="warning"
        )
        return
    data, work = Path(args.data), Path(args.work)
    dev = data / "glue" / "SST-2" / "dev.tsv"
    if not dev.is_file():
        sys.exit(f"{dev}: not there; pass --data with the shared data folder")
    model = prepare(data, work)
    with open(dev, encoding="utf-8") as handle:
        texts = [row["sentence"] for row in csv.DictReader(handle, delimiter="\t")]
    sides = args.sides.split(",")
    rows = []
    for n, concurrency in enumerate(int(c) for c in args.concurrency.split(",")):
        for side in sides if n % 2 == 0 else list(reversed(sides)):  # alternated
            row = measure(side, model, texts, args.requests, concurrency)
            print(json.dumps(row), flush=True)
            rows.append(row)
    from lmforge.hardware import describe

    checks = json.loads((model / "export.json").read_text())["checks"]
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": describe(),
        "command": "python benchmarks/serve_throughput.py " + " ".join(sys.argv[1:]),
        "lmforge_precision": lmforge_dtype(),
        "model": "MiniLM-L6 fine-tuned on 2,000 SST-2 sentences, 1 epoch",
        "int8": {
            "metric": checks["metric"],
            "valid_examples": checks["examples"],
            "torch": checks["torch"][checks["metric"]],
            "onnx": checks["onnx"]["metrics"][checks["metric"]],
            "onnx_int8": checks["onnx_int8"]["metrics"][checks["metric"]],
        },
        "rows": rows,
    }
    out = args.out or str(ROOT / "benchmarks" / "results" / "serve_throughput")
    Path(out + ".json").write_text(json.dumps(result, indent=2) + "\n")
    Path(out + ".md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    rows = result["rows"]
    by = {(r["side"], r["concurrency"]): r for r in rows}
    lines = [
        "# Serving load: lmforge serve vs a transformers pipeline per request (benchmarks/serve_throughput.py)",
        "",
        f"- {result['date']}, {result['machine']}",
        f"- command: `{result['command']}`; model: {result['model']}; lmforge serves in {result['lmforge_precision']}",
        f"- int8 (onnxruntime dynamic): SST-2 dev {result['int8']['metric']} {result['int8']['torch']:.4f} (PyTorch) -> "
        f"{result['int8']['onnx_int8']:.4f} (int8), {result['int8']['valid_examples']} examples",
        "",
        "| concurrency | side | requests/s | p50 ms | p99 ms | errors | vs pipeline (req/s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(rows, key=lambda r: (r["concurrency"], r["side"])):
        peer = by.get(("pipeline", r["concurrency"]))
        ratio = f"{r['requests_per_s'] / peer['requests_per_s']:.2f}x" if peer else ""
        lines.append(
            f"| {r['concurrency']} | {r['side']} | {r['requests_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
