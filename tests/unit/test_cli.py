"""The command line maps each command onto one playbook and its variables, and nothing more.

The playbook runs themselves are exercised for real by the Molecule scenarios (default: up,
status, a refused plan; fleet: upgrade and rollback); here run_playbook is replaced by a
recorder so each command's wiring is checked without hosts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vllm_fleet import cli
from vllm_fleet.progress import RunProgress
from vllm_fleet.runner import EXIT_OK, RunOptions, RunResult


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def fake_run(
        playbook: str, options: RunOptions, extravars: dict[str, Any] | None, view: str
    ) -> RunResult:
        calls.append({"playbook": playbook, "options": options, "extravars": extravars, "view": view})
        return RunResult(status="successful", rc=0, progress=RunProgress(), artifacts=tmp_path)

    monkeypatch.setattr(cli, "run_playbook", fake_run)
    return calls


@pytest.mark.parametrize(
    ("argv", "playbook", "extravars"),
    [
        (["up"], "site.yml", None),
        (["upgrade"], "playbooks/upgrade.yml", {"upgrade_serial": 1}),
        (["upgrade", "--serial", "2"], "playbooks/upgrade.yml", {"upgrade_serial": 2}),
        (["up", "--serial", "25%"], "site.yml", {"upgrade_serial": "25%"}),
        (["rollback"], "playbooks/rollback.yml", {"upgrade_serial": 1}),
        (["status"], "playbooks/status.yml", None),
        (["plan", "--offline"], "playbooks/plan.yml", {"vllm_server_plan_offline": True}),
    ],
)
def test_each_command_runs_its_playbook(
    recorded: list[dict[str, Any]], argv: list[str], playbook: str, extravars: dict[str, Any] | None
) -> None:
    assert cli.main([*argv, "-i", "inventories/production", "--limit", "gpu-01", "-e", "x=1"]) == EXIT_OK
    (call,) = recorded
    assert call["playbook"] == playbook
    assert call["extravars"] == extravars
    assert call["options"].inventory == Path("inventories/production")
    assert call["options"].limit == "gpu-01"
    assert call["options"].extra_vars == ["x=1"]


def test_json_mode_prints_one_document_and_no_progress(
    recorded: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["upgrade", "-i", "inv", "--serial", "3", "--json"]) == EXIT_OK
    assert recorded[0]["view"] == "none"
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is True
    assert document["serial"] == 3


def test_every_command_needs_an_inventory(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("up", "plan", "upgrade", "rollback", "status"):
        with pytest.raises(SystemExit) as exited:
            cli.main([command])
        assert exited.value.code == 2
        assert "--inventory" in capsys.readouterr().err


def test_mitogen_is_the_default_and_can_be_turned_off(recorded: list[dict[str, Any]]) -> None:
    assert cli.main(["up", "-i", "inv"]) == EXIT_OK
    assert cli.main(["up", "-i", "inv", "--no-mitogen"]) == EXIT_OK
    assert cli.main(["plan", "-i", "inv", "--mitogen"]) == EXIT_OK
    assert [call["options"].mitogen for call in recorded] == [True, False, True]
