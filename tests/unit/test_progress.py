"""The progress model and its views, fed with real recorded ansible-runner events."""

from __future__ import annotations

import io
import json
from pathlib import Path

from vllm_fleet.progress import LiveView, LogView, RunProgress, summary_table
from vllm_fleet.runner import EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, RunResult

EVENTS = Path(__file__).resolve().parents[1] / "fixtures" / "runner-events"
HOST = "vllm-sandbox-1"


def replay(name: str) -> RunProgress:
    progress = RunProgress()
    for event in json.loads((EVENTS / f"{name}.json").read_text()):
        progress.feed(event)
    return progress


def test_status_run_counts_and_facts():
    progress = replay("status-ok")
    row = progress.hosts[HOST]
    assert (row.ok, row.changed, row.failed, row.unreachable) == (4, 0, 0, 0)
    assert [p.name for p in progress.plays] == ["Status of the vLLM instances"]
    assert progress.plays[0].tasks == 4
    status = progress.facts[HOST]["vllm_server_status"]
    assert status[0]["instance"] == "smollm2" and status[0]["healthy"] is True
    result = RunResult(status="successful", rc=0, progress=progress, artifacts=Path("x"))
    assert result.exit_code == EXIT_OK


def test_refused_plan_is_a_refusal_with_its_reasons():
    progress = replay("plan-refused")
    assert progress.hosts[HOST].failed == 1
    [failure] = progress.failures
    assert failure.play == "Preflight and plan"
    assert "port 22 is in use on the host by ssh.service" in failure.message
    plan = progress.facts[HOST]["vllm_server_plans"][HOST]
    assert not plan["ok"]
    result = RunResult(status="failed", rc=2, progress=progress, artifacts=Path("x"))
    assert result.exit_code == EXIT_REFUSED


def test_unreachable_host_has_its_own_exit_code():
    progress = RunProgress()
    progress.feed({"event": "playbook_on_play_start", "event_data": {"play": "Serve vLLM instances"}})
    progress.feed(
        {
            "event": "runner_on_unreachable",
            "event_data": {"host": "gpu-1", "play": "Serve vLLM instances", "task": "Gathering Facts",
                           "res": {"msg": "Failed to connect to the host via ssh", "unreachable": True}},
        }
    )  # fmt: skip
    assert progress.hosts["gpu-1"].unreachable == 1
    result = RunResult(status="failed", rc=4, progress=progress, artifacts=Path("x"))
    assert result.exit_code == EXIT_UNREACHABLE


def test_ignored_errors_count_as_ok():
    progress = RunProgress()
    progress.feed(
        {"event": "runner_on_failed", "event_data": {"host": "h", "ignore_errors": True, "res": {}}}
    )
    assert progress.hosts["h"].ok == 1 and not progress.failures


def test_log_view_prints_plays_tasks_and_failures():
    out = io.StringIO()
    view, progress = LogView(out), RunProgress()
    for event in json.loads((EVENTS / "plan-refused.json").read_text()):
        progress.feed(event)
        view(progress, event)
    text = out.getvalue()
    assert "PLAY Preflight and plan" in text
    assert "Plan the instances" in text
    assert f"FAILED {HOST}: " in text and "ssh.service" in text


def test_live_view_redraws_one_block():
    out = io.StringIO()
    view, progress = LiveView(out), RunProgress()
    for event in json.loads((EVENTS / "status-ok.json").read_text()):
        progress.feed(event)
        view(progress, event)
    view.close(progress)
    last = out.getvalue().rsplit("\x1b[J", 1)[-1]
    assert "Status of the vLLM instances" in last and "task 4" in last
    assert f"{HOST}  ok=4 changed=0 failed=0 unreachable=0" in last


def test_summary_table_has_a_row_per_host():
    table = summary_table(replay("status-ok")).splitlines()
    assert table[0].split() == ["host", "ok", "changed", "failed", "unreachable", "skipped"]
    assert table[1].split() == [HOST, "4", "0", "0", "0", "0"]
