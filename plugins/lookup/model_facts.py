"""Lookup: what the preflight planner needs to know of models held on the controller."""

from __future__ import annotations

DOCUMENTATION = r"""
name: model_facts
author: vllm-fleet maintainers
short_description: Read a model directory's config.json and weight size on the controller
description:
  - For each model (a mapping with C(name), C(revision) and C(source), as in C(model_sync_models)),
    returns C(key) (C(name@revision)) and C(facts) with C(config) (the parsed config.json, or
    null when the directory has none) and C(weights_bytes) (the size of its weight files).
  - The preflight planner checks instance specs against these before any host changes.
options:
  _terms:
    description: Model mappings with C(name), C(revision) and C(source).
    required: true
    type: list
    elements: dict
"""

EXAMPLES = r"""
- name: Plan with the models' own configs
  ansible.builtin.debug:
    msg: "{{ query('vllm_fleet.serving.model_facts', *model_sync_models) | items2dict(value_name='facts') }}"
"""

RETURN = r"""
_list:
  description: "One mapping per model: C(key) and C(facts) (C(config), C(weights_bytes))."
  type: list
  elements: dict
"""

import json  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from ansible.errors import AnsibleLookupError  # noqa: E402
from ansible.plugins.lookup import LookupBase  # noqa: E402

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def model_facts(source: str) -> dict[str, Any]:
    """config.json (None when absent or unreadable) and the total size of the weight files."""
    root = Path(source)
    try:
        config = json.loads((root / "config.json").read_text())
    except (OSError, ValueError):
        config = None
    weights = sum(p.stat().st_size for p in root.glob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    return {"config": config, "weights_bytes": weights}


class LookupModule(LookupBase):
    """vllm_fleet.serving.model_facts"""

    def run(self, terms: list[Any], variables: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
        out = []
        for model in terms:
            if not isinstance(model, dict) or not {"name", "revision", "source"} <= set(model):
                raise AnsibleLookupError(
                    f"model_facts needs mappings with name, revision, source; got {model!r}"
                )
            key = f"{model['name']}@{model['revision']}"
            out.append({"key": key, "facts": model_facts(str(model["source"]))})
        return out
