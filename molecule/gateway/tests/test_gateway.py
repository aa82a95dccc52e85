"""One base URL for the whole fleet, for real: the gateway's router (njs inside the distribution's
nginx) sends each request to the servers of the model its JSON body names.

1. /v1/models through the gateway lists every served model, as the instances list themselves;
2. each model answers through http://GATEWAY/v1 exactly as its own instance does (temperature 0),
   non-streaming and streaming, and the answer names it: routing by body, not by path;
3. the path prefix /<served name>/v1 (a name with a slash, a dot, a colon, capitals) reaches that
   model whatever the body says;
4. a model nobody serves gets 404 with an OpenAI-style error naming it and the served ones; a
   request that names no model (two are served, no default) or names it with a non-string, 400;
5. without a valid key every path is 401, also the ones vLLM leaves open (/metrics, /health);
6. an instance with two served names is reachable by both, and /v1/models lists each once; a
   LoRA adapter is listed, routed by its name and answers unlike its base model;
7. the instance ports answer the gateway (and the host itself) only: from a third host and from
   the controller they are refused (vllm_server_firewall), while the gateway answers there.
   The direct clients of these tests reach the instances through SSH tunnels for that reason;
8. named client keys: a key limited to one model gets 403 on the other, both keys of a client
   in rotation work, the instances' own key does not open the gateway, a client over its rate
   gets 429, and the access log names clients and holds no key;
9. a rolling change of the second server of `wide` (gateway-vllm-2: drained at the gateway,
   restarted, gated, back) under the OpenAI client's load on that model: 0 failed requests.
"""

from __future__ import annotations

import contextlib
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from openai import OpenAI
from scenario_hosts import address, on_host, tunnel

from vllm_fleet.loadgen import LoadGenerator
from vllm_fleet.paths import cache_dir

HOST_VARS = Path(__file__).resolve().parents[1] / "host_vars"
SPECS: list[dict[str, Any]] = yaml.safe_load((HOST_VARS / "gateway-vllm-1.yml").read_text())[
    "vllm_server_instances"
]
CLIENTS = {
    c["name"]: c for c in yaml.safe_load((HOST_VARS / "gateway-gw.yml").read_text())["gateway_clients"]
}


def _names(spec: dict[str, Any]) -> list[str]:
    served = spec["served_model_name"]
    return served if isinstance(served, list) else [served]


def _adapters(spec: dict[str, Any]) -> list[str]:
    return [adapter["name"] for adapter in spec.get("adapters", [])]


NAMES = sorted(name for spec in SPECS for name in _names(spec) + _adapters(spec))
# The model an answer names: vLLM reports an instance's first served name for each of its names,
# and an adapter's own.
REPORTED = {
    **{name: _names(spec)[0] for spec in SPECS for name in _names(spec)},
    **{name: name for spec in SPECS for name in _adapters(spec)},
}
VLLM_HOST = "gateway-vllm-1"
# The served name with a slash, dots, a colon and capitals.
HUB_NAME = "Tiny/Llama.v1:seed0"
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def instance_key() -> str:
    """The instances' own key: the gateway holds it, clients never do."""
    return (cache_dir() / "sandbox" / "api-key").read_text().strip()


@pytest.fixture(scope="module")
def api_key() -> str:
    """A client key that opens every model (gateway_clients)."""
    return str(CLIENTS["everything"]["keys"][-1])


@pytest.fixture(scope="module")
def gateway_url() -> str:
    return f"http://{address('gateway-gw')}"


@pytest.fixture(scope="module")
def gateway(gateway_url: str, api_key: str) -> OpenAI:
    return OpenAI(base_url=f"{gateway_url}/v1", api_key=api_key, timeout=120, max_retries=0)


@pytest.fixture(scope="module")
def direct(instance_key: str) -> Iterator[dict[str, OpenAI]]:
    """A client straight to each served name's own instance (its port on the vLLM host, through an
    SSH tunnel: the firewall admits only the gateway and the host itself)."""
    with contextlib.ExitStack() as tunnels:
        clients = {}
        for spec in SPECS:
            local = tunnels.enter_context(tunnel(VLLM_HOST, spec["port"]))
            url = f"http://127.0.0.1:{local}/v1"
            client = OpenAI(base_url=url, api_key=instance_key, timeout=120, max_retries=0)
            clients.update(dict.fromkeys(_names(spec) + _adapters(spec), client))
        yield clients


def _request(url: str, method: str, body: dict[str, Any], key: str = "") -> tuple[int, dict[str, Any]]:
    """A raw request with a JSON body (what the OpenAI client would not send): status, JSON answer."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _complete(client: OpenAI, model: str) -> tuple[str, str]:
    """The answer's text and the model it names (8 tokens at temperature 0)."""
    reply = client.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0)
    return reply.choices[0].text, reply.model


