"""What the fleet scenario's tests and benchmarks/upgrade.py both need to know of its hosts.

The hosts, the instance every vLLM host serves (host_vars/), how to reach a host (scenario_hosts,
shared by every scenario), which model revision a host runs, the extra vars that make a
revision the fleet's target, and the load generator that asks the instance's golden prompt
through the gateway.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from scenario_hosts import address, on_host

from vllm_fleet.loadgen import LoadGenerator
from vllm_fleet.paths import cache_dir

SCENARIO = Path(__file__).resolve().parents[1]
HOST_VARS = yaml.safe_load((SCENARIO / "host_vars" / "fleet-vllm-1.yml").read_text())
VLLM_HOSTS = ("fleet-vllm-1", "fleet-vllm-2", "fleet-vllm-3")
GATEWAY = "fleet-gateway"
INSTANCE: dict[str, Any] = HOST_VARS["vllm_server_instances"][0]
UNIT = f"vllm-{INSTANCE['name']}.service"
GOLDEN: dict[str, Any] = HOST_VARS["vllm_server_golden_prompts"][INSTANCE["name"]]
__all__ = [
    "GATEWAY",
    "INSTANCE",
    "UNIT",
    "VLLM_HOSTS",
    "address",
    "golden_load",
    "on_host",
    "revision",
    "target",
]


def revision(host: str) -> str:
    """The model revision the host's instance runs (its model link, as vllm_server keeps it)."""
    link = on_host(host, "readlink", f"/var/lib/vllm-fleet/instances/{INSTANCE['name']}/model")
    return Path(link.strip()).name


def target(revision_name: str) -> dict[str, Any]:
    """Extra vars that make `revision_name` the fleet's target (as a user would edit the inventory)."""
    model = INSTANCE["model"]
    return {
        "model_sync_models": [
            {
                "name": model,
                "revision": revision_name,
                "source": str(cache_dir() / "models" / f"{model}-{revision_name}"),
            }
        ],
        "vllm_server_instances": [{**INSTANCE, "revision": revision_name}],
    }


def golden_load(key: str, workers: int, pause: float = 0.0, rate: float | None = None) -> LoadGenerator:
    """Clients asking the golden prompt through the gateway: an answer without its text fails."""
    return LoadGenerator(
        f"http://{address(GATEWAY)}/v1",
        key,
        INSTANCE["served_model_name"],
        workers=workers,
        prompt=GOLDEN["prompt"],
        expect=GOLDEN["expect"],
        max_tokens=GOLDEN["max_tokens"],
        pause=pause,
        rate=rate,
    )
