"""How a scenario's tests reach its hosts as Ansible does: over SSH, with the config
playbooks/sandbox.yml wrote into Molecule's ephemeral directory (addresses, user, key, host keys).

Importable from every molecule/<scenario>/tests (pytest puts this directory, conftest.py's, on
the path) and from benchmarks that put it there themselves.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path


def ssh() -> list[str]:
    """ssh with the scenario's config."""
    directory = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    assert directory, "run under Molecule, or set MOLECULE_EPHEMERAL_DIRECTORY"
    return ["ssh", "-F", str(Path(directory) / "ssh" / "config")]


def address(host: str) -> str:
    """The host's address on the scenario's network (reachable from the controller)."""
    out = subprocess.run([*ssh(), "-G", host], check=True, capture_output=True, text=True).stdout
    return next(line.split()[1] for line in out.splitlines() if line.startswith("hostname "))


def on_host(host: str, *argv: str) -> str:
    """argv run as root on the host, over SSH as Ansible reaches it; its stdout."""
    command = shlex.join(["sudo", *argv])
    return subprocess.run([*ssh(), host, command], check=True, capture_output=True, text=True).stdout