def _stream(client: OpenAI, model: str) -> str:
    chunks = client.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0, stream=True)
    return "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)


def test_models_lists_every_served_model(gateway: OpenAI, direct: dict[str, OpenAI]) -> None:
    listed = {model.id: model for model in gateway.models.list().data}
    assert sorted(listed) == NAMES
    # As each instance lists itself (vLLM's own fields; `created` and the permission's id are
    # made anew for every answer).
    fields = ("id", "object", "owned_by", "root", "parent", "max_model_len")
    for name, client in direct.items():
        own = next(card.model_dump() for card in client.models.list().data if card.id == name)
        assert {f: listed[name].model_dump().get(f) for f in fields} == {f: own.get(f) for f in fields}


@pytest.mark.parametrize("name", NAMES)
def test_each_model_answers_through_one_base_url(
    gateway: OpenAI, direct: dict[str, OpenAI], name: str
) -> None:
    expected = _complete(direct[name], name)[0]
    text, model = _complete(gateway, name)
    assert (text, model) == (expected, REPORTED[name])
    assert _stream(gateway, name) == expected
    print(f"\n{name!r} through the gateway: {text!r}")


def test_the_two_models_answer_differently(direct: dict[str, OpenAI]) -> None:
    # Otherwise the test above could not tell a misrouted request from a routed one.
    answers = {_complete(direct[_names(spec)[0]], _names(spec)[0])[0] for spec in SPECS}
    assert len(answers) == len(SPECS), answers


def test_an_adapter_answers_unlike_its_base_model(gateway: OpenAI) -> None:
    spec = next(spec for spec in SPECS if _adapters(spec))
    base, adapter = _names(spec)[0], _adapters(spec)[0]
    # Its own answer (the test above compares it with the instance's), not the base model's.
    assert _complete(gateway, adapter)[0] != _complete(gateway, base)[0]


def test_every_name_of_an_instance_reaches_it(gateway: OpenAI) -> None:
    aliased = next(_names(spec) for spec in SPECS if len(_names(spec)) > 1)
    assert len({_complete(gateway, name)[0] for name in aliased}) == 1
    # vLLM answers under its first name whichever was asked; /v1/models lists each name once.
    assert [_complete(gateway, name)[1] for name in aliased] == [aliased[0]] * len(aliased)
    listed = [model.id for model in gateway.models.list().data]
    assert sorted(listed) == NAMES


def _connects(address_: str, port: int) -> bool:
    try:
        with socket.create_connection((address_, port), timeout=10):
            return True
    except ConnectionRefusedError:
        return False


def test_instance_ports_answer_only_the_gateway(gateway_url: str) -> None:
    vllm_address = address(VLLM_HOST)
    ports = [spec["port"] for spec in SPECS]
    # From the controller, and from a third host of the fleet's network: refused (TCP reset).
    assert [_connects(vllm_address, port) for port in ports] == [False] * len(ports)
    for port in ports:
        url = f"http://{vllm_address}:{port}/version"
        script = f"curl -s -o /dev/null -w '%{{http_code}}' {url}; echo ' rc='$?"
        assert on_host("gateway-client", "bash", "-c", script).strip() == "000 rc=7", port
    # Meanwhile the gateway answers the third host (401 without a key: nginx's own answer; the
    # tests above get completions through it).
    script = f"curl -s -o /dev/null -w '%{{http_code}}' {gateway_url}/v1/models"
    assert on_host("gateway-client", "bash", "-c", script).strip() == "401"
    # The rules are the collection's own table, on the host itself.
    table = on_host(VLLM_HOST, "nft", "list", "table", "inet", "vllm_fleet")
    assert "reject with tcp reset" in table and all(str(port) in table for port in ports)


def test_path_prefix_reaches_its_model_whatever_the_body_says(
    gateway_url: str, api_key: str, direct: dict[str, OpenAI]
) -> None:
    prefixed = OpenAI(base_url=f"{gateway_url}/{HUB_NAME}/v1", api_key=api_key, timeout=120, max_retries=0)
    assert _complete(prefixed, HUB_NAME) == _complete(direct[HUB_NAME], HUB_NAME)
    # The other model's name in the body: still the prefix's server, which does not serve it.
    with pytest.raises(openai.NotFoundError):
        _complete(prefixed, "wide")


