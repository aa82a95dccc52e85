"""The monitoring role's logic: Prometheus scrape targets from the inventory, the queries behind
`vllm-fleet status`, and the metric names a PromQL expression uses (to check the dashboard).

Scrape targets are made here only: every vLLM instance's /metrics with the labels host,
instance, model and revision; node exporter on every host; NVIDIA's DCGM exporter on the GPU
hosts that have it.
"""

from __future__ import annotations

import math
import re
from typing import Any

# Job names; the alert rules and the dashboard select on them.
VLLM_JOB = "vllm"
NODE_JOB = "node"
DCGM_JOB = "dcgm"
PROMETHEUS_JOB = "prometheus"

DURATION_PATTERN = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def _address(host: str, address: str | None, port: int) -> str:
    target = address or host
    # A bare IPv6 address needs brackets before the port.
    if ":" in target and not target.startswith("["):
        target = f"[{target}]"
    return f"{target}:{port}"


def scrape_configs(hosts: list[dict[str, Any]], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Prometheus scrape_configs for the fleet.

    hosts: one dict per inventory host: ``host`` (inventory name), ``address`` (how the
    monitoring host reaches it), ``instances`` (its vLLM instance specs, defaults filled in),
    ``dcgm`` (True when DCGM's exporter runs there).
    settings: ``node_exporter_port``, ``dcgm_exporter_port``, ``prometheus_port``.

    Every target carries the label ``host``; vLLM targets also ``instance`` (the instance name,
    which replaces Prometheus' default address label), ``model`` and ``revision``. Node exporter's
    job honours the labels of its textfile metrics, so that the probe's ``instance`` stays.
    """
    vllm_targets = []
    node_targets = []
    dcgm_targets = []
    for entry in sorted(hosts, key=lambda h: str(h["host"])):
        host = str(entry["host"])
        address = entry.get("address")
        for spec in sorted(entry.get("instances") or [], key=lambda s: str(s["name"])):
            vllm_targets.append(
                {
                    "targets": [_address(host, address, int(spec["port"]))],
                    "labels": {
                        "host": host,
                        "instance": str(spec["name"]),
                        "model": str(spec["model"]),
                        "revision": str(spec["revision"]),
                    },
                }
            )
        node_targets.append(
            {
                "targets": [_address(host, address, int(settings["node_exporter_port"]))],
                "labels": {"host": host, "instance": host},
            }
        )
        if entry.get("dcgm"):
            dcgm_targets.append(
                {
                    "targets": [_address(host, address, int(settings["dcgm_exporter_port"]))],
                    "labels": {"host": host, "instance": host},
                }
            )
    configs: list[dict[str, Any]] = [
        {
            "job_name": PROMETHEUS_JOB,
            "static_configs": [{"targets": [f"localhost:{int(settings['prometheus_port'])}"]}],
        },
        {"job_name": VLLM_JOB, "metrics_path": "/metrics", "static_configs": vllm_targets},
        {"job_name": NODE_JOB, "honor_labels": True, "static_configs": node_targets},
    ]
    if dcgm_targets:
        configs.append({"job_name": DCGM_JOB, "static_configs": dcgm_targets})
    return configs


def settings_errors(settings: dict[str, Any]) -> list[str]:
    """Errors of the role's settings, each naming the setting and what is allowed."""
    errors = []
    for name in (
        "monitoring_scrape_interval",
        "monitoring_evaluation_interval",
        "monitoring_probe_interval",
        "monitoring_retention",
    ):
        value = settings.get(name)
        if not isinstance(value, str) or not DURATION_PATTERN.match(value):
            errors.append(f"{name} is {value!r}: it must be a Prometheus duration such as 15s, 1m or 15d")
    for name in (
        "monitoring_prometheus_port",
        "monitoring_node_exporter_port",
        "monitoring_dcgm_exporter_port",
    ):
        value = settings.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            errors.append(f"{name} is {value!r}: it must be a TCP port (an integer from 1 to 65535)")
    timeout = settings.get("monitoring_probe_timeout")
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1:
        errors.append(f"monitoring_probe_timeout is {timeout!r}: it must be a whole number of seconds >= 1")
    if settings.get("monitoring_dcgm_exporter") not in ("auto", True, False):
        errors.append(
            f"monitoring_dcgm_exporter is {settings.get('monitoring_dcgm_exporter')!r}: "
            "it must be auto, true or false"
        )
    server = settings.get("monitoring_server")
    hosts = settings.get("inventory_hosts") or []
    if not server:
        errors.append(
            "monitoring_server is empty: name the host that runs Prometheus, or put one in group "
            "gateways or monitoring"
        )
    elif server not in hosts:
        errors.append(f"monitoring_server {server!r} is not a host of the inventory")
    return errors


# `vllm-fleet status` from Prometheus: one instant query per figure, each by (host, instance).
STATUS_QUERIES: dict[str, str] = {
    "up": f'max by (host, instance) (up{{job="{VLLM_JOB}"}})',
    "requests_running": "sum by (host, instance) (vllm:num_requests_running)",
    "requests_waiting": "sum by (host, instance) (vllm:num_requests_waiting)",
    "kv_cache_usage": "max by (host, instance) (vllm:kv_cache_usage_perc)",
    "generation_tokens_per_second": "sum by (host, instance) (rate(vllm:generation_tokens_total[5m]))",
    "ttft_p95_seconds": (
        "histogram_quantile(0.95, sum by (host, instance, le) "
        "(rate(vllm:time_to_first_token_seconds_bucket[5m])))"
    ),
    "e2e_latency_p95_seconds": (
        "histogram_quantile(0.95, sum by (host, instance, le) "
        "(rate(vllm:e2e_request_latency_seconds_bucket[5m])))"
    ),
    "probe_success": "max by (host, instance) (vllm_fleet_probe_success)",
    "probe_latency_seconds": "max by (host, instance) (vllm_fleet_probe_latency_seconds)",
    "probe_last_success_timestamp": (
        "max by (host, instance) (vllm_fleet_probe_last_success_timestamp_seconds)"
    ),
}


def status_queries() -> list[dict[str, str]]:
    """The status queries as a list (for a task loop)."""
    return [{"name": name, "query": query} for name, query in STATUS_QUERIES.items()]


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number  # NaN (no requests yet) -> None


def prometheus_figures(results: list[dict[str, Any]], host: str) -> dict[str, dict[str, float | None]]:
    """Figures per instance of one host from the registered replies of the status queries.

    results: one registered ``uri`` result per query, each with ``item.name`` and ``json``
    (Prometheus' HTTP API reply). Returns {instance: {figure: value}}; a figure without a series
    is None.
    """
    figures: dict[str, dict[str, float | None]] = {}
    for result in results:
        name = result["item"]["name"]
        reply = result.get("json") or {}
        if reply.get("status") != "success":
            continue
        for series in reply.get("data", {}).get("result", []):
            labels = series.get("metric", {})
            if labels.get("host") != host or "instance" not in labels:
                continue
            row = figures.setdefault(labels["instance"], dict.fromkeys(STATUS_QUERIES))
            row[name] = _number(series.get("value", [None, None])[1])
    return figures


def merge_status(rows: list[dict[str, Any]], figures: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The host's status rows with a ``prometheus`` entry each (None where Prometheus has none)."""
    return [row | {"prometheus": figures.get(row["instance"])} for row in rows]


# PromQL words that are not metric names (functions, operators, keywords).
_PROMQL_WORDS = frozenset(
    """
    abs absent absent_over_time acos acosh asin asinh atan atanh avg avg_over_time bottomk by ceil
    changes clamp clamp_max clamp_min count count_over_time count_values cos cosh day_of_month
    day_of_week day_of_year days_in_month deg delta deriv exp floor group group_left group_right
    histogram_count histogram_fraction histogram_quantile histogram_sum holt_winters hour idelta
    ignoring increase irate label_join label_replace last_over_time ln log10 log2 max
    max_over_time min min_over_time minute month offset on pi predict_linear present_over_time
    quantile quantile_over_time rad rate resets round scalar sgn sin sinh sort sort_desc sqrt
    stddev stddev_over_time stdvar stdvar_over_time sum sum_over_time tan tanh time timestamp
    topk vector without year and or unless bool inf nan
    """.split()  # noqa: SIM905 (a word list reads better as text)
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_LABEL_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_NAME = re.compile(r"(?<![\w:.$])[a-zA-Z_:][a-zA-Z0-9_:]*(?![\w:]*\s*\()")
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"')


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, labels and keywords left out).

    Enough for the expressions of the dashboard and the rules: selectors by name or by an exact
    ``__name__`` matcher. Grafana variables ($name, ${name}) are not names.
    """
    names = set(_NAME_MATCHER.findall(expr))
    text = _STRING.sub('""', expr)
    text = _LABEL_MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    for word in _NAME.findall(text):
        if word.lower() not in _PROMQL_WORDS and not re.fullmatch(r"[0-9.e+-]+", word):
            names.add(word)
    return names


# Series Prometheus makes itself: no exporter exposes them.
SYNTHETIC_METRICS = frozenset(
    {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped"}
)
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$", re.DOTALL)


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """The PromQL of a Grafana dashboard (panel targets and query variables), made plain PromQL.

    Grafana's variables are replaced: $__rate_interval by 5m, the others by ".*" (they stand in
    regular-expression matchers); ``label_values(selector, label)`` becomes its selector.
    """
    exprs = []
    for panel in dashboard.get("panels", []):
        exprs += [target["expr"] for target in panel.get("targets", []) if target.get("expr")]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if variable.get("type") == "query":
            text = query.get("query") if isinstance(query, dict) else query
            match = _LABEL_VALUES.match(text or "")
            exprs.append(match.group(1) if match else text)
    plain = []
    for expr in exprs:
        expr = re.sub(r"\$\{?__(rate_)?interval\}?", "5m", expr)
        plain.append(re.sub(r"\$\{?\w+\}?", ".*", expr))
    return plain


def exposed_metric_names(text: str) -> set[str]:
    """Metric names in a Prometheus text exposition (a /metrics scrape)."""
    names = set()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names
