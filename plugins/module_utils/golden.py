"""Golden prompts: a request whose answer at temperature 0 is known, asked after every start.

/health, the model list and a 1-token completion show that an instance runs; only an answer
that matches a known one shows that it runs the right weights correctly. Settings come from
``vllm_server_golden_prompts`` (by instance name); the checks here are the one place that says
what a valid setting is and whether an answer passes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ansible_collections.vllm_fleet.serving.plugins.module_utils.status import load_from_metrics

MATCHES = ("substring", "exact")
DEFAULTS: dict[str, Any] = {"match": "substring", "max_tokens": 32}
KEYS = ("prompt", "expect", "match", "max_tokens")


def prompt_errors(golden: Any) -> list[str]:
    """Why ``vllm_server_golden_prompts`` is not usable (empty: it is).

    Names of instances that a host does not run are fine: one group-wide setting covers the
    instances of every host.
    """
    if not isinstance(golden, Mapping):
        return [f"vllm_server_golden_prompts must be a mapping of instance names to settings, not {golden!r}"]
    found = []
    for name, setting in golden.items():
        where = f"vllm_server_golden_prompts[{name!r}]"
        if not isinstance(setting, Mapping):
            found.append(f"{where} must be a mapping with prompt and expect")
            continue
        unknown = sorted(set(setting) - set(KEYS))
        if unknown:
            found.append(f"{where}: unknown keys {', '.join(unknown)}; allowed: {', '.join(KEYS)}")
        for key in ("prompt", "expect"):
            if not isinstance(setting.get(key), str) or not setting.get(key):
                found.append(f"{where}.{key} must be a non-empty string")
        match = setting.get("match", DEFAULTS["match"])
        if match not in MATCHES:
            found.append(f"{where}.match is {match!r}; allowed: {', '.join(MATCHES)}")
        tokens = setting.get("max_tokens", DEFAULTS["max_tokens"])
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            found.append(f"{where}.max_tokens must be a positive integer, not {tokens!r}")
    return found


def with_defaults(setting: Mapping[str, Any]) -> dict[str, Any]:
    """A golden prompt setting with match and max_tokens filled in."""
    return {**DEFAULTS, **setting}


def passes(setting: Mapping[str, Any], answer: str | None) -> bool:
    """Whether ``answer`` is the expected one (surrounding whitespace never counts)."""
    if answer is None:
        return False
    full = with_defaults(setting)
    got, expected = answer.strip(), str(full["expect"]).strip()
    return got == expected if full["match"] == "exact" else expected in got


def in_flight(metrics: str) -> float | None:
    """Requests running plus waiting from vLLM's /metrics; None when neither gauge is there."""
    load = load_from_metrics(metrics)
    if load["running"] is None and load["waiting"] is None:
        return None
    return (load["running"] or 0.0) + (load["waiting"] or 0.0)
