"""Benchmark of a rolling upgrade against bare restarts, under client load, on a real fleet.

    molecule create -s fleet && molecule converge -s fleet        # 3 vLLM hosts + a gateway
    .venv/bin/python benchmarks/upgrade.py [--inventory DIR] [--steady 90] [--workers 3]

Runs against the Molecule ``fleet`` scenario's hosts (its inventory is found under Molecule's
ephemeral directory unless --inventory names one), with the load generator of the scenario
(vllm_fleet.loadgen: the official OpenAI client through the gateway, streaming and not) running
the whole time, and measures in one run:

1. steady state: latency p50/p99 over --steady seconds;
2. bare restarts: each vLLM host's instance restarted in turn (systemctl restart, no drain) and
   timed until it serves a completion again; their sum is the baseline;
3. site.yml with the other good revision of the tiny model (a rolling upgrade): the wall time of the
   whole playbook and of its rolling phase (first host drained to last host back), each as a
   ratio to the baseline, the per-host orchestration overhead ((wall - baseline) / hosts), the
   tasks each host ran in the rolling phase, latency p50/p99 and failed requests during it;
4. playbooks/rollback.yml (the fleet ends where it started), the same figures.

Prints the figures; --json FILE writes them too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "molecule"))
sys.path.insert(0, str(ROOT / "molecule" / "fleet" / "tests"))

from fleet_scenario import INSTANCE, UNIT, VLLM_HOSTS, address, golden_load, on_host, revision, target  # noqa: E402

from vllm_fleet.loadgen import LoadReport  # noqa: E402
from vllm_fleet.paths import cache_dir  # noqa: E402

# Where the rolling phase starts (site.yml stages every host first; rollback.yml does not), and
# where it ends (site.yml goes on with the gateway).
ROLLING_PLAYS = ("PLAY [Roll out the changes", "PLAY [Roll back")
AFTER_ROLLING = ("PLAY [Gateway", "PLAY RECAP")
# One line per task and host in the default callback's output (skipped ones included).
TASK_RESULT = re.compile(r"^(?:ok|changed|skipping|fatal|failed|included): \[(?P<host>[^\]]+)\]")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def find_inventory() -> Path:
    """The fleet scenario's inventory directory in Molecule's ephemeral directory (the newest)."""
    found = sorted(
        Path.home().glob(".ansible/tmp/molecule.*.fleet/inventory"), key=lambda p: p.stat().st_mtime
    )
    if not found:
        raise SystemExit("no Molecule inventory of the fleet scenario: run `molecule converge -s fleet`")
    return found[-1]


def serves(host: str, key: str) -> bool:
    """One completion straight from the host's instance (the readiness the gate also ends with)."""
    body = json.dumps(
        {"model": INSTANCE["served_model_name"], "prompt": "Hello", "max_tokens": 1, "temperature": 0}
    ).encode()
    request = urllib.request.Request(
        f"http://{address(host)}:{INSTANCE['port']}/v1/completions",
        data=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return int(reply.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def bare_restart(host: str, key: str) -> float:
    """Seconds from `systemctl restart` to the instance's first completion."""
    start = time.monotonic()
    on_host(host, "systemctl", "restart", UNIT)
    while not serves(host, key):
        time.sleep(0.5)
    return time.monotonic() - start


def playbook(
    inventory: Path, name: str, extra: dict[str, Any] | None, log_dir: Path | None
) -> dict[str, Any]:
    """Run <name>; returns monotonic start, end, the rolling phase's start and end, its tasks per host."""
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory)]
    cmd.append(str(ROOT / name))
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as handle:
        yaml.safe_dump(extra or {}, handle)
    cmd += ["-e", f"@{handle.name}"]
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    env["ANSIBLE_DISPLAY_SKIPPED_HOSTS"] = "1"
    start = time.monotonic()
    rolling = rolled = start
    in_rolling = False
    tasks: dict[str, int] = {}
    lines: list[str] = []
    with subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(ROLLING_PLAYS):
                in_rolling = True
                rolling = time.monotonic() if rolling == start else rolling
            elif line.startswith(AFTER_ROLLING) and in_rolling:
                in_rolling = False
                rolled = time.monotonic()
            elif in_rolling and (match := TASK_RESULT.match(line)):
                tasks[match.group("host")] = tasks.get(match.group("host"), 0) + 1
    end = time.monotonic()
    os.unlink(handle.name)
    if log_dir:
        (log_dir / f"{Path(name).name}.log").write_text("".join(lines))
    if proc.returncode != 0:
        sys.stderr.write("".join(lines[-80:]))
        raise SystemExit(f"{name} failed (rc={proc.returncode})")
    return {"start": start, "end": end, "rolling": rolling, "rolled": rolled, "tasks": tasks}


