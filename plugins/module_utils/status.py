"""The status of instances, from what the status tasks read on a host (`vllm-fleet status`)."""

from __future__ import annotations

from typing import Any

from ansible_collections.vllm_fleet.serving.plugins.module_utils.vllm_spec import served_names


def load_from_metrics(text: str) -> dict[str, float | None]:
    """Requests running and waiting from vLLM's Prometheus /metrics (summed over its series)."""
    sums: dict[str, float | None] = {"running": None, "waiting": None}
    for line in text.splitlines():
        for key in sums:
            if line.startswith(f"vllm:num_requests_{key}"):
                try:
                    sums[key] = (sums[key] or 0.0) + float(line.rsplit(" ", 1)[1])
                except (IndexError, ValueError):
                    continue
    return sums


def status_rows(
    specs: list[dict[str, Any]],
    units: list[dict[str, Any]],
    links: list[dict[str, Any]],
    metrics: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """One row per instance from the registered results of tasks/status.yml.

    units and metrics hold one result per spec; links two per spec (model, then env).
    """
    rows = []
    for i, spec in enumerate(specs):
        unit = units[i].get("status") or {}
        reply = metrics[i]
        load = load_from_metrics(reply.get("content") or "")
        model, env = (links[2 * i + k].get("stat", {}).get("lnk_target") for k in (0, 1))
        rows.append(
            {
                "instance": spec["name"],
                "served_model_name": ", ".join(served_names(spec)),
                "port": spec.get("port"),
                "unit": unit.get("ActiveState", "unknown"),
                "sub_state": unit.get("SubState", "unknown"),
                "enabled": unit.get("UnitFileState", "unknown"),
                "model": model,
                "environment": env,
                "healthy": reply.get("status") == 200,
                "requests_running": load["running"],
                "requests_waiting": load["waiting"],
            }
        )
    return rows
