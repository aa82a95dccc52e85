"""How the offline plan grows with the fleet: `vllm-fleet plan --offline` on N hosts.

The example production inventory (inventories/production: a 70B model at TP 8 and two 8B
instances at TP 4 per host) is grown to N hosts, half in each group, and planned offline: pure
computation on the controller, so it should grow far slower than the host count.

    .venv/bin/python benchmarks/plan.py                      # 10, 200, 1000 hosts, 3 rounds
    .venv/bin/python benchmarks/plan.py --sizes 10 200 --rounds 5 --json /tmp/plan.json
    .venv/bin/python benchmarks/plan.py --write /tmp/inv-200 --hosts 200   # an inventory only

Sizes run in turn within each round (10, 200, 1000, 10, 200, ...) so that a drift of the
machine's speed hits every size alike; the ratios are taken round by round and their median
printed. Each run must succeed and return a plan for every host, or the benchmark fails.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_hosts import paired_ratio, summary

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "inventories" / "production"
GROUPS = ("llama70b", "llama8b")


def write_inventory(directory: Path, hosts: int) -> None:
    """The example inventory's group_vars with `hosts` hosts split over its two groups."""
    if directory.exists():
        shutil.rmtree(directory)
    shutil.copytree(EXAMPLE / "group_vars", directory / "group_vars")
    lines = ["vllm_servers:", "  children:"]
    for index, group in enumerate(GROUPS):
        names = [f"gpu-{group}-{n:05d}.example.internal" for n in range(index, hosts, len(GROUPS))]
        lines += [f"    {group}:", "      hosts:"] + [f"        {name}:" for name in names]
    (directory / "hosts.yml").write_text("\n".join(lines) + "\n")


def plan_seconds(inventory: Path, hosts: int) -> float:
    """Wall time of one offline plan; fails unless every host got a plan that passed."""
    started = time.monotonic()
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "vllm-fleet"),
            "plan",
            "-i",
            str(inventory),
            "--offline",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        raise SystemExit(f"plan of {hosts} hosts failed (rc {proc.returncode}):\n{tail}")
    plans = json.loads(proc.stdout)["plans"]
    if len(plans) != hosts or not all(p["ok"] for p in plans.values()):
        raise SystemExit(f"plan of {hosts} hosts returned {len(plans)} plans, or a failed one")
    return seconds


def measure(sizes: list[int], rounds: int) -> dict[int, list[float]]:
    """Each size's plan seconds, round by round (sizes in turn within each round)."""
    with tempfile.TemporaryDirectory(prefix="vllm-fleet-plan-") as tmp:
        inventories = {n: Path(tmp) / f"hosts-{n}" for n in sizes}
        for n, directory in inventories.items():
            write_inventory(directory, n)
        runs: dict[int, list[float]] = {n: [] for n in sizes}
        for round_ in range(1, rounds + 1):
            for n in sizes:
                runs[n].append(plan_seconds(inventories[n], n))
                print(f"round {round_}: {n:>5} hosts {runs[n][-1]:7.1f} s", file=sys.stderr, flush=True)
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 200, 1000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--write", type=Path, help="only write an inventory of --hosts hosts here")
    parser.add_argument("--hosts", type=int, default=10)
    args = parser.parse_args()
    if args.write:
        write_inventory(args.write, args.hosts)
        return 0

    runs = measure(args.sizes, args.rounds)
    smallest = min(args.sizes)
    figures = {
        "seconds": {n: summary(t) for n, t in runs.items()},
        "ratio_to_smallest": {n: paired_ratio(runs[n], runs[smallest]) for n in args.sizes},
    }
    print(f"{'hosts':>6} {'min s':>8} {'median s':>9} {'max s':>8} {'x ' + str(smallest):>8}")
    for n in args.sizes:
        s = figures["seconds"][n]
        ratio = figures["ratio_to_smallest"][n]
        print(f"{n:>6} {s['min']:8.1f} {s['median']:9.1f} {s['max']:8.1f} {ratio:8.2f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
