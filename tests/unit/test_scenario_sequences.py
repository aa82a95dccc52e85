"""Each Molecule scenario's sequence (its molecule.yml, else .config/molecule/config.yml) has an
idempotence step, or names in OWN_IDEMPOTENCE (tests/integration/test_molecule.py) a test of its
verify that converges again: checked here in a second, not after a scenario's whole run. The
scenarios also connect as ansible.cfg does (Molecule writes an ansible.cfg of its own)."""

from __future__ import annotations

import configparser

import pytest
import yaml

from tests.integration.test_molecule import OWN_IDEMPOTENCE, ROOT, SCENARIOS

SHARED = yaml.safe_load((ROOT / ".config" / "molecule" / "config.yml").read_text())


def sequence(scenario: str) -> list[str]:
    own = yaml.safe_load((ROOT / "molecule" / scenario / "molecule.yml").read_text())
    steps: list[str] = (own.get("scenario") or SHARED["scenario"])["test_sequence"]
    return steps


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_scenario_converges_twice(scenario: str) -> None:
    if scenario in OWN_IDEMPOTENCE:
        assert "idempotence" not in sequence(scenario), f"{scenario} converges twice already"
        tests = "".join(p.read_text() for p in (ROOT / "molecule" / scenario / "tests").glob("test_*.py"))
        assert f"def {OWN_IDEMPOTENCE[scenario]}(" in tests
    else:
        assert "idempotence" in sequence(scenario)
    assert sequence(scenario)[-1] == "destroy"


def test_own_idempotence_names_scenarios() -> None:
    assert set(OWN_IDEMPOTENCE) <= set(SCENARIOS)


def test_scenarios_use_the_projects_ssh_args() -> None:
    # Without -C: the roles' rsync copies run over these arguments (docs/connections.md).
    project = configparser.ConfigParser()
    project.read(ROOT / "ansible.cfg")
    ssh_args = project["ssh_connection"]["ssh_args"]
    assert "-C" not in ssh_args.split()
    assert SHARED["provisioner"]["config_options"]["ssh_connection"]["ssh_args"] == ssh_args
