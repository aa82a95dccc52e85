"""Filters of rolling upgrades: golden-prompt gate, drain wait, rollback targets.

The logic lives in module_utils/golden.py and module_utils/rolling.py.
"""

from __future__ import annotations

from typing import Any

from ansible_collections.vllm_fleet.serving.plugins.module_utils.golden import (
    in_flight,
    verdicts,
)
from ansible_collections.vllm_fleet.serving.plugins.module_utils.rolling import rollback_pending


class FilterModule:
    """vllm_fleet.serving rolling-upgrade filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "vllm_golden_verdicts": verdicts,
            "vllm_in_flight": in_flight,
            "rollback_pending": rollback_pending,
        }
