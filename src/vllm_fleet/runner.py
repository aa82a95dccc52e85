"""Run the collection's playbooks through ansible-runner's Python API, with progress.

The wrapper holds no deployment logic: it picks a playbook, passes the user's options through
and reports what the runner's events say. Each run gets a fresh private data directory under
the cache (old ones are pruned), so nothing of one run leaks into the next.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from vllm_fleet.paths import (
    ansible_collection_paths,
    cache_dir,
    collection_version,
    installed_base,
    project_dir,
)
from vllm_fleet.progress import LiveView, LogView, RunProgress

KEEP_RUNS = 20
# Every play of playbooks/plan.yml is named so: a failure in one is a refusal of the input, and
# no host changed.
PREFLIGHT_PLAY = "Preflight and plan"

# Exit codes of the command line.
EXIT_OK = 0
EXIT_SETUP = 1  # the command could not start: no collection found, an extra not installed
EXIT_FAILED = 2  # a task failed on some host
EXIT_REFUSED = 3  # the preflight refused the input: nothing changed on any host
EXIT_UNREACHABLE = 4  # some host could not be reached
EXIT_INTERRUPTED = 130  # Ctrl-C: the run was cancelled


@dataclass
class RunOptions:
    """What the user passes through to ansible-playbook."""

    inventory: Path
    limit: str | None = None
    extra_vars: list[str] = field(default_factory=list)  # as for -e: k=v, JSON, or @file
    check: bool = False
    diff: bool = False
    verbosity: int = 0
    mitogen: bool = True  # Mitogen's strategy (fewer round trips per task); False: stock linear


@dataclass
class RunResult:
    """How a run ended, and what its events said."""

    status: str
    rc: int
    progress: RunProgress
    artifacts: Path
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        failures = self.progress.failures
        if any(f.play.startswith(PREFLIGHT_PLAY) and not f.unreachable for f in failures):
            return EXIT_REFUSED
        if any(f.unreachable for f in failures):
            return EXIT_UNREACHABLE
        if failures or self.rc != 0 or self.status != "successful":
            return EXIT_FAILED
        return EXIT_OK

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK


def ensure_collection_link(root: Path) -> None:
    """Make a checkout importable as vllm_fleet.serving (collections_path in ansible.cfg).

    An installed collection already is, under its collections path: nothing is written there.
    """
    if installed_base(root) is not None:
        return
    link = root / "collections" / "ansible_collections" / "vllm_fleet" / "serving"
    if link.is_symlink() or link.exists():
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(Path("../../.."))


def mitogen_env() -> dict[str, str]:
    """What makes ansible-playbook run its linear plays with Mitogen's strategy.

    Mitogen keeps one Python interpreter per host and sends each task's module over it, where
    stock Ansible starts a process per task; plays with `serial` stay rolling as before.
    """
    import ansible_mitogen

    return {
        "ANSIBLE_STRATEGY_PLUGINS": str(Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"),
        "ANSIBLE_STRATEGY": "mitogen_linear",
    }


def ansible_env(root: Path, mitogen: bool = True) -> dict[str, str]:
    """Environment of ansible-playbook for the collection at ``root``.

    A checkout's ansible.cfg names its own collections/ and .cache/facts. An installed
    collection is found through the collections path it was installed into, ahead of those
    Ansible is configured with (its dependencies may sit in either), and keeps its fact cache in
    the controller's cache rather than inside the installed collection. ``mitogen``: with
    Mitogen's strategy (mitogen_env).
    """
    env = {
        # ansible-runner starts ansible-playbook from PATH: use the one beside this interpreter.
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        "ANSIBLE_CONFIG": str(root / "ansible.cfg"),
        # The runner drops a task result over 700 kB from its event; the plan of a whole fleet
        # (one run_once task, about 3 kB per host) is read from its event.
        "MAX_EVENT_RES": str(64 * 1024 * 1024),
    }
    base = installed_base(root)
    if base is not None:
        paths = [str(base)]
        paths += [str(p) for p in ansible_collection_paths(scan_sys_path=False) if str(p) not in paths]
        env["ANSIBLE_COLLECTIONS_PATH"] = os.pathsep.join(paths)
        env["ANSIBLE_CACHE_PLUGIN_CONNECTION"] = str(cache_dir() / "facts")
    if mitogen:
        env.update(mitogen_env())
    return env


def version_note(root: Path) -> str | None:
    """A note when an installed collection's version differs from this command line's."""
    from importlib.metadata import PackageNotFoundError, version

    installed = collection_version(root)
    try:
        mine = version("vllm_fleet")
    except PackageNotFoundError:
        return None
    if installed is None or installed == mine:
        return None
    return (
        f"note: vllm-fleet {mine} runs the collection vllm_fleet.serving {installed} at {root}; "
        "install the matching versions of both"
    )


def _new_run_dir(runs: Path) -> Path:
    """A fresh private data dir per run: ansible-runner keeps env/extravars between runs that
    share one, so a setting of an earlier run would leak into the next. Old runs are pruned, but
    never one that another vllm-fleet on this controller is still running (see _run_lock)."""
    runs.mkdir(parents=True, exist_ok=True)
    for old in sorted(p for p in runs.iterdir() if p.is_dir())[:-KEEP_RUNS]:
        if not _in_progress(old):
            shutil.rmtree(old, ignore_errors=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    return Path(tempfile.mkdtemp(prefix=f"{stamp}-", dir=runs))


RUN_LOCK = ".vllm-fleet-running"


@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    """Held for as long as the run in run_dir goes on; the kernel lets go when the process ends,
    however it ends, so a crashed run is pruned like a finished one."""
    with open(run_dir / RUN_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _in_progress(run_dir: Path) -> bool:
    try:
        with open(run_dir / RUN_LOCK) as lock:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except FileNotFoundError:
        return False
    except BlockingIOError:
        return True
    return False


def _cmdline(options: RunOptions) -> list[str]:
    args: list[str] = []
    for value in options.extra_vars:
        args += ["--extra-vars", value]
    if options.check:
        args.append("--check")
    if options.diff:
        args.append("--diff")
    if options.verbosity:
        args.append("-" + "v" * options.verbosity)
    return args


def run_playbook(
    playbook: str,
    options: RunOptions,
    extravars: dict[str, Any] | None = None,
    view: str = "auto",
    out: TextIO = sys.stderr,
) -> RunResult:
    """Run a playbook of the collection (path relative to its root).

    view: "log" (a line per task), "live" (redrawn per host), "none", or "auto" (live on a
    terminal, log otherwise). Ctrl-C cancels the run: ansible-runner stops ansible-playbook.
    """
    import shlex

    import ansible_runner

    root = project_dir()
    ensure_collection_link(root)
    note = version_note(root)
    if note:
        print(note, file=out)
    private_data_dir = _new_run_dir(cache_dir() / "runs")
    progress = RunProgress()
    if view == "auto":
        view = "live" if out.isatty() else "log"
    render: LiveView | LogView | None = None
    if view == "live":
        render = LiveView(out)
    elif view == "log":
        render = LogView(out)

    def on_event(event: dict[str, Any]) -> bool:
        progress.feed(event)
        if render:
            render(progress, event)
        return True

    interrupted = False

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal interrupted
        interrupted = True

    envvars = ansible_env(root, options.mitogen)
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with _run_lock(private_data_dir):
            runner = ansible_runner.run(
                private_data_dir=str(private_data_dir),
                project_dir=str(root),
                playbook=playbook,
                inventory=str(Path(options.inventory).resolve()),
                extravars=extravars or {},
                limit=options.limit,
                cmdline=shlex.join(_cmdline(options)) or None,
                envvars=envvars,
                event_handler=on_event,
                cancel_callback=lambda: interrupted,
                quiet=True,
            )
    finally:
        signal.signal(signal.SIGINT, previous)
    if render:
        render.close(progress)
    return RunResult(
        status=runner.status,
        rc=runner.rc if isinstance(runner.rc, int) else 1,
        progress=progress,
        artifacts=private_data_dir,
        interrupted=interrupted or runner.status == "canceled",
    )
