"""What the benchmarks share: sandbox hosts of their own, one role run timed per task, figures.

benchmarks/model_sync.py, python_env.py, plan.py and connections.py import it (run them as
scripts: their folder is on sys.path).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def summary(runs: list[float]) -> dict[str, float]:
    """min, median and max of one side's runs."""
    return {"min": min(runs), "median": statistics.median(runs), "max": max(runs)}


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median of the round-by-round ratios a/b (the sides alternate within each round)."""
    return round(statistics.median(x / y for x, y in zip(a, b, strict=True)), 3)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    return Path(os.environ.get("VLLM_FLEET_CACHE", Path.home() / ".cache" / "vllm-fleet"))


def ansible_env(**extra: str) -> dict[str, str]:
    return dict(
        os.environ,
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"),
        ANSIBLE_ROLES_PATH=str(ROOT / "roles"),
        ANSIBLE_NOCOLOR="1",
        # As ansible.cfg and the Molecule scenarios run: one SSH exec per module.
        ANSIBLE_PIPELINING="true",
        **extra,
    )


def ssh_config(network: str) -> Path:
    """The ssh_config playbooks/sandbox.yml writes for the hosts of `network`."""
    return cache_dir() / "ssh" / network / "config"


def write_inventory(path: Path, hosts: list[str], network: str, **group_vars: str) -> None:
    """The hosts in group vllm_servers, reached over SSH as the sandbox's are."""
    all_vars = {
        "sandbox_cache": str(cache_dir()),
        "ansible_user": "deploy",
        "ansible_ssh_common_args": f"-F {ssh_config(network)}",
        **group_vars,
    }
    lines = ["all:", "  vars:"] + [f"    {k}: {json.dumps(v)}" for k, v in all_vars.items()]
    lines += ["vllm_servers:", "  hosts:"] + [f"    {h}:" for h in hosts]
    path.write_text("\n".join(lines) + "\n")


def sandbox(inventory: Path, hosts: list[str], network: str, state: str) -> None:
    """Create (present) or remove (absent) the hosts with playbooks/sandbox.yml."""
    variables = {
        "sandbox_state": state,
        "sandbox_hosts": hosts,
        "sandbox_network": network,
        "sandbox_ssh_dir": str(ssh_config(network).parent),
    }
    subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), str(ROOT / "playbooks" / "sandbox.yml"),
         "-e", json.dumps(variables)],
        cwd=ROOT,
        env=ansible_env(),
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def run_role(role: str, work: Path, inventory: Path, extra: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """The role alone on group vllm_servers: wall seconds and Ansible's json callback result."""
    playbook = work / f"{role}.yml"
    playbook.write_text(
        "- hosts: vllm_servers\n  become: true\n  gather_facts: false\n"
        f"  roles:\n    - role: vllm_fleet.serving.{role}\n"
    )
    extra_file = work / "extra.json"
    extra_file.write_text(json.dumps(extra))
    start = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook), "-e", f"@{extra_file}"],
        cwd=ROOT,
        env=ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.posix.json"),
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    elapsed = time.monotonic() - start
    result: dict[str, Any] = json.loads(proc.stdout)
    if proc.returncode:
        raise RuntimeError(f"the role failed (rc {proc.returncode}): {json.dumps(result['stats'])}")
    return elapsed, result


def _stamp(value: str) -> float:
    whole, _dot, fraction = value.rstrip("Z").partition(".")
    return time.mktime(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float("0." + (fraction or "0")[:6])


def task_seconds(task: dict[str, Any]) -> float:
    """Wall seconds of one task of a json callback result (all hosts together)."""
    duration = task["task"]["duration"]
    return _stamp(duration["end"]) - _stamp(duration["start"])
