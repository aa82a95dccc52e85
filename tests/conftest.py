"""Make the collection importable as ansible_collections.vllm_fleet.serving in tests."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
COLLECTIONS = ROOT / "collections"

link = COLLECTIONS / "ansible_collections" / "vllm_fleet" / "serving"
if not link.exists():
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(Path("../../.."))
sys.path.insert(0, str(COLLECTIONS))
# The test models' builders, as scripts/test runs them: `python -m tests.builders`.
sys.path.append(str(ROOT))


@pytest.fixture(scope="session")
def vllm_parser() -> Iterator[Callable[[dict[str, Any]], dict[str, Any]]]:
    """vLLM 0.32's own argument parser (tests/vllm_parse.py in the real vLLM of
    tests/builders/vllm_parser.py), started once: ask({"argv": [...]}) or ask({"options": True})."""
    from tests.builders.vllm_parser import parser_env
    from vllm_fleet.paths import cache_dir

    python = parser_env(cache_dir()) / "bin" / "python"
    script = Path(__file__).with_name("vllm_parse.py")
    proc = subprocess.Popen(
        [str(python), str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )

    def ask(request: dict[str, Any]) -> dict[str, Any]:
        assert proc.stdin and proc.stdout
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert line, f"{script} ended (rc={proc.poll()})"
        answer: dict[str, Any] = json.loads(line)
        return answer

    yield ask
    assert proc.stdin
    proc.stdin.close()
    proc.wait(timeout=30)
