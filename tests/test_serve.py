"""`lmforge serve`: every endpoint on tiny models, micro-batching under concurrency, limits, auth,
metrics, feedback across a restart, and a real server process that drains on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import tiny_pretrain

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from lmforge.predictor import Predictor  # noqa: E402
from lmforge.serve import ServeConfig, build_app  # noqa: E402

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima"]


def client(predictor: Predictor, **settings) -> TestClient:
    return TestClient(build_app(ServeConfig(model=str(predictor.folder), **settings), predictor))


@pytest.fixture(scope="module")
def classifier(tiny_classifier) -> Predictor:
    return Predictor(str(tiny_classifier), precision="fp32")


@pytest.fixture(scope="module")
def tagger(tiny_tagger) -> Predictor:
    return Predictor(str(tiny_tagger), precision="fp32")


def test_classify_one_text_or_a_list(classifier):
    with client(classifier) as http:
        one = http.post("/v1/classify", json={"text": "the film was great and the plot too"})
        assert one.status_code == 200, one.text
        (prediction,) = one.json()["predictions"]
        assert prediction["label"] in ("0", "1") and sum(prediction["scores"].values()) == pytest.approx(1, abs=1e-3)
        assert one.json()["model_hash"] == classifier.model_hash
        texts = ["the cast was awful and the music too", "the story was superb and the ending too"]
        many = http.post("/v1/classify", json={"texts": texts}).json()["predictions"]
        assert [p["scores"] for p in many] == [p["scores"] for p in classifier.run([{"text": t} for t in texts])]
        info = http.get("/v1/model").json()
        assert info["task"] == "classification" and info["labels"] == ["0", "1"] and info["endpoint"] == "/v1/classify"
        assert "accuracy" in info["metrics"] and info["token_required"] is False
        assert http.get("/healthz").json() == {"status": "ok"} and http.get("/readyz").json() == {"status": "ready"}
        assert http.get("/docs").status_code == 200 and "/v1/classify" in http.get("/openapi.json").text
        assert http.post("/v1/ner", json={"text": "x"}).status_code == 404  # not this model's task


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(tagger):
    """24 callers at once, each with a distinct text: every answer's words are its own text's,
    and the model saw batches of more than one input."""
    texts = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(1 + i % 7)) + f" number{i}" for i in range(24)]
    with client(tagger, max_wait_ms=50, max_batch=8) as http:

        def call(text: str) -> dict:
            response = http.post("/v1/ner", json={"text": text})
            assert response.status_code == 200, response.text
            return response.json()["predictions"][0]

        with ThreadPoolExecutor(max_workers=24) as pool:
            answers = list(pool.map(call, texts))
        for text, answer in zip(texts, answers):
            assert [w["text"] for w in answer["words"]] == text.split()
            assert answer["tags"] == tagger.run([{"text": text}])[0]["tags"]  # the same as alone
        metrics = http.get("/metrics").text
    sizes = {
        float(line.split('le="')[1].split('"')[0]): float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("lmforge_batch_size_bucket")
    }
    batches = float(
        next(line for line in metrics.splitlines() if line.startswith("lmforge_batch_size_count")).split()[-1]
    )
    assert batches < 24 and sizes[1.0] < batches  # some forward passes held several requests
    assert max(k for k, v in sizes.items() if v < batches) <= 8  # never above --max_batch
    assert 'lmforge_requests_total{endpoint="/v1/ner",status="200"} 24.0' in metrics
    assert "lmforge_request_seconds_bucket" in metrics


def test_ner_entities_are_character_spans(tagger):
    text = "John lives in Paris"
    with client(tagger) as http:
        (answer,) = http.post("/v1/ner", json={"texts": [text]}).json()["predictions"]
    for entity in answer["entities"]:
        assert text[entity["start"] : entity["end"]] == entity["text"] and entity["label"] in ("PER", "LOC")
    assert http is not None and answer["tags"] and len(answer["tags"]) == 4


def test_qa_and_fill_mask_endpoints(tiny_reader, tiny_masked_lm):
    context = "Paris is the capital of France."
    with client(Predictor(str(tiny_reader), precision="fp32")) as http:
        (answer,) = http.post("/v1/qa", json={"question": "What is the capital of France?", "context": context}).json()["predictions"]  # fmt: skip
        assert answer["answer"] == context[answer["start"] : answer["end"]] and answer["answer"]
        two = http.post("/v1/qa", json={"items": [{"question": "Where?", "context": context}] * 2})
        assert len(two.json()["predictions"]) == 2
        assert http.post("/v1/qa", json={"question": "only a question"}).status_code == 422
    with client(Predictor(str(tiny_masked_lm), precision="fp32")) as http:
        response = http.post("/v1/fill-mask", json={"text": "the capital of france is [MASK].", "top_k": 3})
        (filled,) = response.json()["predictions"]
        assert len(filled["candidates"]) == 3 and all(c["token"] in c["sequence"] for c in filled["candidates"])
        no_mask = http.post("/v1/fill-mask", json={"text": "no mask here"})
        assert no_mask.status_code == 422 and "has no [MASK]" in no_mask.json()["detail"]


def test_generate_streams_server_sent_events(small_text, tmp_path):
    tiny_pretrain(small_text, tmp_path / "clm")
    with client(Predictor(str(tmp_path / "clm"), precision="fp32")) as http:
        with http.stream("POST", "/v1/generate", json={"prompt": "ROMEO:", "max_new_tokens": 12, "seed": 1}) as response:  # fmt: skip
            assert response.headers["content-type"].startswith("text/event-stream")
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and len(events) > 2
        text = "".join(json.loads(e)["text"] for e in events[:-1])
        whole = http.post("/v1/generate", json={"prompt": "ROMEO:", "max_new_tokens": 12, "seed": 1, "stream": False})
        assert whole.json()["text"] == text  # the same seed gives the same text, streamed or not
        too_many = http.post("/v1/generate", json={"prompt": "x", "max_new_tokens": 10_000})
        assert too_many.status_code == 413 and "--max_new_tokens" in too_many.json()["detail"]


@pytest.mark.parametrize(
    "request_kwargs,status,message",
    [
        ({"json": {"text": "x" * 101}}, 413, "input 0 has 101 characters; this server takes at most 100 (--max_chars)"),
        ({"json": {"texts": ["a"] * 5}}, 413, "5 inputs in one request; this server takes at most 4 (--max_items)"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "JSON"),
        ({"json": {"txt": "typo in the field"}}, 422, "txt: Extra inputs are not permitted"),
        ({"json": {"text": "a", "texts": ["b"]}}, 422, "give either text (one) or texts (a list), not both"),
        ({"json": {}}, 422, "not neither"),
        ({"json": {"texts": []}}, 422, "no input"),
    ],
)
def test_limits_answer_with_what_to_change(classifier, request_kwargs, status, message):
    with client(classifier, max_chars=100, max_items=4) as http:
        response = http.post("/v1/classify", **request_kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_token_is_required_when_set(classifier):
    with client(classifier, token="s3cret") as http:
        assert http.get("/healthz").status_code == 200  # probes stay open
        missing = http.post("/v1/classify", json={"text": "a"})
        assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["detail"]
        wrong = http.post("/v1/classify", json={"text": "a"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "wrong token" in wrong.json()["detail"]
        assert http.get("/metrics").status_code == 401
        right = http.post("/v1/classify", json={"text": "a"}, headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200
        assert http.get("/v1/model", headers={"Authorization": "Bearer s3cret"}).json()["token_required"] is True


def test_feedback_survives_a_restart(classifier, tmp_path):
    db = tmp_path / "feedback.sqlite"
    with client(classifier, feedback=str(db)) as http:
        text = "the plot was boring and the cast too"
        prediction = http.post("/v1/classify", json={"text": text}).json()["predictions"][0]
        wrong = "1" if prediction["label"] == "0" else "0"
        body = {"input": {"text": text}, "prediction": prediction, "verdict": "wrong", "correction": {"label": wrong}}
        saved = http.post("/v1/feedback", json=body)
        assert saved.status_code == 200, saved.text
        assert saved.json()["counts"]["wrong"] == 1
        right = {"input": {"text": text}, "prediction": prediction, "verdict": "right"}
        assert http.post("/v1/feedback", json=right).json()["counts"] == {"right": 1, "wrong": 1, "total": 2}
    with client(classifier, feedback=str(db)) as http:  # a new server on the same file
        assert http.get("/v1/feedback").json()["counts"] == {"right": 1, "wrong": 1, "total": 2}


def test_the_page_is_served_with_ui(classifier, tmp_path):
    with client(classifier, ui=True, feedback=str(tmp_path / "f.sqlite")) as http:
        page = http.get("/")
        assert page.status_code == 200 and 'id="predict"' in page.text
    with client(classifier) as http:
        assert http.get("/").status_code == 404  # no page without --ui


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_ready(port: int, process: subprocess.Popen, seconds: float = 90) -> None:
    import httpx

    deadline = time.time() + seconds
    while time.time() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become ready")


def test_a_real_server_binds_loopback_and_drains_in_flight_requests_on_sigterm(tiny_classifier):
    import httpx

    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "lmforge", "serve", "--model", str(tiny_classifier), "--port", str(port), "--max_wait_ms", "1500"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        wait_ready(port, process)
        import psutil

        listening = [c.laddr for c in psutil.Process(process.pid).net_connections("inet") if c.status == "LISTEN"]
        assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", port)]  # loopback only, by default
        result: dict = {}

        def slow_request():  # waits ~1.5 s in the batcher: still in flight when SIGTERM arrives
            result["response"] = httpx.post(f"http://127.0.0.1:{port}/v1/classify", json={"text": "the film was great"}, timeout=30)  # fmt: skip

        thread = threading.Thread(target=slow_request)
        thread.start()
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        thread.join(30)
        assert result["response"].status_code == 200
        assert process.wait(30) == 0
        output = process.stdout.read()
        assert f"on http://127.0.0.1:{port}" in output and "Traceback" not in output
    finally:
        if process.poll() is None:
            process.kill()


def test_port_in_use_is_a_one_line_error(tiny_classifier, capsys):
    from lmforge import cli

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert cli.main(["serve", "--model", str(tiny_classifier), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"--port {port}: cannot listen there" in err and "Traceback" not in err


def test_backend_onnx_serves_the_exported_model(tiny_classifier, tmp_path):
    from lmforge import cli

    out = tmp_path / "export"
    assert cli.main(["export", "--model", str(tiny_classifier), "--out", str(out), "--onnx", "true"]) == 0
    onnx = Predictor(str(out), backend="onnx")
    assert onnx.describe()["metrics"] == json.loads((tiny_classifier / "report.json").read_text())["metrics"]
    assert onnx.describe()["metrics_split"] == "valid (used for model selection)"
    torch_side = Predictor(str(out), precision="fp32")
    texts = ["the film was great and the plot too", "the music was awful"]
    with client(onnx) as http:
        served = http.post("/v1/classify", json={"texts": texts}).json()["predictions"]
    reference = torch_side.run([{"text": t} for t in texts])
    for a, b in zip(served, reference):
        assert a["label"] == b["label"] and a["scores"] == pytest.approx(b["scores"], abs=1e-3)
    with pytest.raises(Exception, match="no ONNX model"):
        Predictor(str(tiny_classifier), backend="onnx")


def test_unknown_model_folder_is_a_one_line_error(tmp_path, capsys):
    from lmforge import cli

    assert cli.main(["serve", "--model", str(tmp_path / "nothing"), "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert "model folder not found" in err and "Traceback" not in err


def test_path_of_page_is_packaged():
    from lmforge import serve

    assert Path(serve.UI_PAGE).is_file()
