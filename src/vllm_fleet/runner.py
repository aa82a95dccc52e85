"""Run the collection's playbooks through ansible-runner and report per-host progress."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from vllm_fleet.paths import cache_dir, project_dir

# Runner events that close one task on one host, and the counter each one bumps.
_RESULT_EVENTS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
}


@dataclass
class HostTally:
    """Counts of task results on one host."""

    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0


@dataclass
class RunResult:
    """What a playbook run ended with."""

    status: str
    rc: int
    hosts: dict[str, HostTally] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    # Facts the playbook set, per host (e.g. vllm_server_plan), as the runner events carry them.
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.status == "successful"


class Progress:
    """Turns runner events into one line per task and a tally per host."""

    def __init__(self, out: TextIO = sys.stderr, quiet: bool = False) -> None:
        self.out = out
        self.quiet = quiet
        self.hosts: dict[str, HostTally] = defaultdict(HostTally)
        self.failures: list[str] = []
        self.facts: dict[str, dict[str, Any]] = defaultdict(dict)
        self._started = time.monotonic()

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        if kind == "playbook_on_play_start":
            self._print(f"PLAY {data.get('play', '')}")
        elif kind == "playbook_on_task_start":
            self._print(f"  {data.get('task', '')}")
        elif kind in _RESULT_EVENTS:
            host = data.get("host", "?")
            tally = self.hosts[host]
            counter = _RESULT_EVENTS[kind]
            res = data.get("res", {}) or {}
            if counter == "failed" and data.get("ignore_errors"):
                counter = "ok"
            setattr(tally, counter, getattr(tally, counter) + 1)
            if counter == "ok" and res.get("changed"):
                tally.changed += 1
            if counter == "ok" and isinstance(res.get("ansible_facts"), dict):
                self.facts[host].update(res["ansible_facts"])
            if counter in ("failed", "unreachable"):
                msg = res.get("msg") or res.get("stderr") or "see the runner artifacts"
                line = f"{host}: {data.get('task', '')}: {msg}"
                self.failures.append(line)
                self._print(f"    FAILED {line}")
        return True

    def _print(self, line: str) -> None:
        if self.quiet:
            return
        elapsed = time.monotonic() - self._started
        print(f"[{elapsed:6.1f}s] {line}", file=self.out, flush=True)


def ensure_collection_link(root: Path) -> None:
    """Make the repository importable as vllm_fleet.serving (collections_path in ansible.cfg)."""
    link = root / "collections" / "ansible_collections" / "vllm_fleet" / "serving"
    if link.is_symlink() or link.exists():
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(Path("../../.."))


KEEP_RUNS = 20


def _new_run_dir(runs: Path) -> Path:
    """A fresh private data dir per run: ansible-runner keeps env/extravars between runs that
    share one, so a setting of an earlier run would leak into the next. Old runs are pruned."""
    runs.mkdir(parents=True, exist_ok=True)
    for old in sorted(p for p in runs.iterdir() if p.is_dir())[:-KEEP_RUNS]:
        shutil.rmtree(old, ignore_errors=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    return Path(tempfile.mkdtemp(prefix=f"{stamp}-", dir=runs))


def run_playbook(
    playbook: str,
    inventory: str | Path,
    extravars: dict[str, Any] | None = None,
    limit: str | None = None,
    out: TextIO = sys.stderr,
    quiet: bool = False,
) -> RunResult:
    """Run a playbook of the collection (path relative to its root) with live progress."""
    import ansible_runner

    root = project_dir()
    ensure_collection_link(root)
    private_data_dir = _new_run_dir(cache_dir() / "runs")
    progress = Progress(out, quiet=quiet)
    # ansible-runner starts ansible-playbook from PATH: use the one beside this interpreter.
    bindir = str(Path(sys.executable).parent)
    envvars = {
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        "ANSIBLE_CONFIG": str(root / "ansible.cfg"),
    }
    runner = ansible_runner.run(
        private_data_dir=str(private_data_dir),
        project_dir=str(root),
        playbook=playbook,
        inventory=str(Path(inventory).resolve()),
        extravars=extravars or {},
        limit=limit,
        envvars=envvars,
        event_handler=progress,
        quiet=True,
    )
    return RunResult(
        status=runner.status,
        rc=runner.rc,
        hosts=dict(progress.hosts),
        failures=progress.failures,
        facts=dict(progress.facts),
    )
