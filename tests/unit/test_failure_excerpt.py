"""What a failed scenario reports: the failed task or test, not the tail of its destroy step."""

from __future__ import annotations

from pathlib import Path

from tests.integration.test_molecule import failure_excerpt

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "molecule"


def test_a_failed_verifier_test_gives_its_name_assertion_and_line() -> None:
    excerpt = failure_excerpt((FIXTURES / "instances-verify-failed.log").read_text())
    assert excerpt.splitlines()[0].startswith("_____ test_stop_lets_in_flight_streams_finish[")
    failures = "[\"APIConnectionError('Connection error.')\"]"
    assert f"E       AssertionError: {{'ok': 10, 'failures': {failures}}}" in excerpt
    assert excerpt.splitlines()[-1] == "tests/test_instances.py:364: AssertionError"
    # Passed tests and the source of the failed one are left out.
    assert "PASSED" not in excerpt and "def test_" not in excerpt


def test_a_failed_task_gives_its_header_origin_and_result() -> None:
    excerpt = failure_excerpt((FIXTURES / "converge-task-failed.log").read_text())
    lines = excerpt.splitlines()
    assert lines[0].startswith("TASK [Check the wheelhouse]")
    assert "Origin: converge.yml:4:7" in lines
    assert lines[-1].startswith('fatal: [localhost]: FAILED! => {"changed": false, "cmd": ["test", "-d"')
    assert "PLAY RECAP" not in excerpt


def test_an_output_without_failures_says_so() -> None:
    assert failure_excerpt("PLAY RECAP\nok=3 changed=0\n").startswith("(no failed task or test found")
