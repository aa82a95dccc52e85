"""The host side of the instances (module_utils/instances.py) on real directories.

systemd is the one part replaced here: ``Systemd`` records the calls and keeps which units are
active, as ``systemctl is-active`` would answer. Real units start and fail in the Molecule
scenarios (model_sync, instances, fleet).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ansible_collections.vllm_fleet.serving.plugins.module_utils.instances import Desired, Host


class Systemd:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.active: set[str] = set()

    def __call__(self, *args: str) -> tuple[int, str]:
        self.calls.append(args)
        verb, unit = args[0], args[-1]
        if verb == "is-active":
            return (0, "active\n") if unit in self.active else (3, "inactive\n")
        if verb == "restart":
            self.active.add(unit)
        if verb == "disable":
            self.active.discard(unit)
        return 0, ""

    def restarted(self) -> list[str]:
        return [c[1] for c in self.calls if c[0] == "restart"]


def _unit(name: str, revision: str) -> str:
    return f"[Unit]\nDescription=vLLM instance {name} serving m (m@{revision})\n[Service]\nExecStart=/x\n"


def _want(tmp: Path, name: str, revision: str, env: str = "k1", key: str = "VLLM_API_KEY=s\n") -> Desired:
    return Desired(
        name, _unit(name, revision), str(tmp / "store" / "m" / revision), str(tmp / "envs" / env), key
    )


@pytest.fixture
def host(tmp_path: Path) -> tuple[Host, Systemd, Path]:
    for sub in ("units", "instances", "config"):
        (tmp_path / sub).mkdir()
    systemd = Systemd()
    return (
        Host(str(tmp_path / "units"), str(tmp_path / "instances"), str(tmp_path / "config"), systemd),
        systemd,
        tmp_path,
    )


def test_a_first_start_needs_no_drain_and_a_second_run_changes_nothing(host) -> None:
    h, systemd, tmp = host
    plan = h.plan([_want(tmp, "a", "r1")])
    assert plan.pending == ["a"] and not plan.drain and plan.active == []
    h.switch([_want(tmp, "a", "r1")])
    assert systemd.restarted() == ["vllm-a.service"]
    assert os.readlink(tmp / "instances" / "a" / "model") == str(tmp / "store" / "m" / "r1")
    assert (tmp / "config" / "a.env").stat().st_mode & 0o777 == 0o600
    assert h.plan([_want(tmp, "a", "r1")]).unconfirmed == ["a"]
    assert h.commit(["a"]) == ["a"]
    again = h.plan([_want(tmp, "a", "r1")])
    assert (again.pending, again.retired, again.unconfirmed, again.drain) == ([], [], [], False)
    # The start of a new instance leaves no way back behind: there was nothing before it.
    assert not (tmp / "instances" / "a" / "previous.service").exists()


def test_a_change_to_a_running_instance_drains_and_the_diff_hides_the_key(host) -> None:
    h, _systemd, tmp = host
    h.switch([_want(tmp, "a", "r1"), _want(tmp, "b", "r1")])
    h.commit(["a", "b"])
    plan = h.plan([_want(tmp, "a", "r2", key="VLLM_API_KEY=new-secret\n"), _want(tmp, "b", "r1")])
    assert plan.pending == ["a"] and plan.drain and plan.active == ["a", "b"]
    text = repr(plan.diff)
    assert "new-secret" not in text and "(new secrets)" in text and "m@r2" in text


def test_a_failed_gate_restores_the_unit_and_links_and_commit_keeps_the_way_back(host) -> None:
    h, _systemd, tmp = host
    h.switch([_want(tmp, "a", "r1")])
    h.commit(["a"])
    h.switch([_want(tmp, "a", "r2")])
    assert "m@r2" in (tmp / "units" / "vllm-a.service").read_text()
    assert h.restore(["a"]) == ["a"]
    assert "m@r1" in (tmp / "units" / "vllm-a.service").read_text()
    assert os.readlink(tmp / "instances" / "a" / "model").endswith("/m/r1")
    assert h.plan([_want(tmp, "a", "r1")]).unconfirmed == []
    # The good switch: the record of r1 becomes the previous one; a rollback goes back to it.
    h.switch([_want(tmp, "a", "r2")])
    h.commit(["a"])
    assert os.readlink(tmp / "instances" / "a" / "previous-model").endswith("/m/r1")
    back = h.plan([_want(tmp, "a", "r2")], target="previous")
    assert back.pending == ["a"] and back.drain
    h.switch([_want(tmp, "a", "r2")], target="previous")
    assert "m@r1" in (tmp / "units" / "vllm-a.service").read_text()
    h.commit(["a"], target="previous")
    # A second rollback has nothing to do.
    assert h.plan([_want(tmp, "a", "r2")], target="previous").pending == []


def test_a_stopped_run_keeps_the_oldest_record(host) -> None:
    h, _systemd, tmp = host
    h.switch([_want(tmp, "a", "r1")])
    h.commit(["a"])
    h.switch([_want(tmp, "a", "r2")])  # the run stops here, before its gate
    h.switch([_want(tmp, "a", "r3")])
    h.restore(["a"])
    assert "m@r1" in (tmp / "units" / "vllm-a.service").read_text()


def test_retired_instances_drain_stop_and_go_and_new_ones_are_removed_on_restore(host) -> None:
    h, systemd, tmp = host
    h.switch([_want(tmp, "a", "r1"), _want(tmp, "b", "r1")])
    h.commit(["a", "b"])
    (tmp / "units" / "vllm-other.service").write_text("[Unit]\nDescription=not ours\n")
    plan = h.plan([_want(tmp, "a", "r1"), _want(tmp, "c", "r1")])
    assert plan.retired == ["b"] and plan.pending == ["c"] and plan.drain
    h.switch([_want(tmp, "a", "r1"), _want(tmp, "c", "r1")])
    assert not (tmp / "units" / "vllm-b.service").exists() and not (tmp / "instances" / "b").exists()
    assert (tmp / "units" / "vllm-other.service").exists()
    assert ("disable", "--now", "vllm-b.service") in systemd.calls
    # c was new in that switch: putting the host back removes it.
    h.restore(["a", "c"])
    assert not (tmp / "units" / "vllm-c.service").exists()


def test_check_mode_changes_nothing(host) -> None:
    h, systemd, tmp = host
    h.check_mode = True
    plan = h.switch([_want(tmp, "a", "r1")])
    assert plan.pending == ["a"]
    assert list((tmp / "units").iterdir()) == [] and list((tmp / "instances").iterdir()) == []
    assert systemd.restarted() == []


def test_an_instance_that_is_not_running_is_started(host) -> None:
    h, systemd, tmp = host
    h.switch([_want(tmp, "a", "r1")])
    h.commit(["a"])
    systemd.active.clear()
    plan = h.plan([_want(tmp, "a", "r1")])
    assert plan.pending == ["a"] and not plan.drain and plan.diff == []


def _container(name: str, image: str, revision: str = "r1", tmp: Path | None = None) -> Desired:
    """A container instance: no env link; its image is in its unit's command line."""
    unit = (
        f"[Unit]\nDescription=vLLM instance {name} serving m (m@{revision})\n"
        f"[Service]\nExecStart=/usr/bin/podman run {image}\n"
    )
    return Desired(name, unit, str((tmp or Path("/s")) / "store" / "m" / revision), "", "VLLM_API_KEY=s\n")


