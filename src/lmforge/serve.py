"""`lmforge serve`: an HTTP API for a model, with dynamic micro-batching (FastAPI + uvicorn).

    POST /v1/classify | /v1/ner | /v1/qa | /v1/fill-mask   one input or a list -> {"predictions": [...]}
    POST /v1/generate                                      text, streamed as server-sent events
    GET  /healthz  /readyz  /v1/model  /metrics (Prometheus)  /docs (OpenAPI)
    GET  /  and  POST|GET /v1/feedback                     with --ui: try the model, correct it

Concurrent requests wait up to --max_wait_ms for each other and go through the model as one
forward pass of at most --max_batch inputs, padded to the longest (`Predictor.run` in a worker
thread, so the server keeps accepting meanwhile); each caller gets its own results back.
Binds 127.0.0.1 unless --host says otherwise; --token makes every /v1 call need
`Authorization: Bearer TOKEN`. Limits answer with what to change: 413 for a text or a batch
too large, 422 for malformed JSON or wrong fields, 401 for a missing or wrong token.
"""

import asyncio
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from lmforge.config import option
from lmforge.errors import LmforgeError

UI_PAGE = Path(__file__).parent / "ui" / "index.html"
ENDPOINT_OF = {"classification": "classify", "ner": "ner", "qa": "qa", "fill-mask": "fill-mask", "generate": "generate"}


@dataclass
class ServeConfig:
    model: str = option("", "model folder: an export, a run folder (finetune, adapt, pretrain) or an HF folder")
    host: str = option("127.0.0.1", "address to bind: 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)")
    port: int = option(8000, "TCP port")
    backend: Literal["torch", "onnx"] = option("torch", "torch, or onnx (onnxruntime; an `export --onnx true` folder)")
    onnx_file: str = option("model.onnx", "the ONNX file in the model folder (model.int8.onnx for int8)")
    token: Optional[str] = option(
        None, "require `Authorization: Bearer TOKEN` on every /v1 call (default: $LMFORGE_TOKEN if set)"
    )
    max_batch: int = option(32, "inputs per forward pass at most (requests are grouped up to this)")
    max_wait_ms: float = option(5.0, "how long the first input of a batch waits for others to join it")
    max_items: int = option(64, "inputs per request at most (413 above)")
    max_chars: int = option(20000, "characters per text at most (413 above); longer token sequences are truncated")
    max_new_tokens: int = option(512, "generate: tokens per request at most")
    precision: Literal["auto", "fp32", "bf16"] = option("auto", "torch backend: bf16 where the CPU runs it natively")
    threads: int = option(0, "torch/onnxruntime threads (0: the library default)")
    ui: bool = option(False, "serve the page at / where people try the model and mark predictions right or wrong")
    feedback: Optional[str] = option(None, "SQLite file for feedback (default with --ui: feedback.sqlite here)")
    drain_seconds: float = option(10.0, "on Ctrl-C / SIGTERM, how long in-flight requests may take to finish")


# --- micro-batching -------------------------------------------------------------------------------


class Batcher:
    """Groups inputs from concurrent requests into batches for `run` (called in one worker thread)."""

    def __init__(self, run, max_batch: int, max_wait_ms: float, observe=None):
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000
        self.observe = observe or (lambda size: None)
        self.queue: asyncio.Queue | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmforge-batch")
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self.loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def submit(self, items: list[dict]) -> list[dict]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures):
            self.queue.put_nowait((item, future))
        return list(await asyncio.gather(*futures))

    async def loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            live = [(item, f) for item, f in batch if not f.done()]  # a caller that went away is skipped
            if not live:
                continue
            self.observe(len(live))
            try:
                results = await loop.run_in_executor(self.executor, self.run, [item for item, _ in live])
            except Exception as err:  # every caller of this batch gets the error
                for _, future in live:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, future), result in zip(live, results):
                if not future.done():
                    future.set_result(result)


# --- the app --------------------------------------------------------------------------------------


