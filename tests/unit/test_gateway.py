"""The gateway's view of the fleet: upstreams, keys, checks, and the drain marks."""

from __future__ import annotations

import re

import pytest
from ansible_collections.vllm_fleet.serving.plugins.module_utils import gateway

SPEC = {"name": "chat", "model": "smollm2-135m-instruct", "revision": "r1", "port": 8000}


def _backend(host: str, *specs: dict, key: str = "", keys: dict | None = None) -> dict:
    hostvars = {
        host: {
            "ansible_host": f"{host}.lan",
            "vllm_server_instances": list(specs),
            "vllm_server_api_key": key,
            "vllm_server_api_keys": keys or {},
        }
    }
    return gateway.backends([host], hostvars)[0]


def test_backends_read_address_instances_and_keys_from_hostvars() -> None:
    hostvars = {
        "a": {"vllm_server_instances": [SPEC], "gateway_backend_address": "10.0.0.1", "ansible_host": "x"},
        "b": {"ansible_host": "b.lan"},
        "c": {},
    }
    found = gateway.backends(["a", "b", "c"], hostvars)
    assert [b["address"] for b in found] == ["10.0.0.1", "b.lan", "c"]
    assert found[0]["instances"][0]["served_model_name"] == "smollm2-135m-instruct"
    assert found[1]["instances"] == [] and found[1]["api_key"] == ""


def test_one_upstream_per_served_name_with_every_host() -> None:
    other = {**SPEC, "name": "code", "served_model_name": "coder", "port": 8001}
    backends = [_backend("h2", SPEC, other, key="k1"), _backend("h1", SPEC, key="k1")]
    ups = gateway.upstreams(backends)
    assert [u["model"] for u in ups] == ["coder", "smollm2-135m-instruct"]
    coder, smol = ups
    assert coder["servers"] == [{"host": "h2", "address": "h2.lan", "port": 8001, "instance": "code"}]
    assert [s["host"] for s in smol["servers"]] == ["h1", "h2"]
    # Several served names and none named: no default (a request must name its model).
    assert not coder["default"] and not smol["default"]
    assert [u["default"] for u in gateway.upstreams(backends, "smollm2-135m-instruct")] == [False, True]
    # One served name: it is the default.
    assert gateway.upstreams([_backend("h1", SPEC)])[0]["default"]
    assert all(re.fullmatch(r"vllm_\w+", u["upstream"]) for u in ups)
    assert [u["prefix"] for u in ups] == ["/coder/", "/smollm2-135m-instruct/"]


def test_each_name_of_a_many_named_instance_is_routed_to_it_and_opened_by_its_key() -> None:
    aliased = {**SPEC, "served_model_name": ["Qwen/Qwen2.5-0.5B", "qwen"]}
    backends = [_backend("h1", aliased, key="k1")]
    ups = gateway.upstreams(backends)
    assert [(u["model"], [s["instance"] for s in u["servers"]]) for u in ups] == [
        ("Qwen/Qwen2.5-0.5B", ["chat"]),
        ("qwen", ["chat"]),
    ]
    assert gateway.api_keys(backends) == {"Qwen/Qwen2.5-0.5B": ["k1"], "qwen": ["k1"]}
    assert gateway.errors(backends, "qwen") == []


def test_routes_table_and_names_that_would_shadow_openai_paths() -> None:
    hub = {**SPEC, "served_model_name": "Qwen/Qwen2.5-7B-Instruct"}
    shadow = {**SPEC, "name": "v1", "served_model_name": "v1/chat", "port": 8001}
    ups = gateway.upstreams([_backend("h", hub, shadow, key="k")], "Qwen/Qwen2.5-7B-Instruct")
    assert [u["prefix"] for u in ups] == ["/Qwen/Qwen2.5-7B-Instruct/", ""]
    assert gateway.routes(ups) == {
        "models": {
            "Qwen/Qwen2.5-7B-Instruct": {"upstream": "vllm_Qwen_Qwen2_5_7B_Instruct", "keyed": True},
            "v1/chat": {"upstream": "vllm_v1_chat", "keyed": True},
        },
        "default": "Qwen/Qwen2.5-7B-Instruct",
    }
    assert gateway.routes(gateway.upstreams([_backend("h", hub, shadow)]))["default"] == ""


