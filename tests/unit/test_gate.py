"""The gates of module_utils/gate.py against a local HTTP server.

The server answers as vLLM 0.32 does on the paths the gates ask (the /metrics lines are copied
from a real CPU instance of the fleet scenario); real vLLM behind the gates runs in the Molecule
scenarios. systemd's side is a dict of ``systemctl show`` properties.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from ansible_collections.vllm_fleet.serving.plugins.module_utils import gate

BUSY = (
    'vllm:num_requests_running{engine="0",model_name="chat"} 1.0\n'
    'vllm:num_requests_waiting{engine="0",model_name="chat"} 0.0\n'
)
IDLE = BUSY.replace(" 1.0", " 0.0")


class Fake:
    """What the server answers: the answer of the golden prompt, the metrics, the key it wants."""

    answer = "The capital of France is Paris."
    metrics: ClassVar[list[str]] = [IDLE]
    key = "k-123"
    health = 200


@pytest.fixture
def server() -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: Any) -> None:
            data = (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(Fake.health, "")
            elif self.path == "/metrics":
                self._send(200, Fake.metrics.pop(0) if len(Fake.metrics) > 1 else Fake.metrics[0])
            elif self.headers.get("Authorization") != f"Bearer {Fake.key}":
                self._send(401, {"error": "Unauthorized"})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": "chat", "object": "model"}]})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Authorization") != f"Bearer {Fake.key}":
                self._send(401, {"error": "Unauthorized"})
            elif self.path == "/v1/completions":
                self._send(200, {"choices": [{"index": 0, "text": " there", "finish_reason": "length"}]})
            else:
                self._send(200, {"choices": [{"message": {"role": "assistant", "content": Fake.answer}}]})

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()


def _instance(port: int) -> gate.Instance:
    return gate.Instance({"name": "chat", "port": port, "served_model_name": "chat"}, Fake.key)


RUNNING = {"ActiveState": "active", "SubState": "running", "InvocationID": "a", "NRestarts": "0"}
PARIS = {"prompt": "What is the capital of France?", "expect": "Paris"}


def test_the_key_is_read_from_the_secrets_file(tmp_path: Path) -> None:
    (tmp_path / "chat.env").write_text("# managed\nVLLM_API_KEY=k-123\n")
    assert gate.api_key(str(tmp_path), "chat") == "k-123"
    assert gate.api_key(str(tmp_path), "other") == ""


def test_a_serving_instance_passes_with_its_golden_answer(server: int) -> None:
    Fake.answer = "The capital of France is Paris."
    instance = _instance(server)
    assert gate.wait_ready(instance, lambda unit: RUNNING, lambda unit, n: "", 5, 0) >= 0
    assert gate.check_serving(instance, PARIS)["got"] == "The capital of France is Paris."


def test_every_served_name_must_be_listed(server: int) -> None:
    spec = {"name": "chat", "port": server, "served_model_name": ["chat", "chat:latest"]}
    with pytest.raises(gate.GateFailed, match=r"lists \['chat'\], not 'chat:latest'"):
        gate.check_serving(gate.Instance(spec, Fake.key), None)


def test_a_wrong_answer_fails_naming_expected_and_got(server: int) -> None:
    Fake.answer = "ingly ingly ingly"
    with pytest.raises(
        gate.GateFailed, match=r'golden prompt of instance chat: expected \(substring\) "Paris", got "ingly'
    ):
        gate.check_serving(_instance(server), PARIS)


def test_an_instance_whose_process_exits_fails_at_once_with_its_log_and_no_key(server: int) -> None:
    states = iter(
        [RUNNING, {**RUNNING, "ActiveState": "activating", "SubState": "auto-restart", "ExecMainStatus": "2"}]
    )
    Fake.health = 503
    journal = "api_server: error: unrecognized arguments: --no-such-flag (key k-123)\n"
    try:
        with pytest.raises(gate.GateFailed) as failed:
            gate.wait_ready(_instance(server), lambda unit: next(states), lambda unit, n: journal, 600, 0)
    finally:
        Fake.health = 200
    assert "vllm-chat.service exited (activating/auto-restart, status 2)" in str(failed.value)
    assert "unrecognized arguments: --no-such-flag" in str(failed.value)
    assert "k-123" not in str(failed.value)


def test_idle_waits_for_the_gauges_and_fails_with_the_setting_named(server: int) -> None:
    Fake.metrics = [BUSY, BUSY, IDLE]
    assert gate.wait_idle([_instance(server)], 10, 0) >= 0
    Fake.metrics = [BUSY]
    with pytest.raises(gate.GateFailed, match=r"vllm_server_drain_timeout.*chat \(1\)"):
        gate.wait_idle([_instance(server)], 0.2, 0.05)
    Fake.metrics = [IDLE]
