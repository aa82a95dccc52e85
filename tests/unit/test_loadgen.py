"""The load generator against a small OpenAI-compatible server (stdlib HTTP, real client)."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from vllm_fleet.loadgen import LoadGenerator, LoadReport, RequestResult, percentile

ANSWER = "The capital of France is Paris."


class _Handler(BaseHTTPRequestHandler):
    # What the server does with the next requests: "ok", "wrong", "cut" (stream without a finish
    # reason) or "500".
    mode = "ok"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.headers["Authorization"] == "Bearer key"
        if self.mode == "500":
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": "boom"}')
            return
        text = "The capital of France is Lyon." if self.mode == "wrong" else ANSWER
        finish = None if self.mode == "cut" else "stop"
        base = {"id": "x", "created": 0, "model": body["model"]}
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for i, word in enumerate(text.split(" ")):
                delta = {
                    "index": 0,
                    "delta": {"content": ("" if i == 0 else " ") + word},
                    "finish_reason": None,
                }
                chunk = {**base, "object": "chat.completion.chunk", "choices": [delta]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            last = {"index": 0, "delta": {}, "finish_reason": finish}
            closing = {**base, "object": "chat.completion.chunk", "choices": [last]}
            self.wfile.write(f"data: {json.dumps(closing)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            return
        message = {"role": "assistant", "content": text}
        reply = {
            **base,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": finish or "length"}],
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.mode = "ok"
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def _run(url: str, mode: str, requests: int = 8) -> LoadReport:
    _Handler.mode = mode
    with LoadGenerator(url, "key", "smollm2", workers=2, expect="Paris", timeout=10) as load:
        assert load.wait_for(requests, timeout=20)
    return load.report


def test_good_answers_stream_and_not(server: str) -> None:
    report = _run(server, "ok")
    assert report.failed == 0
    assert 0 < report.summary()["streams"] < report.total
    assert report.summary()["p50_s"] <= report.summary()["p99_s"]


@pytest.mark.parametrize(
    ("mode", "error"),
    [("wrong", "unexpected answer"), ("500", "InternalServerError"), ("cut", "no finish reason")],
)
def test_every_kind_of_failure_counts(server: str, mode: str, error: str) -> None:
    report = _run(server, mode)
    if mode == "cut":
        # Only streams can end without a finish reason here.
        assert {r.stream for r in report.failures} == {True}
    else:
        assert report.failed == report.total
    assert all(error in (r.error or "") for r in report.failures)


def test_a_rate_caps_the_load_however_fast_the_answers(server: str) -> None:
    # The local server answers in milliseconds: uncapped, two workers send hundreds a second.
    began = time.monotonic()
    with LoadGenerator(server, "key", "smollm2", workers=2, expect="Paris", timeout=10, rate=10) as load:
        time.sleep(1.0)
    ran = time.monotonic() - began
    # Starts at 0, 0.1, 0.2 ... s at most (a loaded machine only starts fewer), each finished.
    assert 2 <= load.report.total <= 10 * ran + 1, (load.report.total, ran)
    assert load.report.failed == 0


def test_a_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rate must be above 0 requests per second, got 0"):
        LoadGenerator("http://127.0.0.1:9/v1", "key", "m", rate=0)


def test_windows_and_percentiles() -> None:
    report = LoadReport([RequestResult(float(i), float(i) + i / 10, i % 2 == 0) for i in range(1, 11)])
    assert report.window(3, 7.5).total == 4
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([1.0, 2.0], 0.99) == 2.0
    assert math.isnan(percentile([], 0.5))
    assert report.latencies(stream=True) == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
