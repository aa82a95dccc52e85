"""What every scenario's tests share: the repository's playbooks and `vllm-fleet` run against
the scenario's own inventory, as a user would run them.

Molecule's verifier runs pytest from a scenario directory; the repository's pyproject.toml makes
the repository the root, so this file is found for every molecule/<scenario>/tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from vllm_fleet.paths import project_dir

BIN = Path(sys.executable).parent


class Run(NamedTuple):
    """One finished command: exit code, stdout and stderr together (no colour), wall seconds."""

    rc: int
    output: str
    seconds: float


def _inventory_dir() -> Path:
    """Molecule's inventory directory (with the scenario's host_vars and group_vars links)."""
    inventory = os.environ.get("MOLECULE_INVENTORY_FILE")
    assert inventory, "run under Molecule (molecule verify -s SCENARIO): no MOLECULE_INVENTORY_FILE"
    return Path(inventory).parent


def _run(cmd: list[str], timeout: float, stderr: int = subprocess.STDOUT, **env_extra: str) -> Run:
    """Run from the repository with Molecule's environment; stderr joins the output by default.

    Results as JSON: failure messages verbatim, not folded or re-quoted as YAML would.
    """
    env = dict(
        os.environ,
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        NO_COLOR="1",
        ANSIBLE_CALLBACK_RESULT_FORMAT="json",
        **env_extra,
    )
    start = time.monotonic()
    proc = subprocess.run(
        cmd,
        cwd=project_dir(),
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(proc.returncode, re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout), time.monotonic() - start)


PlaybookRunner = Callable[..., Run]

# Ansible's log (ANSIBLE_LOG_PATH): each line's time, and the banner of a task or play.
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")
_BANNER = re.compile(r"\| (TASK|PLAY RECAP|PLAY) \[?(.*?)\]? \*+$")


def slowest_tasks(log: Path, count: int = 3) -> list[tuple[float, str]]:
    """The `count` slowest tasks of a run from its Ansible log, slowest first: each task's seconds
    from its banner to the next (every host and loop item of the task together)."""
    banners: list[tuple[float, str | None]] = []  # a task's start and name; None: a play's
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        stamp, banner = _LOG_TIME.match(line), _BANNER.search(line)
        if stamp and banner:
            started = datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S").timestamp() + int(stamp[2]) / 1000
            banners.append((started, banner[2] if banner[1] == "TASK" else None))
    spans = [(end - start, name) for (start, name), (end, _next) in pairwise(banners) if name]
    return sorted(spans, reverse=True)[:count]


@pytest.fixture
def run_playbook(tmp_path: Path) -> PlaybookRunner:
    """run_playbook(playbook, extra=None, *args, timeout=1200, flat=False) -> Run.

    `playbook` is relative to the repository (site.yml, playbooks/upgrade.yml) or a path;
    `extra` goes in as -e @file; `args` are more ansible-playbook options (--limit, -v, --diff).
    flat: the output's whitespace collapsed (the recap aligns its columns with runs of spaces).
    """

    def run(
        playbook: str | Path,
        extra: dict[str, Any] | None = None,
        *args: str,
        timeout: float = 1200,
        flat: bool = False,
    ) -> Run:
        cmd = [
            str(BIN / "ansible-playbook"),
            "-i",
            str(_inventory_dir()),
            str(project_dir() / playbook),
            *args,
        ]
        if extra is not None:
            path = tmp_path / f"extra-{time.monotonic_ns()}.yml"
            path.write_text(yaml.safe_dump(extra))
            cmd += ["-e", f"@{path}"]
        log = tmp_path / f"ansible-{time.monotonic_ns()}.log"
        done = _run(cmd, timeout, ANSIBLE_LOG_PATH=str(log))
        slowest = ", ".join(f"{name} {seconds:.1f} s" for seconds, name in slowest_tasks(log))
        print(f"\nansible-playbook {playbook} {' '.join(args)}: rc={done.rc} in {done.seconds:.1f} s")
        print(f"  slowest tasks: {slowest}")
        return done._replace(output=" ".join(done.output.split())) if flat else done

    return run


def run_wrapper(*args: str, timeout: float = 900) -> tuple[int, dict[str, Any]]:
    """`vllm-fleet ARGS -i INVENTORY --json` on the scenario's inventory: exit code and document."""
    cmd = [str(BIN / "vllm-fleet"), *args, "-i", str(_inventory_dir()), "--json"]
    done = _run(cmd, timeout, stderr=subprocess.DEVNULL)  # progress goes to stderr, the document to stdout
    try:
        return done.rc, json.loads(done.output)
    except ValueError as err:
        raise AssertionError(f"vllm-fleet {' '.join(args)} printed no JSON: {done.output[-3000:]}") from err


@pytest.fixture(scope="session")
def wrapper() -> Callable[..., tuple[int, dict[str, Any]]]:
    """wrapper(*args) -> (exit code, JSON document) of `vllm-fleet ARGS` on the scenario's inventory."""
    return run_wrapper
