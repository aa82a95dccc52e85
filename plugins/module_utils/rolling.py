"""Which instances a rollback switches back, from the links the rolling upgrade records."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def rollback_pending(stat_results: list[Mapping[str, Any]]) -> list[str]:
    """Instances whose recorded previous model or environment differs from the current one.

    ``stat_results`` are registered stat results looped over ``[instance, link]`` pairs, link in
    model, env, previous-model, previous-env. An instance without a record is left alone.
    """
    targets: dict[str, dict[str, str | None]] = {}
    for result in stat_results:
        name, link = result["item"]
        stat = result.get("stat") or {}
        targets.setdefault(name, {})[link] = stat.get("lnk_source") if stat.get("islnk") else None
    pending = []
    for name, links in targets.items():
        for kind in ("model", "env"):
            previous = links.get(f"previous-{kind}")
            if previous and previous != links.get(kind):
                pending.append(name)
                break
    return pending