def figures(report: LoadReport, start: float, end: float) -> dict[str, Any]:
    window = report.window(start, end).summary()
    # Requests that overlapped the run at all, for the failure count.
    overlapping = [r for r in report.results if r.ended >= start and r.started <= end]
    window["failed"] = sum(1 for r in overlapping if not r.ok)
    return window


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--inventory",
        type=Path,
        default=None,
        help="the fleet's inventory directory (default: Molecule's for the fleet scenario)",
    )
    parser.add_argument("--steady", type=float, default=90.0, help="seconds of steady-state load")
    parser.add_argument("--workers", type=int, default=3, help="concurrent clients")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds each client waits between requests")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--log-dir", type=Path, default=None, help="write each playbook's output here")
    args = parser.parse_args(argv)
    inventory = args.inventory or find_inventory()
    # The scenario's ssh_config sits beside its inventory (fleet_scenario.ssh).
    os.environ.setdefault("MOLECULE_EPHEMERAL_DIRECTORY", str(inventory.resolve().parent))
    key = (cache_dir() / "sandbox" / "api-key").read_text().strip()
    first = INSTANCE["revision"]
    if [revision(h) for h in VLLM_HOSTS] != [first] * len(VLLM_HOSTS):
        raise SystemExit(f"the fleet is not on {first} everywhere: converge the fleet scenario again")

    results: dict[str, Any] = {"hosts": len(VLLM_HOSTS), "workers": args.workers, "pause_s": args.pause}
    load = golden_load(key, args.workers, args.pause)
    with load:
        load.wait_for(args.workers, timeout=120)
        log(f"steady state for {args.steady:.0f} s")
        start = time.monotonic()
        time.sleep(args.steady)
        results["steady"] = figures(load.report, start, time.monotonic())

        restarts = {}
        for host in VLLM_HOSTS:
            log(f"bare restart of {host}")
            restarts[host] = round(bare_restart(host, key), 2)
            time.sleep(5)  # let the gateway's passive checks forget the failures
        results["bare_restarts_s"] = restarts
        baseline = sum(restarts.values())
        results["bare_restart_sum_s"] = round(baseline, 2)

        for name, extra in (("site.yml", target("second")), ("playbooks/rollback.yml", None)):
            log(name)
            run = playbook(inventory, name, extra, args.log_dir)
            time.sleep(2)
            wall, rolling = run["end"] - run["start"], run["rolled"] - run["rolling"]
            results[name] = {
                "wall_s": round(wall, 2),
                "rolling_phase_s": round(rolling, 2),
                "wall_ratio": round(wall / baseline, 3),
                "rolling_phase_ratio": round(rolling / baseline, 3),
                "overhead_per_host_s": round((wall - baseline) / len(VLLM_HOSTS), 2),
                "rolling_overhead_per_host_s": round((rolling - baseline) / len(VLLM_HOSTS), 2),
                "rolling_tasks_per_host": run["tasks"],
                **figures(load.report, run["start"], run["end"]),
            }
    results["total_requests"] = load.report.total
    results["total_failed"] = load.report.failed
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