def test_an_image_change_rolls_back_to_the_previous_image_and_a_second_rollback_does_nothing(host) -> None:
    h, _systemd, tmp = host
    h.switch([_container("c", "vllm:1", tmp=tmp)])
    h.commit(["c"])
    assert not os.path.lexists(tmp / "instances" / "c" / "env")
    assert h.plan([_container("c", "vllm:1", tmp=tmp)]).pending == []
    h.switch([_container("c", "vllm:2", tmp=tmp)])
    h.commit(["c"])
    back = h.plan([_container("c", "vllm:2", tmp=tmp)], target="previous")
    assert back.pending == ["c"] and back.drain
    h.switch([_container("c", "vllm:2", tmp=tmp)], target="previous")
    assert "run vllm:1" in (tmp / "units" / "vllm-c.service").read_text()
    h.commit(["c"], target="previous")
    assert h.plan([_container("c", "vllm:2", tmp=tmp)], target="previous").pending == []


def test_a_python_instance_turned_container_loses_its_env_link_and_gets_it_back(host) -> None:
    h, _systemd, tmp = host
    h.switch([_want(tmp, "a", "r1")])
    h.commit(["a"])
    h.switch([_container("a", "vllm:1", tmp=tmp)])
    assert not os.path.lexists(tmp / "instances" / "a" / "env")
    h.restore(["a"])
    assert os.readlink(tmp / "instances" / "a" / "env") == str(tmp / "envs" / "k1")
    # And the way back from a committed move to a container is the Python environment.
    h.switch([_container("a", "vllm:1", tmp=tmp)])
    h.commit(["a"])
    h.switch([_container("a", "vllm:1", tmp=tmp)], target="previous")
    assert os.readlink(tmp / "instances" / "a" / "env") == str(tmp / "envs" / "k1")
