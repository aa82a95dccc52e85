"""Filters over instance specs; the logic lives in module_utils/vllm_spec.py."""

from __future__ import annotations

from typing import Any

from ansible_collections.vllm_fleet.serving.plugins.module_utils.status import status_rows
from ansible_collections.vllm_fleet.serving.plugins.module_utils.vllm_spec import (
    container_remove_argv,
    container_stop_argv,
    engine_gpu_errors,
    engine_path,
    served_names,
    server_argv,
    server_environment,
    store_needs,
    systemd_quote,
    validate_instances,
    with_defaults,
    with_host_defaults,
)


class FilterModule:
    """vllm_fleet.serving instance-spec filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "vllm_instance": with_defaults,
            "vllm_host_defaults": with_host_defaults,
            "vllm_instances_errors": validate_instances,
            "vllm_served_names": served_names,
            "vllm_server_argv": server_argv,
            "vllm_container_remove_argv": container_remove_argv,
            "vllm_container_stop_argv": container_stop_argv,
            "vllm_engine_path": engine_path,
            "vllm_engine_gpu_errors": engine_gpu_errors,
            "vllm_server_env": server_environment,
            "vllm_store_needs": store_needs,
            "systemd_quote": systemd_quote,
            "vllm_status_rows": status_rows,
        }
