"""The real-host corpus of bad input (tests/fixtures/bad_input_hosts.yml) against this scenario's
running fleet.

Each case is given to `vllm-fleet up` as a user would give it (`-e @file`). It must be refused
by the preflight (exit 3) with messages naming the setting, never repeating a secret the case
holds (`absent`), and no host may change: every host's fingerprint (its vLLM and gateway units
with their InvocationIDs and PIDs, the files that configure them, the instance links, the stores
and environments, the firewall's table) is the same after the corpus as before it, and a
completion through the gateway still works. The cases come in as extra variables, the strongest
precedence Ansible has, so a case that passes a host-level check is not hidden by the scenario's
own settings.

The cases run RUNS_AT_ONCE at a time, as users at several desks would: a refused run changes
nothing that another could see (each has its own runner directory; the hosts hold no lock), and
one at a time they left a core 40 % idle. So the fingerprints are compared once, after the last
case; a change would stay (a restart changes a unit's InvocationID for good).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from openai import OpenAI
from scenario_hosts import address, on_host

SCENARIO = Path(__file__).resolve().parents[1]
CORPUS_FILE = SCENARIO.parents[1] / "tests" / "fixtures" / "bad_input_hosts.yml"
CORPUS: list[dict[str, Any]] = yaml.safe_load(CORPUS_FILE.read_text())["cases"]
# The scenario's valid instances, which a case's `instances` change.
INSTANCES: list[dict[str, Any]] = yaml.safe_load((SCENARIO / "host_vars" / "gateway-vllm-1.yml").read_text())[
    "vllm_server_instances"
]
HOSTS = ("gateway-vllm-1", "gateway-vllm-2", "gateway-gw")
# What a converge could touch on a host, read as root in one SSH round trip: each unit's
# identity of this start (a restart changes its InvocationID even when the PID comes back the
# same), every file's path, size, mode, owner, time and link target under the directories the
# roles write, the contents of the configuration files, and the firewall's table.
FINGERPRINT = r"""
set -e
units=$(systemctl list-units --all --plain --no-legend --type=service 'vllm*' nginx.service | cut -d' ' -f1)
for unit in $units; do
    systemctl show -p Id,InvocationID,MainPID,ActiveState,FragmentPath "$unit"
done
find /etc/systemd/system /etc/vllm-fleet /etc/nginx /var/lib/vllm-fleet /opt/vllm-fleet -maxdepth 4 \
    -printf '%p %s %m %u %T@ %l\n' 2>/dev/null | sort
find /etc/systemd/system /etc/vllm-fleet /etc/nginx -type f -exec sha256sum {} + 2>/dev/null | sort
nft list table inet vllm_fleet 2>/dev/null || true
"""


def mistake(case: dict[str, Any]) -> dict[str, Any]:
    """The case's extra variables: its `vars`, and its `instances` applied to the valid ones."""
    extra = dict(case.get("vars") or {})
    if "instances" in case:
        extra["vllm_server_instances"] = [
            {**spec, **case["instances"].get(spec["name"], {})} for spec in INSTANCES
        ]
    return extra


def fingerprints() -> dict[str, str]:
    return {host: on_host(host, "sh", "-c", FINGERPRINT) for host in HOSTS}


@pytest.fixture(scope="module")
def before() -> dict[str, str]:
    """Every host's fingerprint before the first case."""
    return fingerprints()


@pytest.fixture(scope="module")
def gateway() -> OpenAI:
    clients = yaml.safe_load((SCENARIO / "host_vars" / "gateway-gw.yml").read_text())["gateway_clients"]
    url = f"http://{address('gateway-gw')}/v1"
    return OpenAI(base_url=url, api_key=clients[0]["keys"][-1], timeout=120, max_retries=0)


RUNS_AT_ONCE = 3


@pytest.fixture(scope="module")
def runs(
    before: dict[str, str], wrapper: Callable[..., tuple[int, dict[str, Any]]]
) -> dict[str, tuple[int, dict[str, Any]]]:
    """Each case's `vllm-fleet up -e @file` by its `why` (exit code and JSON document), all of
    them after `before`."""

    def refuse(case: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with tempfile.TemporaryDirectory() as tmp:
            extra = Path(tmp) / "mistake.yml"
            extra.write_text(yaml.safe_dump(mistake(case)))
            return wrapper("up", "-e", f"@{extra}")

    with ThreadPoolExecutor(RUNS_AT_ONCE) as pool:
        return dict(zip([case["why"] for case in CORPUS], pool.map(refuse, CORPUS), strict=True))


def test_the_corpus_is_large_and_its_cases_distinct() -> None:
    assert len(CORPUS) >= 25
    whys = [case["why"] for case in CORPUS]
    assert len(set(whys)) == len(whys)
    assert all(mistake(case) and case["expect"] for case in CORPUS)
    assert all(set(case.get("instances", {})) <= {spec["name"] for spec in INSTANCES} for case in CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=[case["why"] for case in CORPUS])
def test_bad_input_is_refused_by_the_preflight(
    case: dict[str, Any], runs: dict[str, tuple[int, dict[str, Any]]]
) -> None:
    code, doc = runs[case["why"]]
    messages = "\n".join(f"{f['host']}: {f['message']}" for f in doc["failures"])
    assert code == 3, f"exit {code}, not refused by the preflight:\n{messages}"
    for expected in case["expect"]:
        assert expected in messages, messages
    output = json.dumps(doc)
    for secret in case.get("absent", []):
        assert secret not in output, f"{secret!r} is in the run's output"


def test_no_host_changed_and_the_gateway_still_answers(
    runs: dict[str, tuple[int, dict[str, Any]]], before: dict[str, str], gateway: OpenAI
) -> None:
    assert len(runs) == len(CORPUS)
    after = fingerprints()
    for host in HOSTS:
        assert after[host] == before[host], f"{host} changed"
    reply = gateway.completions.create(model="wide", prompt="The capital of France is", max_tokens=4)
    assert reply.choices[0].text
