"""Per-host progress of a playbook run, built from ansible-runner events, and its views.

The model (`RunProgress`) only counts what the events say: one row per host with its current
task and its counts of ok/changed/failed/unreachable/skipped, one entry per play with the tasks
started and the hosts that finished each task. Views render it: a log of lines for pipes and
CI, a live redrawn block for terminals, nothing for --json.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

# Result events of one task on one host, and the counter each one bumps.
RESULT_EVENTS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
}


@dataclass
class HostRow:
    """One host: its current task and the results of its tasks so far."""

    task: str = ""
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("ok", "changed", "failed", "unreachable", "skipped")}


@dataclass
class PlayRow:
    """One play: how many of its tasks started, and how far the current one got."""

    name: str
    hosts: int = 0
    tasks: int = 0
    done_in_task: int = 0


@dataclass
class Failure:
    """A failed or unreachable task on a host."""

    host: str
    play: str
    task: str
    message: str
    unreachable: bool = False


@dataclass
class RunProgress:
    """Everything the events of one run said, host by host."""

    hosts: dict[str, HostRow] = field(default_factory=dict)
    plays: list[PlayRow] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def feed(self, event: dict[str, Any]) -> None:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        if kind == "playbook_on_play_start":
            self.plays.append(PlayRow(name=data.get("play", "") or data.get("name", "")))
        elif kind == "playbook_on_task_start" and self.plays:
            self.plays[-1].tasks += 1
            self.plays[-1].done_in_task = 0
        elif kind == "runner_on_start":
            self._host(data).task = data.get("task", "")
        elif kind in RESULT_EVENTS:
            self._result(kind, data)

    def _host(self, data: dict[str, Any]) -> HostRow:
        host = data.get("host", "?")
        if host not in self.hosts:
            self.hosts[host] = HostRow()
            if self.plays:
                self.plays[-1].hosts += 1
        return self.hosts[host]

    def _result(self, kind: str, data: dict[str, Any]) -> None:
        row = self._host(data)
        res = data.get("res") or {}
        counter = RESULT_EVENTS[kind]
        if counter == "failed" and data.get("ignore_errors"):
            counter = "ok"
        setattr(row, counter, getattr(row, counter) + 1)
        if counter == "ok" and res.get("changed"):
            row.changed += 1
        if counter == "ok" and isinstance(res.get("ansible_facts"), dict):
            self.facts.setdefault(data.get("host", "?"), {}).update(res["ansible_facts"])
        if counter in ("failed", "unreachable"):
            message = res.get("msg") or res.get("stderr") or res.get("reason") or "see the run's artifacts"
            self.failures.append(
                Failure(
                    host=data.get("host", "?"),
                    play=data.get("play", ""),
                    task=data.get("task", ""),
                    message=str(message),
                    unreachable=counter == "unreachable",
                )
            )
        if self.plays:
            self.plays[-1].done_in_task += 1


class LogView:
    """One line per play, task start and failure: for pipes, files and CI logs."""

    def __init__(self, out: TextIO = sys.stderr) -> None:
        self.out = out
        self.started = time.monotonic()

    def __call__(self, progress: RunProgress, event: dict[str, Any]) -> None:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        if kind == "playbook_on_play_start":
            self._line(f"PLAY {data.get('play', '')}")
        elif kind == "playbook_on_task_start":
            self._line(f"  {data.get('task', '')}")
        elif kind in ("runner_on_failed", "runner_on_unreachable") and progress.failures:
            failure = progress.failures[-1]
            what = "UNREACHABLE" if failure.unreachable else "FAILED"
            self._line(f"    {what} {failure.host}: {failure.message}")

    def close(self, progress: RunProgress) -> None:
        pass

    def _line(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", file=self.out, flush=True)


class LiveView:
    """A block redrawn in place on a terminal: a bar per play, a row per host."""

    BAR = 24

    def __init__(self, out: TextIO = sys.stderr) -> None:
        self.out = out
        self.drawn = 0
        self.last = 0.0

    def __call__(self, progress: RunProgress, event: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self.last < 0.1 and event.get("event") not in (
            "playbook_on_play_start",
            "playbook_on_stats",
        ):
            return  # a redraw per event would flicker on big fleets
        self.last = now
        self._draw(progress)

    def close(self, progress: RunProgress) -> None:
        self._draw(progress)

    def _draw(self, progress: RunProgress) -> None:
        lines = []
        for play in progress.plays:
            share = play.done_in_task / play.hosts if play.hosts else 0.0
            filled = int(share * self.BAR)
            meter = "#" * filled + "." * (self.BAR - filled)
            lines.append(f"{play.name[:40]:<40} [{meter}] task {play.tasks}")
        width = max((len(h) for h in progress.hosts), default=4)
        for host, row in progress.hosts.items():
            counts = f"ok={row.ok} changed={row.changed} failed={row.failed} unreachable={row.unreachable}"
            lines.append(f"  {host:<{width}}  {counts}  {row.task[:60]}")
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}F\x1b[J")
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        self.drawn = len(lines)


def summary_table(progress: RunProgress) -> str:
    """The final per-host table."""
    width = max((len(h) for h in progress.hosts), default=4)
    lines = [
        f"{'host':<{width}}  {'ok':>4}  {'changed':>7}  {'failed':>6}  {'unreachable':>11}  {'skipped':>7}"
    ]
    for host, row in sorted(progress.hosts.items()):
        counts = f"{row.ok:>4}  {row.changed:>7}  {row.failed:>6}  {row.unreachable:>11}  {row.skipped:>7}"
        lines.append(f"{host:<{width}}  {counts}")
    return "\n".join(lines)
