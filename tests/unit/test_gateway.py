"""The gateway's view of the fleet: upstreams, keys, checks, and the drain marks."""

from __future__ import annotations

import re

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
    # The first name in sort order is served at /v1 unless one is named.
    assert coder["default"] and not smol["default"]
    assert [u["default"] for u in gateway.upstreams(backends, "smollm2-135m-instruct")] == [False, True]
    assert all(re.fullmatch(r"vllm_\w+", u["upstream"]) for u in ups)


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
    bad_name = {**SPEC, "served_model_name": "has space"}
    secret = 'se"cret'
    found = gateway.errors([_backend("h1", bad_name, key=secret)], "missing")
    assert len(found) == 3
    assert "served_model_name 'has space'" in found[0]
    assert "vllm_server_api_key" in found[1]
    assert "gateway_default_model 'missing'" in found[2]
    assert not any(secret in line for line in found)
    assert gateway.errors([_backend("h1", SPEC, key="abc.DEF-123_~+/=")]) == []


def test_server_lines_round_trip_through_the_drain_marks() -> None:
    server = {"host": "vllm-1", "address": "10.0.0.1", "port": 8000}
    up = gateway.server_line(server, 2, 10, down=False)
    down = gateway.server_line({**server, "host": "vllm-2"}, 2, 10, down=True)
    assert up == "server 10.0.0.1:8000 max_fails=2 fail_timeout=10s; # vllm-fleet host=vllm-1"
    config = f"upstream x {{\n        {up}\n        {down}\n}}\n# server 1.2.3.4:1 down; no marker\n"
    assert gateway.drained_hosts(config) == ["vllm-2"]


def test_drain_pattern_toggles_only_that_host() -> None:
    lines = [
        "        " + gateway.server_line({"host": h, "address": "10.0.0.1", "port": p}, 2, 10, down=False)
        for h, p in (("vllm-1", 8000), ("vllm-1", 8001), ("vllm-10", 8000))
    ]
    config = "\n".join(lines)
    pattern = re.compile(gateway.drain_pattern("vllm-1"), re.MULTILINE)
    drained = pattern.sub(r"\1 down;\3", config)
    assert gateway.drained_hosts(drained) == ["vllm-1"]
    # Draining twice changes nothing; undraining restores the original text exactly.
    assert pattern.sub(r"\1 down;\3", drained) == drained
    assert pattern.sub(r"\1;\3", drained) == config
