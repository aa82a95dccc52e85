"""Every Molecule scenario, run for real: systemd containers, the CPU build of vLLM, real models.

Each scenario's own test sequence (create, check, converge, idempotence, verify, destroy) is
the assertion: `molecule test` exits non-zero when any step fails. Its output is shown on
failure. Needs the Docker engine, the test models (`python -m tests.builders`) and the
wheelhouse (`vllm-fleet build`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from vllm_fleet.paths import cache_dir
from vllm_fleet.runner import mitogen_env

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted(p.parent.name for p in (ROOT / "molecule").glob("*/molecule.yml"))
# Scenarios that need what these machines cannot reach, and the variable that provides it.
NEEDS = {
    "python_env_conda": (
        "VLLM_FLEET_CONDA_INSTALLER",
        "no conda distribution or channel is reachable here: set VLLM_FLEET_CONDA_INSTALLER to a "
        "Miniforge or Miniconda installer file (its Python matching the wheelhouse's) to run it",
    ),
}

# The longest scenario (fleet) takes about 17 minutes on 2 cores: room for a slower machine.
TIMEOUT = 2400
# Scenarios without Molecule's idempotence step (molecule.yml says why), and the test of their
# verify that converges again and asserts changed=0 on every host.
OWN_IDEMPOTENCE = {
    "fleet": "test_a_second_converge_changes_nothing",
    "container": "test_rollback_returns_to_the_first_image_and_the_inventory_then_changes_nothing",
}


@dataclass
class Run:
    """A `molecule test` of one scenario: exit status, output, each step's seconds, the whole."""

    returncode: int
    output: str
    steps: list[tuple[str, float]]
    seconds: float


def scenario_env() -> dict[str, str]:
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        NO_COLOR="1",
        ANSIBLE_NOCOLOR="1",
    )
    # Every play of the scenario (Molecule's and its tests') with Mitogen's strategy, as
    # vllm-fleet runs by default; VLLM_FLEET_MITOGEN=0: stock Ansible's linear strategy.
    if os.environ.get("VLLM_FLEET_MITOGEN") != "0":
        env.update(mitogen_env())
    return env


def run_scenario(scenario: str) -> Run:
    env = scenario_env()
    started = time.monotonic()
    returncode, raw, steps = run_timed(["molecule", "test", "-s", scenario], env, TIMEOUT)
    if returncode == 124:
        # Killed mid-sequence, its hosts still run (three vLLMs in fleet's case) and would starve
        # the scenarios after it: remove them, keep what it printed.
        subprocess.run(
            ["molecule", "destroy", "-s", scenario], cwd=ROOT, env=env, capture_output=True, check=False
        )
        raw += f"\n(timed out after {TIMEOUT} s)\n"
    return Run(returncode, re.sub(r"\x1b\[[0-9;]*m", "", raw), steps, time.monotonic() - started)


def missing(scenario: str) -> str:
    """Why the scenario cannot run here ("" if it can)."""
    variable, reason = NEEDS.get(scenario, ("", ""))
    return reason if variable and not os.environ.get(variable) else ""


@pytest.mark.integration
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario: str) -> None:
    reason = missing(scenario)
    if reason:
        print(f"skipping {scenario}: {reason}")
        pytest.skip(f"{scenario}: {reason}")
    run = run_scenario(scenario)
    step_times = ", ".join(f"{step} {taken:.0f}" for step, taken in run.steps)
    # scripts/test ends with a table of these (the CI budget).
    if os.environ.get("VLLM_FLEET_TIMES"):
        with open(os.environ["VLLM_FLEET_TIMES"], "a") as times:
            status = "passed" if run.returncode == 0 else "FAILED"
            times.write(f"{scenario}\t{run.seconds:.0f}\t{status}\t{step_times}\n")
    # The whole output stays (pytest shows a passed test's output nowhere): the scenarios print
    # the times and request counts they measured.
    log = cache_dir() / "molecule" / f"{scenario}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(run.output)
    print(f"whole output: {log}\n{run.output[-20000:]}")
    print(f"steps (s): {step_times}")
    assert run.returncode == 0, (
        f"molecule test -s {scenario} failed (rc={run.returncode}):\n{failure_excerpt(run.output)}"
    )
    # Every scenario converges a second time with changed=0: in Molecule's idempotence step, or
    # in a test of its own verify, after the changes that test makes (OWN_IDEMPOTENCE).
    own = OWN_IDEMPOTENCE.get(scenario)
    if own:
        # The verify passed (rc 0 above), so every test it ran passed.
        assert f"::{own}" in run.output, f"{scenario}: {own} did not run"
    else:
        assert re.search(rf"{scenario}\W+idempotence\W+Executed: Successful", run.output)


# Molecule's line at each step's start and end: "INFO     [fleet > converge] Executing".
STEP = re.compile(r"\[[\w.-]+ > (\w+)\] (Executing|Executed\b.*)$")


def run_timed(
    command: list[str], env: dict[str, str], timeout: float, clock: Callable[[], float] = time.monotonic
) -> tuple[int, str, list[tuple[str, float]]]:
    """Run a Molecule command: its exit status (124 when killed at `timeout` seconds), its output
    (stderr merged), and each step's seconds from its `Executing` line to its `Executed` line,
    read on `clock` as each line arrives.
    """
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Its own process group: a timeout kills the playbooks Molecule started too, whose open
        # output would otherwise keep the read below waiting.
        start_new_session=True,
    )
    expired = threading.Event()

    def kill() -> None:
        expired.set()
        os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill)
    timer.start()
    lines: list[str] = []
    steps: list[tuple[str, float]] = []
    begun: dict[str, float] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            found = STEP.search(line.rstrip())
            if found and found[2] == "Executing":
                begun[found[1]] = clock()
            elif found and found[1] in begun:
                steps.append((found[1], clock() - begun.pop(found[1])))
    finally:
        timer.cancel()
    returncode = proc.wait()
    return (124 if expired.is_set() else returncode), "".join(lines), steps


def failure_excerpt(output: str, limit: int = 12000) -> str:
    """What failed in a scenario's output, which its tail (the destroy step) no longer shows.

    Every failed Ansible task from its header to its result, and the verifier's failures: each
    failed test's name, its assertion (the ``E`` lines) and where it stopped.
    """
    parts: list[str] = []
    lines = output.splitlines()
    for index, line in enumerate(lines):
        if re.match(r"(fatal|failed): \[", line):
            # From the task's header: ansible-core prints the error's origin above the result.
            above = range(index, max(index - 40, -1), -1)
            task = next((i for i in above if lines[i].startswith("TASK [")), index)
            parts.append("\n".join(lines[task : index + 1]))
        elif re.match(r"_{3,} \S.* _{3,}$", line) or re.match(r"E   |\S+\.py:\d+: \w+$", line):
            parts.append(line)
    return "\n".join(parts)[:limit] or "(no failed task or test found: the output's tail is above)"