def test_upstream_identifiers_stay_distinct() -> None:
    a = {**SPEC, "served_model_name": "org/model-1"}
    b = {**SPEC, "name": "other", "served_model_name": "org_model_1", "port": 8001}
    ups = gateway.upstreams([_backend("h", a, b)])
    assert len({u["upstream"] for u in ups}) == 2


def test_keys_per_model_instance_key_overrides_host_key() -> None:
    other = {**SPEC, "name": "code", "served_model_name": "coder", "port": 8001}
    backends = [
        _backend("h1", SPEC, other, key="hostkey", keys={"code": "codekey"}),
        _backend("h2", SPEC, key="hostkey2"),
        _backend("h3", {**SPEC, "served_model_name": "open", "name": "open"}),
    ]
    assert gateway.api_keys(backends) == {
        "coder": ["codekey"],
        "smollm2-135m-instruct": ["hostkey", "hostkey2"],
    }
    keyed = {u["model"]: u["keyed"] for u in gateway.upstreams(backends)}
    assert keyed == {"coder": True, "open": False, "smollm2-135m-instruct": True}


def test_errors_name_the_setting_and_never_the_key() -> None:
    secret = 'se"cret'
    found = gateway.errors([_backend("h1", SPEC, key=secret)], "missing")
    assert len(found) == 2
    assert "vllm_server_api_key" in found[0]
    assert "gateway_default_model 'missing'" in found[1]
    assert not any(secret in line for line in found)
    assert gateway.errors([_backend("h1", SPEC, key="abc.DEF-123_~+/=")]) == []


def test_upstream_blocks_mark_drained_hosts_down() -> None:
    servers = [
        {"host": h, "address": f"10.0.0.{n}", "port": 8000, "instance": "chat"}
        for n, h in ((1, "vllm-1"), (2, "vllm-2"), (3, "vllm-10"))
    ]
    ups = [{"model": "chat", "upstream": "vllm_chat", "servers": servers, "default": True, "keyed": True}]
    state = gateway.new_state(
        {}, ups, {"max_fails": 2, "fail_timeout": 10, "keepalive": 32}, drain=["vllm-1"]
    )
    text = gateway.upstream_blocks(state)
    assert "    server 10.0.0.1:8000 max_fails=2 fail_timeout=10s down; # vllm-fleet host=vllm-1\n" in text
    assert "    server 10.0.0.3:8000 max_fails=2 fail_timeout=10s; # vllm-fleet host=vllm-10\n" in text
    assert text.count(" down;") == 1
    assert "upstream vllm_chat {" in text and "keepalive 32;" in text and "zone vllm_chat 64k;" in text


def test_a_configure_keeps_drained_hosts_and_undrain_returns_them() -> None:
    settings = {"max_fails": 2, "fail_timeout": 10, "keepalive": 32}
    drained = gateway.new_state({}, [], settings, drain=["vllm-2", "vllm-1"])
    assert drained["drained"] == ["vllm-1", "vllm-2"]
    # A configure (new upstreams, new settings) keeps them; draining twice changes nothing.
    reconfigured = gateway.new_state(drained, [], {**settings, "max_fails": 3})
    assert reconfigured["drained"] == ["vllm-1", "vllm-2"] and reconfigured["max_fails"] == 3
    assert gateway.new_state(reconfigured, drain=["vllm-1"]) == reconfigured
    back = gateway.new_state(reconfigured, undrain=["vllm-1"])
    assert back["drained"] == ["vllm-2"] and back["upstreams"] == []
    # A drain or undrain alone (from a backend host's play) keeps the upstreams.
    assert gateway.new_state({"upstreams": [{"model": "x"}]}, drain=["h"])["upstreams"] == [{"model": "x"}]


