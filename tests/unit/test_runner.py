"""The runs directory: each run's private data dir, and pruning that spares runs in progress."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from vllm_fleet.runner import KEEP_RUNS, _new_run_dir, _run_lock


def _old_runs(runs: Path, count: int) -> list[Path]:
    dirs = [runs / f"20000101T0000{i:02d}-old" for i in range(count)]
    for path in dirs:
        path.mkdir(parents=True)
    return dirs


def test_old_runs_beyond_the_kept_number_are_pruned(tmp_path: Path) -> None:
    old = _old_runs(tmp_path, KEEP_RUNS + 3)
    new = _new_run_dir(tmp_path)
    assert [p.exists() for p in old] == [False] * 3 + [True] * KEEP_RUNS
    assert new.is_dir()


def test_a_finished_run_with_its_lock_file_is_pruned(tmp_path: Path) -> None:
    old = _old_runs(tmp_path, KEEP_RUNS + 1)
    with _run_lock(old[0]):
        pass
    _new_run_dir(tmp_path)
    assert not old[0].exists()


def test_a_run_another_process_still_holds_is_never_pruned(tmp_path: Path) -> None:
    """Two vllm-fleet commands on one controller (a status beside an upgrade, or test lanes)."""
    old = _old_runs(tmp_path, KEEP_RUNS + 2)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import sys
                from pathlib import Path
                from vllm_fleet.runner import _run_lock
                with _run_lock(Path({str(old[0])!r})):
                    print("held", flush=True)
                    sys.stdin.read()
            """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        _new_run_dir(tmp_path)
        assert old[0].exists(), "the run in progress was pruned"
        assert not old[1].exists()
    finally:
        holder.communicate("")
    # Its process gone, the run is an old one like the others.
    _new_run_dir(tmp_path)
    assert not old[0].exists()
