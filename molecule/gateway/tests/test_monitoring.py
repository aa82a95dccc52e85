"""Monitoring in the gateway scenario: a real Prometheus on the gateway host (the role's default
server) scrapes the real vLLM instances of both vLLM hosts through their firewall.

Runs against the gateway host and reaches gateway-vllm-1 (two instances of two models) through
the same inventory; gateway-vllm-2 serves an instance of the same name (`wide`), so every query
names its host. The tests run in file order (each takes `host`, so that pytest keeps that
order), after the gateway's own (this file sorts last); the last one stops an instance.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import testinfra
import yaml

from vllm_fleet.paths import project_dir

sys.path.insert(0, str(project_dir() / "collections"))
from ansible_collections.vllm_fleet.serving.plugins.module_utils import monitoring as mon
from ansible_collections.vllm_fleet.serving.plugins.module_utils.vllm_spec import served_names

testinfra_hosts = ["gateway-gw"]

VLLM_HOST = "gateway-vllm-1"
HOST_VARS = Path(__file__).resolve().parents[1] / "host_vars" / f"{VLLM_HOST}.yml"
SPECS = yaml.safe_load(HOST_VARS.read_text())["vllm_server_instances"]
DASHBOARD = project_dir() / "roles" / "monitoring" / "files" / "vllm-fleet-dashboard.json"
# Scrapes, rule evaluations and probes every 10 s (host_vars/): generous bounds for a loaded
# two-core machine.
WAIT = 120
STOPPED = "tiny"
LIVE = "wide"
# The series of VLLM_HOST's instances (the other vLLM host has one of the same name).
ON_HOST = f'host="{VLLM_HOST}"'


@pytest.fixture(scope="module")
def vllm_host() -> Any:
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    # As root through sudo, as the verifier's own `host` (the SSH user is deploy).
    return testinfra.get_host(f"ansible://{VLLM_HOST}?ansible_inventory={inventory}&sudo=true")


@pytest.fixture(scope="module")
def prometheus(host) -> str:
    address = host.interface("eth0").addresses[0]
    return f"http://{address}:9090"


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    reply = requests.post(f"{prometheus}/api/v1/query", data={"query": expr}, timeout=10)
    reply.raise_for_status()
    result: list[dict[str, Any]] = reply.json()["data"]["result"]
    return result


def _wait_for(what: str, check: Callable[[], Any]) -> Any:
    started = time.monotonic()
    last: Any = None
    while time.monotonic() - started < WAIT:
        last = check()
        if last:
            print(f"{what}: after {time.monotonic() - started:.1f} s")
            return last
        time.sleep(2)
    raise AssertionError(f"{what}: not within {WAIT} s; last seen: {last!r}")


def _by_instance(series: list[dict[str, Any]]) -> dict[str, float]:
    return {s["metric"]["instance"]: float(s["value"][1]) for s in series}


def test_promtool_accepts_the_installed_rules_and_config(host):
    rules = host.run("promtool check rules /etc/prometheus/rules/vllm-fleet.rules.yml")
    assert rules.rc == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 12 rules found" in rules.stdout
    config = host.run("promtool check config /etc/prometheus/prometheus.yml")
    assert config.rc == 0, config.stdout + config.stderr


def test_prometheus_has_vllm_series_of_every_instance(prometheus):
    expected = {
        spec["name"]: {
            "host": VLLM_HOST,
            "instance": spec["name"],
            "model": spec["model"],
            "revision": spec["revision"],
        }
        for spec in SPECS
    }

    def labelled() -> dict[str, dict[str, str]]:
        series = _query(
            prometheus,
            f'count by (host, instance, model, revision, model_name) ({{__name__=~"vllm:.+", {ON_HOST}}})',
        )
        return {s["metric"]["instance"]: s["metric"] for s in series if float(s["value"][1]) > 10}

    found = _wait_for("vllm: series of every instance", lambda: len(labelled()) == len(SPECS) and labelled())
    for spec in SPECS:
        name = spec["name"]
        assert {k: found[name][k] for k in expected[name]} == expected[name]
        # vLLM's own label: the primary served name.
        assert found[name]["model_name"] == served_names(spec)[0]
    up = _by_instance(_query(prometheus, f'up{{job="vllm", {ON_HOST}}}'))
    assert up == {spec["name"]: 1.0 for spec in SPECS}


def test_probe_metrics_appear(prometheus):
    names = {spec["name"] for spec in SPECS}

    def succeeded() -> dict[str, float]:
        values = _by_instance(_query(prometheus, f"vllm_fleet_probe_success{{{ON_HOST}}}"))
        return values if values == dict.fromkeys(names, 1.0) else {}

    _wait_for("a successful probe of every instance", succeeded)
    latency = _by_instance(_query(prometheus, f"vllm_fleet_probe_latency_seconds{{{ON_HOST}}}"))
    assert set(latency) == names and all(0 < v < 10 for v in latency.values()), latency
    last = _by_instance(
        _query(prometheus, f"time() - vllm_fleet_probe_last_success_timestamp_seconds{{{ON_HOST}}}")
    )
    print(f"probe latency: {latency}; seconds since the last success: {last}")
    assert set(last) == names and all(v < 60 for v in last.values()), last


def test_dashboard_metrics_exist_in_live_scrapes(host, vllm_host):
    """Every metric the Grafana dashboard uses is exposed by the live vLLM or node exporter."""
    exposed: set[str] = set()
    for spec in SPECS:
        scrape = vllm_host.run(f"curl -sf http://127.0.0.1:{spec['port']}/metrics")
        assert scrape.rc == 0, scrape.stderr
        exposed |= mon.exposed_metric_names(scrape.stdout)
    node = vllm_host.run("curl -sf http://127.0.0.1:9100/metrics")
    assert node.rc == 0, node.stderr
    exposed |= mon.exposed_metric_names(node.stdout)
    used: set[str] = set()
    for query in mon.dashboard_queries(json.loads(DASHBOARD.read_text())):
        used |= mon.promql_metric_names(query)
    used -= mon.SYNTHETIC_METRICS
    print(f"dashboard metrics: {len(used)}, all found among {len(exposed)} exposed")
    assert used and used - exposed == set()


def test_status_shows_prometheus_figures(host, wrapper):
    code, doc = wrapper("status")
    assert code == 0, doc["failures"]
    rows = {row["instance"]: row for row in doc["instances"][VLLM_HOST]}
    assert set(rows) == {spec["name"] for spec in SPECS}
    for row in rows.values():
        figures = row["prometheus"]
        assert figures is not None, row
        assert figures["up"] == 1 and figures["probe_success"] == 1, figures
        assert figures["requests_waiting"] == 0, figures
        assert figures["probe_latency_seconds"] > 0, figures


def test_stopped_instance_goes_down_and_alerts(host, vllm_host, prometheus):
    stop = vllm_host.run(f"systemctl stop vllm-{STOPPED}.service")
    assert stop.rc == 0, stop.stderr
    try:

        def down() -> bool:
            up = _by_instance(_query(prometheus, f'up{{job="vllm", {ON_HOST}}}'))
            probe = _by_instance(_query(prometheus, f"vllm_fleet_probe_success{{{ON_HOST}}}"))
            return up == {STOPPED: 0.0, LIVE: 1.0} and probe == {STOPPED: 0.0, LIVE: 1.0}

        _wait_for(f"up and probe of {STOPPED} at 0, {LIVE} still 1", down)

        def instance_down() -> list[dict[str, Any]]:
            alerts = requests.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
            return [a for a in alerts if a["labels"]["alertname"] == "VLLMInstanceDown"]

        [alert] = _wait_for("VLLMInstanceDown pending", instance_down)
        assert alert["state"] == "pending", alert
        model = next(s["model"] for s in SPECS if s["name"] == STOPPED)
        assert (alert["labels"]["host"], alert["labels"]["instance"], alert["labels"]["model"]) == (
            VLLM_HOST,
            STOPPED,
            model,
        )
    finally:
        vllm_host.run(f"systemctl start --no-block vllm-{STOPPED}.service")
