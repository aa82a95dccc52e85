"""Filters of the python_env role; the logic lives in module_utils/python_env.py."""

from __future__ import annotations

from typing import Any

from ansible_collections.vllm_fleet.serving.plugins.module_utils.python_env import (
    check_plan,
    controller_files,
    effective_environments,
    manifest_errors,
    plan_environments,
    prune_plan,
    published_environment,
    read_manifests,
    validate_environments,
)


class FilterModule:
    """vllm_fleet.serving python environment filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "python_env_specs": effective_environments,
            "python_env_errors": validate_environments,
            "python_env_read_manifests": read_manifests,
            "python_env_manifest_errors": manifest_errors,
            "python_env_controller_files": controller_files,
            "python_env_plan": plan_environments,
            "python_env_host_errors": check_plan,
            "python_env_prune": prune_plan,
            "python_env_published": published_environment,
        }
