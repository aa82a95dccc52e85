"""Filters of the gateway role; the logic lives in module_utils/gateway.py."""

from __future__ import annotations

from typing import Any

from ansible_collections.vllm_fleet.serving.plugins.module_utils.gateway import (
    api_keys,
    backends,
    client_access,
    client_errors,
    errors,
    routes,
    upstreams,
)


class FilterModule:
    """vllm_fleet.serving gateway filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "gateway_backends": backends,
            "gateway_upstreams": upstreams,
            "gateway_api_keys": api_keys,
            "gateway_errors": errors,
            "gateway_routes": routes,
            "gateway_client_errors": client_errors,
            "gateway_client_access": client_access,
        }
