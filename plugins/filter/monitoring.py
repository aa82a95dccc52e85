"""Filters of the monitoring role and the status playbook; the logic lives in
module_utils/monitoring.py."""

from __future__ import annotations

from typing import Any

from ansible_collections.vllm_fleet.serving.plugins.module_utils.monitoring import (
    merge_status,
    prometheus_figures,
    scrape_configs,
    settings_errors,
    status_queries,
)


class FilterModule:
    """vllm_fleet.serving monitoring filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "monitoring_scrape_configs": scrape_configs,
            "monitoring_settings_errors": settings_errors,
            "monitoring_status_queries": lambda _: status_queries(),
            "monitoring_figures": prometheus_figures,
            "monitoring_merge_status": merge_status,
        }
