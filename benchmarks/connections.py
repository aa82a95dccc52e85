"""What reaching a host costs per task, and what Mitogen saves on the sandbox's converges.

1. Seconds per task: a play of --tasks trivial tasks (`ansible.builtin.command: "true"`, with
   sudo) to one idle test host of its own, reached three ways: the Docker connection (`docker
   exec`, how the test hosts were reached before), SSH as the test hosts are now (pipelining,
   ControlPersist: stock Ansible as ansible.cfg sets it), and SSH with Mitogen's strategy.
2. The unchanged converge of the sandbox, `vllm-fleet up -i inventories/sandbox`, with Mitogen
   (the default) and with `--no-mitogen`; both must report changed=0. The sandbox must be up
   (`vllm-fleet demo`).
3. With --fresh N: N first converges each way (`vllm-fleet demo --down`, then `vllm-fleet demo`
   with or without `--no-mitogen`: hosts created from nothing, environment, model, gateway). Slow:
   about 2.5 minutes each.
4. The offline plan of 10, 200 and 1000 hosts: benchmarks/plan.py's figures.
5. With --copy-mib N: the roles' rsync copy (`ansible.posix.synchronize`, `use_ssh_args`, as
   python_env and model_sync copy) of N MiB of a real Python environment (this venv as a tar) to
   an idle host, with Ansible's default ssh_args (`-C`: SSH compresses) and with ansible.cfg's
   (the same without `-C`).

The sides alternate within each round, so a drift of the machine's speed hits them alike; ratios
are taken round by round and their median printed.

    .venv/bin/python benchmarks/connections.py                      # 3 rounds, sections 1, 2, 4
    .venv/bin/python benchmarks/connections.py --fresh 1 --json /tmp/connections.json
    .venv/bin/python benchmarks/connections.py --skip-converge --skip-plan --rounds 5
    .venv/bin/python benchmarks/connections.py --skip-per-task --skip-converge --skip-plan --fresh 2
    .venv/bin/python benchmarks/connections.py --skip-per-task --skip-converge --skip-plan --copy-mib 1024
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import plan
from bench_hosts import ROOT, ansible_env, log, paired_ratio, sandbox, summary, write_inventory

from vllm_fleet.runner import mitogen_env

BIN = Path(sys.executable).parent
NETWORK = "vllm-fleet-bench-connections"
HOST = "vllm-conn-bench-1"
SANDBOX = ROOT / "inventories" / "sandbox"
# How the per-task play reaches its host, each side's ansible-playbook options and environment.
DOCKER = ["-e", "ansible_connection=community.docker.docker", "-e", "ansible_user=root"]
# The ssh_args the copy runs with: Ansible's default, and ansible.cfg's (the default without -C).
COPY_SSH_ARGS = {
    "ansible_default": "-C -o ControlMaster=auto -o ControlPersist=60s",
    "ansible_cfg": "-o ControlMaster=auto -o ControlPersist=60s",
}
COPY_PLAY = """\
- hosts: vllm_servers
  become: true
  gather_facts: false
  tasks:
    - name: Copy the file as the roles copy (rsync over the connection's ssh arguments)
      ansible.posix.synchronize:
        src: "{{ source }}"
        dest: /var/tmp/copy-bench
        compress: false
        use_ssh_args: true
        verify_host: true
    - name: Remove the copy
      ansible.builtin.file:
        path: /var/tmp/copy-bench
        state: absent
"""


@contextmanager
def _idle_host(work: Path) -> Iterator[Path]:
    """A test host of the measurement's own, created and removed: its inventory's path."""
    inventory = work / "hosts.yml"
    write_inventory(inventory, [HOST], NETWORK)
    log(f"creating {HOST}")
    sandbox(inventory, [HOST], NETWORK, "present")
    try:
        yield inventory
    finally:
        sandbox(inventory, [HOST], NETWORK, "absent")


def per_task(rounds: int, tasks: int) -> dict[str, Any]:
    """Seconds per task of each way of reaching an idle host (play start-up subtracted)."""
    with tempfile.TemporaryDirectory(prefix="connections-bench-") as tmp:
        work = Path(tmp)
        plays = {}
        for count in (1, tasks + 1):
            body = "".join(
                f'    - name: Task {n}\n      ansible.builtin.command: "true"\n      changed_when: false\n'
                for n in range(count)
            )
            plays[count] = work / f"tasks-{count}.yml"
            header = "- hosts: vllm_servers\n  become: true\n  gather_facts: false\n  tasks:\n"
            plays[count].write_text(header + body)
        sides = {
            "docker": (DOCKER, {}),
            "ssh": ([], {}),
            "ssh_mitogen": ([], mitogen_env()),
        }
        runs: dict[str, list[float]] = {side: [] for side in sides}
        with _idle_host(work) as inventory:
            for round_ in range(1, rounds + 1):
                for side, (options, env) in sides.items():
                    # The difference of a play of tasks+1 and one of 1 task: per-task cost alone,
                    # without interpreter discovery, connection set-up and Ansible's start.
                    one = _playbook_seconds(plays[1], inventory, options, env)
                    many = _playbook_seconds(plays[tasks + 1], inventory, options, env)
                    runs[side].append((many - one) / tasks)
                    log(f"round {round_}: {side:12} {runs[side][-1]:.3f} s per task")
    return {
        "tasks": tasks,
        "seconds_per_task": {side: summary(r) for side, r in runs.items()},
        "ratio_to_ssh": {side: paired_ratio(r, runs["ssh"]) for side, r in runs.items()},
    }


def copy(rounds: int, mib: int) -> dict[str, Any]:
    """Seconds of the roles' rsync copy of `mib` MiB with and without SSH's compression."""
    with tempfile.TemporaryDirectory(prefix="connections-bench-") as tmp:
        work = Path(tmp)
        playbook = work / "copy.yml"
        playbook.write_text(COPY_PLAY)
        source = work / "environment.tar"
        # Real content: Python sources, compiled modules and their data, as an environment holds.
        with source.open("wb") as out:
            tar = subprocess.Popen(["tar", "-cf", "-", "-C", str(BIN.parent), "lib"], stdout=subprocess.PIPE)
            assert tar.stdout is not None
            out.write(tar.stdout.read(mib * 2**20))
            tar.kill()
            tar.wait()
        runs: dict[str, list[float]] = {side: [] for side in COPY_SSH_ARGS}
        with _idle_host(work) as inventory:
            for round_ in range(1, rounds + 1):
                for side, ssh_args in COPY_SSH_ARGS.items():
                    env = {**mitogen_env(), "ANSIBLE_SSH_ARGS": ssh_args}
                    runs[side].append(_playbook_seconds(playbook, inventory, ["-e", f"source={source}"], env))
                    log(f"round {round_}: copy, {side:15} {runs[side][-1]:.1f} s")
    return {
        "mib": mib,
        "seconds": {side: summary(r) for side, r in runs.items()},
        "ratio_to_default": paired_ratio(runs["ansible_cfg"], runs["ansible_default"]),
    }


def _playbook_seconds(playbook: Path, inventory: Path, options: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook), *options],
        cwd=ROOT,
        env=ansible_env(**env),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise SystemExit(f"{playbook.name} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}")
    return time.monotonic() - started


def _wrapper_seconds(*args: str) -> tuple[float, str]:
    """`vllm-fleet ARGS`: wall seconds and its stdout; fails unless it succeeded."""
    started = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "vllm-fleet"), *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    seconds = time.monotonic() - started
    if proc.returncode:
        raise SystemExit(f"vllm-fleet {' '.join(args)} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}")
    return seconds, proc.stdout


def unchanged_converge(flags: list[str]) -> float:
    """`vllm-fleet up` of the converged sandbox; fails unless it changed nothing."""
    seconds, out = _wrapper_seconds("up", "-i", str(SANDBOX), "--json", *flags)
    changed = {host: stats["changed"] for host, stats in json.loads(out)["hosts"].items()}
    if any(changed.values()):
        raise SystemExit(f"the sandbox's converge changed something ({flags}): {changed}")
    return seconds


def first_converge(flags: list[str]) -> float:
    """`vllm-fleet demo` from nothing (the sandbox removed first)."""
    _wrapper_seconds("demo", "--down")
    seconds, out = _wrapper_seconds("demo", *flags)
    if "answer:   The capital of France is Paris." not in out:
        raise SystemExit(f"the demo did not answer as expected ({flags}):\n{out}")
    return seconds


def with_and_without_mitogen(
    rounds: int, title: str, converge: Callable[[list[str]], float]
) -> dict[str, Any]:
    runs: dict[str, list[float]] = {"stock": [], "mitogen": []}
    for round_ in range(1, rounds + 1):
        for side, flags in (("stock", ["--no-mitogen"]), ("mitogen", ["--mitogen"])):
            runs[side].append(converge(flags))
            log(f"round {round_}: {title}, {side:8} {runs[side][-1]:.1f} s")
    return {
        "seconds": {side: summary(r) for side, r in runs.items()},
        "mitogen_to_stock": paired_ratio(runs["mitogen"], runs["stock"]),
    }


def offline_plan(rounds: int) -> dict[str, Any]:
    runs = plan.measure([10, 200, 1000], rounds)
    return {
        "seconds": {n: summary(r) for n, r in runs.items()},
        "ratio_to_10": {n: paired_ratio(r, runs[10]) for n, r in runs.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--fresh", type=int, default=0, metavar="N", help="N first converges each way")
    parser.add_argument("--skip-per-task", action="store_true", help="no seconds per task")
    parser.add_argument("--skip-converge", action="store_true", help="no unchanged converge of the sandbox")
    parser.add_argument("--skip-plan", action="store_true", help="no offline plan")
    parser.add_argument("--copy-mib", type=int, default=0, metavar="N", help="copy N MiB with and without -C")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    figures: dict[str, Any] = {}
    if not args.skip_per_task:
        figures["per_task"] = per_task(args.rounds, args.tasks)
        print(f"\nseconds per task ({args.tasks} trivial tasks with sudo, one idle host; min/median/max):")
        for side, s in figures["per_task"]["seconds_per_task"].items():
            ratio = figures["per_task"]["ratio_to_ssh"][side]
            print(f"  {side:12} {s['min']:.3f} / {s['median']:.3f} / {s['max']:.3f}   x ssh {ratio:.2f}")
    if not args.skip_converge:
        figures["unchanged_converge"] = with_and_without_mitogen(
            args.rounds, "unchanged converge", unchanged_converge
        )
        _print_sides("unchanged converge of the sandbox", figures["unchanged_converge"])
    if args.fresh:
        figures["first_converge"] = with_and_without_mitogen(args.fresh, "first converge", first_converge)
        _print_sides("first converge of the sandbox (vllm-fleet demo)", figures["first_converge"])
    if not args.skip_plan:
        figures["offline_plan"] = offline_plan(args.rounds)
        print("\noffline plan (vllm-fleet plan --offline, production example grown; min/median/max):")
        for n, s in figures["offline_plan"]["seconds"].items():
            ratio = figures["offline_plan"]["ratio_to_10"][n]
            print(f"  {n:>5} hosts {s['min']:.1f} / {s['median']:.1f} / {s['max']:.1f} s   x 10: {ratio:.2f}")
    if args.copy_mib:
        figures["copy"] = copy(args.rounds, args.copy_mib)
        print(f"\nrsync copy of {args.copy_mib} MiB of a Python environment (min/median/max):")
        for side, s in figures["copy"]["seconds"].items():
            print(f"  {side:15} {s['min']:.1f} / {s['median']:.1f} / {s['max']:.1f} s")
        print(f"  ansible.cfg / Ansible's default, paired: {figures['copy']['ratio_to_default']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


def _print_sides(title: str, figures: dict[str, Any]) -> None:
    print(f"\n{title} (min/median/max):")
    for side, s in figures["seconds"].items():
        print(f"  {side:8} {s['min']:.1f} / {s['median']:.1f} / {s['max']:.1f} s")
    print(f"  mitogen / stock, paired: {figures['mitogen_to_stock']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
