"""Filters of the python_env role; the logic lives in module_utils/python_env.py."""

from __future__ import annotations

from typing import Any

from ansible_collections.vllm_fleet.serving.plugins.module_utils.python_env import (
    check_against_manifest,
    check_plan,
    effective_environments,
    plan_environments,
    prune_plan,
    published_environment,
    validate_environments,
)


def _manifest_errors(specs: list[dict[str, Any]], manifests: dict[str, Any]) -> list[str]:
    return [
        e
        for s in specs
        if s["wheelhouse"] in manifests
        for e in check_against_manifest(s, manifests[s["wheelhouse"]])
    ]


class FilterModule:
    """vllm_fleet.serving python environment filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "python_env_specs": effective_environments,
            "python_env_errors": validate_environments,
            "python_env_manifest_errors": _manifest_errors,
            "python_env_plan": plan_environments,
            "python_env_host_errors": check_plan,
            "python_env_prune": prune_plan,
            "python_env_published": published_environment,
        }