def build_app(config: ServeConfig, predictor=None):
    """The FastAPI app for `config` (a loaded `predictor` may be given: tests share one)."""
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException

    if predictor is None:
        from lmforge.predictor import Predictor

        predictor = Predictor(config.model, config.backend, config.onnx_file, config.precision)
    kind = predictor.kind
    token = config.token if config.token is not None else os.environ.get("LMFORGE_TOKEN") or None
    registry = CollectorRegistry()
    requests = Counter("lmforge_requests", "HTTP requests", ["endpoint", "status"], registry=registry)
    latency = Histogram(
        "lmforge_request_seconds", "request latency", ["endpoint"], registry=registry,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    )  # fmt: skip
    sizes = Histogram(
        "lmforge_batch_size", "inputs per forward pass", registry=registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128)
    )
    errors = Counter("lmforge_errors", "requests answered with an error", ["endpoint", "status"], registry=registry)
    batcher = Batcher(predictor.run, config.max_batch, config.max_wait_ms, sizes.observe)
    store = None
    if config.ui or config.feedback:
        from lmforge.feedback import FeedbackStore

        store = FeedbackStore(config.feedback or "feedback.sqlite")
    state = {"ready": False}

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        state["ready"] = True
        yield
        state["ready"] = False
        await batcher.stop()

    app = FastAPI(
        title=f"lmforge serve: {predictor.describe()['model']} ({kind})",
        description="Predictions from a model trained with lmforge. Every /v1 call takes one input or a list.",
        lifespan=lifespan,
    )

    def fail(status: int, message: str):
        raise HTTPException(status_code=status, detail=message)

    async def authorised(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not given.lower().startswith("bearer "):
            raise HTTPException(401, "this server needs a token: send the header `Authorization: Bearer TOKEN`", headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        import hmac

        if not hmac.compare_digest(given[7:].strip().encode(), token.encode()):
            raise HTTPException(401, "wrong token: send the one the server was started with (--token)", headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    guard = [Depends(authorised)]

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        endpoint = request.url.path
        if endpoint.startswith("/v1/") or endpoint in ("/healthz", "/readyz", "/metrics", "/"):
            requests.labels(endpoint, str(response.status_code)).inc()
            latency.labels(endpoint).observe(time.perf_counter() - started)
            if response.status_code >= 400:
                errors.labels(endpoint, str(response.status_code)).inc()
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        problems = []
        for e in err.errors()[:3]:
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {e.get('msg', 'invalid')}")
        hint = {
            "classification": '{"text": "..."} or {"texts": ["...", "..."]}',
            "ner": '{"text": "..."} or {"texts": [...]}',
            "qa": '{"question": "...", "context": "..."} or {"items": [{"question": ..., "context": ...}]}',
            "fill-mask": '{"text": "... [MASK] ..."}',
            "generate": '{"prompt": "...", "max_new_tokens": 64}',
        }.get(kind, "")
        return JSONResponse({"detail": f"{'; '.join(problems)}; send JSON like {hint}"}, status_code=422)

    @app.exception_handler(LmforgeError)
    async def bad_input(request: Request, err: LmforgeError):
        return JSONResponse({"detail": str(err)}, status_code=422)

    # --- inputs ------------------------------------------------------------------------------

    class Texts(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: Optional[str] = Field(None, description="one text")
        texts: Optional[list[str]] = Field(None, description="several texts, answered in order")
        text_pair: Optional[str] = Field(None, description="classification of pairs: the second text")
        text_pairs: Optional[list[str]] = Field(None, description="the second texts, one per text")
        top_k: int = Field(5, ge=1, le=100, description="fill-mask: candidates per mask")

    class QaItem(BaseModel):
        model_config = ConfigDict(extra="forbid")
        question: str
        context: str

    class Questions(BaseModel):
        model_config = ConfigDict(extra="forbid")
        question: Optional[str] = None
        context: Optional[str] = None
        items: Optional[list[QaItem]] = None

    class Prompt(BaseModel):
        model_config = ConfigDict(extra="forbid")
        prompt: str
        max_new_tokens: int = Field(64, ge=1)
        temperature: float = Field(0.8, ge=0.0, le=5.0)
        top_k: int = Field(50, ge=0)
        seed: Optional[int] = None
        stream: bool = True

    def check_size(texts: list[str]) -> None:
        if not texts:
            fail(422, "no input: give one text or a non-empty list")
        if len(texts) > config.max_items:
            fail(413, f"{len(texts)} inputs in one request; this server takes at most {config.max_items} (--max_items): send them in several requests")  # fmt: skip
        for n, text in enumerate(texts):
            if len(text) > config.max_chars:
                fail(413, f"input {n} has {len(text):,} characters; this server takes at most {config.max_chars:,} (--max_chars): shorten or split it")  # fmt: skip

    def one_or_many(single, many, name: str) -> list:
        if (single is None) == (many is None):
            fail(
                422, f"give either {name} (one) or {name}s (a list), not {'both' if single is not None else 'neither'}"
            )
        return [single] if single is not None else list(many)

    def items_of(body: Texts) -> list[dict]:
        texts = one_or_many(body.text, body.texts, "text")
        check_size(texts)
        items = [{"text": t} for t in texts]
        if body.text_pair is not None or body.text_pairs is not None:
            if kind != "classification":
                fail(422, "text_pair is for classification of pairs")
            pairs = [body.text_pair] if body.text_pair is not None else list(body.text_pairs)
            if len(pairs) != len(texts):
                fail(422, f"{len(texts)} texts but {len(pairs)} text_pairs: give one pair per text")
            check_size(pairs)
            for item, pair in zip(items, pairs):
                item["text_pair"] = pair
        if kind == "fill-mask":
            mask = predictor.tokenizer.mask_token
            for n, item in enumerate(items):
                if mask not in item["text"]:
                    fail(422, f"input {n} has no {mask}: put {mask} where the model should fill in a word")
                item["top_k"] = body.top_k
        return items

    async def answer(items: list[dict]) -> dict:
        return {"predictions": await batcher.submit(items), "model_hash": predictor.model_hash}

    def only(task: str):
        if kind != task:
            fail(404, f"this server serves a {kind} model: use POST /v1/{ENDPOINT_OF[kind]}")

    def text_endpoint(task: str):
        async def endpoint(body: Texts):
            only(task)
            return await answer(items_of(body))

        return endpoint

    for task, summary in (
        ("classification", "labels with scores for each text"),
        ("ner", "entities (character spans) in each text"),
        ("fill-mask", "candidates for the mask token in each text"),
    ):
        path = f"/v1/{ENDPOINT_OF[task]}"
        app.post(path, dependencies=guard, summary=summary, name=ENDPOINT_OF[task])(text_endpoint(task))

    @app.post("/v1/qa", dependencies=guard, summary="the answer span in each context")
    async def qa(body: Questions):
        only("qa")
        if body.items is not None:
            if body.question is not None or body.context is not None:
                fail(422, "give either question and context (one) or items (a list), not both")
            items = [{"question": i.question, "context": i.context} for i in body.items]
        elif body.question is None or body.context is None:
            fail(422, "give question and context (both), or items: [{question, context}, ...]")
        else:
            items = [{"question": body.question, "context": body.context}]
        check_size([i["context"] for i in items])
        check_size([i["question"] for i in items])
        return await answer(items)

    @app.post("/v1/generate", dependencies=guard, summary="a continuation of the prompt (server-sent events)")
    async def generate(body: Prompt):
        only("generate")
        check_size([body.prompt])
        if body.max_new_tokens > config.max_new_tokens:
            fail(413, f"max_new_tokens {body.max_new_tokens} is above this server's {config.max_new_tokens} (--max_new_tokens)")  # fmt: skip
        pieces = predictor.generate(body.prompt, body.max_new_tokens, body.temperature, body.top_k, body.seed)
        if not body.stream:
            loop = asyncio.get_running_loop()
            text = await loop.run_in_executor(None, lambda: "".join(pieces))
            return {"text": text, "model_hash": predictor.model_hash}

        async def events():
            loop = asyncio.get_running_loop()
            done = object()
            while True:
                piece = await loop.run_in_executor(None, next, pieces, done)
                if piece is done:
                    break
                if piece:
                    yield f"data: {json.dumps({'text': piece})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/healthz", summary="the process is up")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="the model is loaded and the batcher runs")
    async def readyz():
        if not state["ready"]:
            return JSONResponse({"status": "starting"}, status_code=503)
        return {"status": "ready"}

    @app.get("/v1/model", dependencies=guard, summary="task, labels, metrics of the served model")
    async def model_info():
        return predictor.describe() | {
            "endpoint": f"/v1/{ENDPOINT_OF[kind]}",
            "max_batch": config.max_batch,
            "max_items": config.max_items,
            "max_chars": config.max_chars,
            "token_required": token is not None,
            "feedback": store is not None,
        }

    @app.get("/metrics", dependencies=guard, summary="Prometheus metrics")
    async def metrics():
        return PlainTextResponse(generate_latest(registry).decode(), media_type=CONTENT_TYPE_LATEST)

    if store is not None:

        class Feedback(BaseModel):
            model_config = ConfigDict(extra="forbid")
            task: Optional[str] = None
            input: dict
            prediction: dict
            verdict: Literal["right", "wrong"]
            correction: Optional[dict] = None

        @app.post("/v1/feedback", dependencies=guard, summary="mark a prediction right, or wrong with the correction")
        async def feedback(body: Feedback):
            if body.task is not None and body.task != kind:
                fail(422, f"task {body.task}: this server serves {kind}")
            loop = asyncio.get_running_loop()
            add = lambda: store.add(
                kind, predictor.model_hash, body.input, body.prediction, body.verdict, body.correction
            )  # noqa: E731
            row = await loop.run_in_executor(None, add)
            return {"id": row, "counts": store.counts(predictor.model_hash)}

        @app.get("/v1/feedback", dependencies=guard, summary="feedback counts for the served model")
        async def feedback_counts():
            return {"counts": store.counts(predictor.model_hash)}

    if config.ui:

        @app.get("/", response_class=HTMLResponse, include_in_schema=False)
        async def page():
            return HTMLResponse(UI_PAGE.read_text(encoding="utf-8"))

    return app


def check(config: ServeConfig) -> None:
    if not config.model:
        raise LmforgeError("--model is required: a model folder (an export, a run folder or an HF folder)")
    if not 0 < config.port < 65536:
        raise LmforgeError(f"--port {config.port}: give a TCP port between 1 and 65535")
    for name in ("max_batch", "max_items", "max_chars", "max_new_tokens"):
        if getattr(config, name) < 1:
            raise LmforgeError(f"--{name} {getattr(config, name)}: must be at least 1")
    if config.max_wait_ms < 0:
        raise LmforgeError("--max_wait_ms must be 0 or more")


def free_port(host: str, port: int) -> None:
    """A port another process holds is a one-line error before the model loads."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise LmforgeError(f"--host {host} --port {port}: cannot listen there ({err.strerror}); choose another --port, or stop the server using it") from None  # fmt: skip


def run(config: ServeConfig) -> None:
    """`lmforge serve`: load the model, then answer until Ctrl-C / SIGTERM (in-flight requests finish)."""
    import uvicorn

    check(config)
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    free_port(config.host, config.port)
    app = build_app(config)
    loopback = config.host in ("127.0.0.1", "localhost", "::1")
    if not loopback and config.token is None and not os.environ.get("LMFORGE_TOKEN"):
        print(f"warning: serving on {config.host} without --token: anyone who reaches this port can use the model", flush=True)  # fmt: skip
    shown = f"[{config.host}]" if ":" in config.host else config.host
    print(f"serving {app.title.split(': ', 1)[1]} on http://{shown}:{config.port} (API docs: /docs{', try it: /' if config.ui else ''})", flush=True)  # fmt: skip
    graceful_server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning", timeout_graceful_shutdown=config.drain_seconds)).run()  # fmt: skip
    print("stopped: in-flight requests were answered", flush=True)


def graceful_server(settings):
    """uvicorn's server, whose Ctrl-C / SIGTERM ends `serve` with exit 0 once in-flight requests are
    answered (uvicorn itself re-raises the signal after its graceful shutdown)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    return Server(settings)