def test_unknown_model_gets_404_naming_it_and_the_served_ones(gateway: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        _complete(gateway, "no-such-model")
    error = raised.value.body
    assert isinstance(error, dict), error
    assert "no-such-model" in error["message"] and all(name in error["message"] for name in NAMES)
    assert error["param"] == "model" and error["code"] == 404


@pytest.mark.parametrize("body", [{"prompt": PROMPT, "max_tokens": 1}, {"model": 5, "prompt": PROMPT}])
def test_a_request_naming_no_model_gets_400(gateway_url: str, api_key: str, body: dict[str, Any]) -> None:
    status, answer = _request(f"{gateway_url}/v1/completions", "POST", body, api_key)
    assert status == 400, answer
    error = answer["error"]
    assert error["param"] == "model" and error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/models"), ("POST", "/v1/completions"), ("GET", "/metrics"), ("GET", "/health"),
     ("GET", f"/{HUB_NAME}/metrics"), ("POST", "/wide/v1/completions")],
)  # fmt: skip
@pytest.mark.parametrize("key", ["", "wrong-key"])
def test_every_path_needs_a_valid_key(gateway_url: str, method: str, path: str, key: str) -> None:
    status, answer = _request(f"{gateway_url}{path}", method, {"model": "wide", "prompt": PROMPT}, key)
    assert status == 401, answer
    assert answer["error"]["code"] == 401


def test_each_client_key_opens_its_models_only(gateway_url: str) -> None:
    limited = OpenAI(
        base_url=f"{gateway_url}/v1", api_key=CLIENTS["wide-only"]["keys"][0], timeout=120, max_retries=0
    )
    assert sorted(model.id for model in limited.models.list().data) == sorted(CLIENTS["wide-only"]["models"])
    assert _complete(limited, "wide")[1] == "wide"
    with pytest.raises(openai.PermissionDeniedError) as raised:
        _complete(limited, HUB_NAME)
    assert raised.value.status_code == 403 and HUB_NAME in str(raised.value.body)


def test_both_keys_of_a_client_in_rotation_work(gateway_url: str) -> None:
    for key in CLIENTS["everything"]["keys"]:
        status, answer = _request(
            f"{gateway_url}/v1/completions", "POST", {"model": "wide", "prompt": PROMPT}, key
        )
        assert status == 200, answer


def test_the_instances_own_key_does_not_open_the_gateway(gateway_url: str, instance_key: str) -> None:
    status, answer = _request(
        f"{gateway_url}/v1/completions", "POST", {"model": "wide", "prompt": PROMPT}, instance_key
    )
    assert status == 401, answer


def test_a_client_over_its_rate_gets_429(gateway_url: str) -> None:
    key = CLIENTS["limited"]["keys"][0]
    replies = [_request(f"{gateway_url}/v1/models", "GET", {}, key) for _attempt in range(3)]
    # 1r/s, no burst: the first passes, the ones right after it are refused, in OpenAI's shape.
    assert replies[0][0] == 200, replies[0]
    refused = [answer for status, answer in replies[1:] if status == 429]
    assert refused and refused[0]["error"]["type"] == "rate_limit_error", replies


def test_the_access_log_names_clients_and_holds_no_key(api_key: str, instance_key: str) -> None:
    log = on_host("gateway-gw", "cat", "/var/log/nginx/access.log")
    assert " everything [" in log and " wide-only [" in log
    secrets = [instance_key] + [key for client in CLIENTS.values() for key in client["keys"]]
    assert not [key for key in secrets if key in log]


def test_a_host_drained_under_load_fails_no_request(
    gateway_url: str, api_key: str, run_playbook: Any
) -> None:
    """The last test: it rolls gateway-vllm-2 (its env names the round), drained while `wide`
    keeps answering from gateway-vllm-1; every request of the load must succeed."""
    before = on_host(
        "gateway-vllm-2", "systemctl", "show", "-p", "InvocationID", "--value", "vllm-wide.service"
    )
    # A fixed rate: back-to-back clients load the cores the restart needs more, the faster they
    # are answered (2.4 requests/s from 2 clients with 0.2 s pauses; the converge took 221 s).
    load = LoadGenerator(f"{gateway_url}/v1", api_key, "wide", workers=2, rate=1.0)
    with load:
        assert load.wait_for(4, timeout=120), load.report.failures[:3]
        done = run_playbook("site.yml", {"gateway_test_round": 1}, timeout=900)
        load.wait_for(load.report.total + 4, timeout=120)
    assert done.rc == 0, done.output[-3000:]
    after = on_host(
        "gateway-vllm-2", "systemctl", "show", "-p", "InvocationID", "--value", "vllm-wide.service"
    )
    assert after.strip() != before.strip(), "gateway-vllm-2's instance did not restart"
    print(f"\nload during the drain: {json.dumps(load.report.summary())}")
    assert load.report.failed == 0, [f.error for f in load.report.failures[:5]]
    assert load.report.total >= 8
