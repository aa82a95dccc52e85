"""Filters of the instance ports' firewall; the logic lives in module_utils/firewall.py."""

from __future__ import annotations

from typing import Any

from ansible_collections.vllm_fleet.serving.plugins.module_utils.firewall import admitted_hosts, sources


class FilterModule:
    """vllm_fleet.serving firewall filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "firewall_admitted_hosts": admitted_hosts,
            "firewall_sources": sources,
        }
