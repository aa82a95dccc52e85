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


def running_image(exec_start: str) -> str | None:
    """The image a container instance's unit runs, from systemd's ExecStart property.

    systemd shows it as ``{ path=... ; argv[]=<engine> run ... --entrypoint <program> <image> ... }``.
    """
    words = exec_start.split("argv[]=", 1)[-1].split(" ; ", 1)[0].split()
    if "--entrypoint" in words[:-2]:
        return words[words.index("--entrypoint") + 2]
    return None


def status_rows(
    specs: list[dict[str, Any]],
    units: list[dict[str, Any]],
    links: list[dict[str, Any]],
    metrics: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """One row per instance from the registered results of tasks/status.yml.

    units and metrics hold one result per spec; links two per spec (model, then env). A container
    instance's environment is the image its unit runs.
    """
    rows = []
    for i, spec in enumerate(specs):
        unit = units[i].get("status") or {}
        reply = metrics[i]
        load = load_from_metrics(reply.get("content") or "")
        model, env = (links[2 * i + k].get("stat", {}).get("lnk_target") for k in (0, 1))
        if spec.get("runtime") == "container":
            env = running_image(unit.get("ExecStart", "")) or spec.get("image")
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