def test_adapters_are_routed_to_their_instance_and_the_base_stays_the_default() -> None:
    lora = {"name": "sql", "model": "sql-lora", "revision": "r1"}
    backends = [_backend("h1", {**SPEC, "adapters": [lora]}, key="k1")]
    ups = gateway.upstreams(backends)
    assert [(u["model"], u["default"], u["servers"][0]["instance"]) for u in ups] == [
        ("smollm2-135m-instruct", True, "chat"),
        ("sql", False, "chat"),
    ]
    assert gateway.api_keys(backends) == {"smollm2-135m-instruct": ["k1"], "sql": ["k1"]}
    assert gateway.errors(backends, "sql") == []


CLIENTS = [
    {"name": "chatbot", "keys": ["c-old", "c-new"], "rate": "20r/s", "burst": 40},
    {"name": "sql.team", "keys": ["s-1"], "models": ["coder"]},
]


def test_named_clients_map_keys_to_names_models_and_rates() -> None:
    other = {**SPEC, "name": "code", "served_model_name": "coder", "port": 8001}
    backends = [_backend("h1", SPEC, other, key="internal")]
    ups = gateway.upstreams(backends, clients=True)
    assert gateway.client_errors(CLIENTS, ups, backends) == []
    access = gateway.client_access(CLIENTS, ups)
    assert access["by_key"] == {"c-new": "chatbot", "c-old": "chatbot", "s-1": "sql.team"}
    by_model = {u["model"]: access["allowed"][u["upstream"]] for u in ups}
    assert by_model == {"coder": ["chatbot", "sql.team"], "smollm2-135m-instruct": ["chatbot"]}
    assert access["limits"] == [
        {"client": "chatbot", "zone": "vllm_fleet_rate_chatbot", "rate": "20r/s", "burst": 40}
    ]
    # With named clients every model needs a client key, also those whose instances have none.
    assert all(u["keyed"] for u in gateway.upstreams([_backend("h1", SPEC)], clients=True))


@pytest.mark.parametrize(
    ("clients", "expected"),
    [
        ({"name": "x"}, "gateway_clients must be a list"),
        ([{"name": "x"}], "gateway_clients[0] must be a mapping of name and keys"),
        ([{"name": "x", "keys": ["k"], "quota": 5}], "gateway_clients[0] must be a mapping"),
        ([{"name": "Has Space", "keys": ["k"]}], "gateway_clients[0]: 'name' must match"),
        (
            [{"name": "a", "keys": ["k"]}, {"name": "a", "keys": ["j"]}],
            "'name' 'a' is used by another client",
        ),
        ([{"name": "a", "keys": []}], "'keys' must be a list of one or more keys"),
        ([{"name": "a", "keys": ["has space"]}], "keys[0] must be letters, digits"),
        (
            [{"name": "a", "keys": ["k"]}, {"name": "b", "keys": ["k"]}],
            "(b): keys[0] is also another client's",
        ),
        ([{"name": "a", "keys": ["k-secret-7"]}], "keys[0] is an instance's own key"),
        (
            [{"name": "a", "keys": ["k"], "models": ["nope"]}],
            "'models' names what no instance serves: ['nope']",
        ),
        ([{"name": "a", "keys": ["k"], "rate": "10/s"}], "'rate' must be requests per second or minute"),
        ([{"name": "a", "keys": ["k"], "burst": 5}], "'burst' must be an integer >= 0, with a 'rate'"),
    ],
)
def test_bad_clients_name_the_setting_and_never_the_key(clients: object, expected: str) -> None:
    backends = [_backend("h1", SPEC, key="k-secret-7")]
    found = gateway.client_errors(clients, gateway.upstreams(backends, clients=True), backends)
    assert any(expected in error for error in found), found
    assert not [error for error in found if "k-secret-7" in error]


def test_named_clients_need_one_internal_key_per_model() -> None:
    backends = [_backend("h1", SPEC, key="k-one"), _backend("h2", SPEC, key="k-two")]
    found = gateway.client_errors(
        [{"name": "a", "keys": ["c"]}], gateway.upstreams(backends, clients=True), backends
    )
    assert found == [
        "gateway_clients: the instances of 'smollm2-135m-instruct' have different API keys; the gateway "
        "sends one internal key per model: give them one vllm_server_api_key"
    ]
