"""run_timed (tests/integration/test_molecule.py): each Molecule step's seconds from the lines
Molecule prints, and a timeout that ends the playbooks Molecule started too."""

from __future__ import annotations

import time

from tests.integration.test_molecule import run_timed

# Molecule's own lines around a step, as in ~/.cache/vllm-fleet/molecule/<scenario>.log.
STEPS = """
echo 'INFO     [fleet > create] Executing'
sleep 0.3
echo 'INFO     [fleet > create] Executed: Successful'
echo 'INFO     [fleet > verify] Executing'
echo 'INFO     [fleet > verify] Executing Testinfra tests found in /x/molecule/fleet/tests/...'
sleep 0.2
echo 'INFO     [fleet > verify] Executed: Failed'
exit 3
"""


def test_each_step_is_timed_from_its_start_to_its_end_line() -> None:
    returncode, output, steps = run_timed(["sh", "-c", STEPS], {"PATH": "/usr/bin:/bin"}, timeout=60)
    assert returncode == 3
    assert "Executing Testinfra tests" in output
    assert [name for name, seconds in steps] == ["create", "verify"]
    create, verify = (seconds for name, seconds in steps)
    assert 0.3 <= create < 5 and 0.2 <= verify < 5


def test_a_timeout_ends_the_children_that_hold_the_output_too() -> None:
    started = time.monotonic()
    # The child keeps the output open after its parent is killed, as a playbook under Molecule.
    returncode, _output, steps = run_timed(
        ["sh", "-c", "echo 'INFO [x > converge] Executing'; sleep 60 & wait"], {"PATH": "/usr/bin:/bin"}, 1
    )
    assert returncode == 124
    assert steps == []
    assert time.monotonic() - started < 30
