"""The gates of a host's instances, asked on the host itself: ready, and idle.

Ready (after every start): the unit runs and has not been restarted by systemd since the gate
began (a flag or setting that vLLM refuses makes it exit at once; Restart=on-failure would hide
that), /health answers 200, /v1/models lists the served names, one token is generated, and each
golden prompt gets its known answer (module_utils/golden.py). /health alone is not readiness:
it answers 200 while the engine cannot generate, and on damaged weights.

Idle (after the gateways stopped sending the host requests): vLLM's own gauges of running and
waiting requests are 0 on every instance. An instance that does not answer has nothing in flight.

The API key of an instance is read from its root-only secrets file on the host: it never
travels as a parameter, and nothing here returns it.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ansible.module_utils.urls import open_url
from ansible_collections.vllm_fleet.serving.plugins.module_utils.golden import (
    in_flight,
    passes,
    with_defaults,
)
from ansible_collections.vllm_fleet.serving.plugins.module_utils.vllm_spec import routable_names, served_names

# systemctl show -p ... -> {property: value}; journal(name, lines) -> the unit's last log lines.
UnitState = Callable[[str], Mapping[str, str]]
Journal = Callable[[str, int], str]


class GateFailed(Exception):
    """An instance failed its gate; the message names it and says why (never a key)."""


def api_key(config_dir: str, name: str) -> str:
    """The instance's key from its secrets file (VLLM_API_KEY=...), or '' when it has none."""
    try:
        with open(os.path.join(config_dir, f"{name}.env"), encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("VLLM_API_KEY="):
                    return line.split("=", 1)[1].strip()
    except FileNotFoundError:
        pass
    return ""


def request(
    url: str, key: str, body: Mapping[str, Any] | None = None, timeout: float = 10
) -> tuple[int, str]:
    """(HTTP status, body) of a GET, or a POST of ``body`` as JSON; status 0 when nothing answers."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data else {}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        method = "POST" if data else "GET"
        # 127.0.0.1 only: a proxy from the environment must not see the request.
        with open_url(
            url, data=data, headers=headers, method=method, timeout=timeout, use_proxy=False
        ) as reply:
            return int(reply.status), reply.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return int(err.code), err.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return 0, ""


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


class Instance:
    """One instance as the gates see it: name, port, served names (the first asked), key."""

    def __init__(self, spec: Mapping[str, Any], key: str) -> None:
        self.name = str(spec["name"])
        # vLLM lists its adapters in /v1/models beside the served names: all must be there.
        self.names = routable_names(spec)
        self.served = served_names(spec)[0]
        self.base = f"http://127.0.0.1:{int(spec['port'])}"
        self.key = key

    def redact(self, text: str) -> str:
        return text.replace(self.key, "********") if self.key else text


def _started(state: Mapping[str, str]) -> tuple[str, str]:
    return state.get("InvocationID", ""), state.get("NRestarts", "0")


def wait_ready(
    instance: Instance,
    unit_state: UnitState,
    journal: Journal,
    timeout: float,
    interval: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Wait until the instance answers /health; seconds it took. Fails fast if its process exits."""
    unit = f"vllm-{instance.name}.service"
    began = clock()
    first = _started(unit_state(unit))
    while True:
        state = unit_state(unit)
        if (
            state.get("ActiveState") in ("failed", "inactive")
            or state.get("SubState") == "auto-restart"
            or (_started(state) != first)
        ):
            tail = instance.redact(journal(unit, 8)).strip()
            how = f"{state.get('ActiveState')}/{state.get('SubState')}"
            raise GateFailed(
                f"instance {instance.name}: {unit} exited ({how}, status {state.get('ExecMainStatus', '?')})"
                f" before it served; its last log lines:\n{tail}"
            )
        status, _body = request(f"{instance.base}/health", instance.key, timeout=5)
        if status == 200:
            return clock() - began
        if clock() - began > timeout:
            raise GateFailed(
                f"instance {instance.name}: /health did not answer 200 within {timeout:.0f} s"
                f" (vllm_server_ready_timeout); last status {status or 'no answer'}"
            )
        sleep(interval)


def check_serving(instance: Instance, golden: Mapping[str, Any] | None) -> dict[str, Any]:
    """After /health: the served names are listed, a token comes, the golden answer is right."""
    status, body = request(f"{instance.base}/v1/models", instance.key)
    listed = [m.get("id") for m in ((_json(body) or {}).get("data") or []) if isinstance(m, Mapping)]
    missing = [name for name in instance.names if name not in listed]
    if missing:
        raise GateFailed(
            f"instance {instance.name}: /v1/models (HTTP {status}) lists {listed}, "
            f"not {', '.join(map(repr, missing))}"
        )
    completion = {"model": instance.served, "prompt": "Hello", "max_tokens": 1, "temperature": 0}
    status, body = request(f"{instance.base}/v1/completions", instance.key, completion, timeout=120)
    if not ((_json(body) or {}).get("choices") if status == 200 else None):
        reply = instance.redact(body)[:300]
        raise GateFailed(f"instance {instance.name}: a 1-token completion failed (HTTP {status}): {reply}")
    result: dict[str, Any] = {"instance": instance.name}
    if golden:
        setting = with_defaults(golden)
        chat = {
            "model": instance.served,
            "messages": [{"role": "user", "content": setting["prompt"]}],
            "max_tokens": int(setting["max_tokens"]),
            "temperature": 0,
        }
        status, body = request(f"{instance.base}/v1/chat/completions", instance.key, chat, timeout=120)
        try:
            answer = (_json(body) or {})["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            answer = None
        got = answer if isinstance(answer, str) else f"no answer (HTTP {status})"
        result.update(expected=setting["expect"], match=setting["match"], got=got)
        if not passes(setting, answer if isinstance(answer, str) else None):
            raise GateFailed(
                f"golden prompt of instance {instance.name}: expected ({setting['match']})"
                f" {json.dumps(setting['expect'])}, got {json.dumps(got)}"
            )
    return result


def wait_idle(
    instances: Sequence[Instance],
    timeout: float,
    interval: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Wait until no instance has a request running or waiting; seconds it took."""
    began = clock()
    while True:
        busy = {}
        for instance in instances:
            status, body = request(f"{instance.base}/metrics", "", timeout=5)
            count = in_flight(body) if status == 200 else None
            if count:
                busy[instance.name] = int(count)
        if not busy:
            return clock() - began
        if clock() - began > timeout:
            listed = ", ".join(f"{name} ({count})" for name, count in busy.items())
            raise GateFailed(
                f"instances still have requests running or waiting after {timeout:.0f} s"
                f" (vllm_server_drain_timeout; raise it for long generations): {listed}"
            )
        sleep(interval)
