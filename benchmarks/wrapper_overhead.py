"""Wall time of `vllm-fleet` against bare `ansible-playbook` on the same playbook and hosts.

    .venv/bin/vllm-fleet demo                       # a converged sandbox fleet
    .venv/bin/python benchmarks/wrapper_overhead.py [--rounds 5] [--inventory inventories/sandbox]

Runs playbooks/status.yml both ways, alternating so that both see the same machine load, and
prints each run, the medians and their ratio (target: wrapper / bare <= 1.05).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def timed(argv: list[str]) -> float:
    env = dict(
        os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")
    )
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--inventory", default="inventories/sandbox")
    args = parser.parse_args()
    bare_cmd = [str(BIN / "ansible-playbook"), "playbooks/status.yml", "-i", args.inventory]
    wrapper_cmd = [str(BIN / "vllm-fleet"), "status", "-i", args.inventory, "--json"]
    timed(bare_cmd)  # warm caches (Python imports, fact cache) before measuring
    bare, wrapped = [], []
    for round_ in range(1, args.rounds + 1):
        bare.append(timed(bare_cmd))
        wrapped.append(timed(wrapper_cmd))
        print(f"round {round_}: ansible-playbook {bare[-1]:.2f} s, vllm-fleet {wrapped[-1]:.2f} s")
    b, w = statistics.median(bare), statistics.median(wrapped)
    print(f"median: ansible-playbook {b:.2f} s, vllm-fleet {w:.2f} s, ratio {w / b:.3f} (target <= 1.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
