"""run_timed (tests/integration/test_molecule.py): each Molecule step's seconds from the lines
Molecule prints, and a timeout that ends the playbooks Molecule started too."""

from __future__ import annotations

import time

from tests.integration.test_molecule import run_timed

# Molecule's own lines around a step, as in ~/.cache/vllm-fleet/molecule/<scenario>.log.
STEPS = """
echo 'INFO     [fleet > create] Executing'
echo 'INFO     [fleet > create] Executed: Successful'
echo 'INFO     [fleet > verify] Executing'
echo 'INFO     [fleet > verify] Executing Testinfra tests found in /x/molecule/fleet/tests/...'
echo 'INFO     [fleet > verify] Executed: Failed'
exit 3
"""


def test_each_step_is_timed_from_its_start_to_its_end_line() -> None:
    # The clock is read once per step line: create starts at 1 and ends at 4, verify 10 to 12.5.
    # (A clock of real seconds failed CI once, when the reader saw a line 6 ms late.)
    readings = iter([1.0, 4.0, 10.0, 12.5])
    returncode, output, steps = run_timed(
        ["sh", "-c", STEPS], {"PATH": "/usr/bin:/bin"}, timeout=60, clock=lambda: next(readings)
    )
    assert returncode == 3
    assert "Executing Testinfra tests" in output
    assert steps == [("create", 3.0), ("verify", 2.5)]


def test_each_line_is_timed_as_it_arrives() -> None:
    # A step that lasts a second: read only at the end, it would last nothing. The half-second
    # margin is for a loaded machine.
    returncode, _output, steps = run_timed(
        ["sh", "-c", "echo '[x > converge] Executing'; sleep 1; echo '[x > converge] Executed: Successful'"],
        {"PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert returncode == 0
    assert [name for name, _seconds in steps] == ["converge"]
    assert 0.5 <= steps[0][1] < 30


def test_a_timeout_ends_the_children_that_hold_the_output_too() -> None:
    started = time.monotonic()
    # The child keeps the output open after its parent is killed, as a playbook under Molecule.
    returncode, _output, steps = run_timed(
        ["sh", "-c", "echo 'INFO [x > converge] Executing'; sleep 60 & wait"], {"PATH": "/usr/bin:/bin"}, 1
    )
    assert returncode == 124
    assert steps == []
    assert time.monotonic() - started < 30
