"""How a scenario's tests reach its hosts as Ansible does: over SSH, with the config
playbooks/sandbox.yml wrote into Molecule's ephemeral directory (addresses, user, key, host keys).

Importable from every molecule/<scenario>/tests (pytest puts this directory, conftest.py's, on
the path) and from benchmarks that put it there themselves (with the sandbox's config).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


def ssh(config: Path | None = None) -> list[str]:
    """ssh with the scenario's config (or another fleet's, e.g. the sandbox's)."""
    if config is None:
        directory = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
        assert directory, "run under Molecule, or set MOLECULE_EPHEMERAL_DIRECTORY"
        config = Path(directory) / "ssh" / "config"
    return ["ssh", "-F", str(config)]


def address(host: str, config: Path | None = None) -> str:
    """The host's address on the fleet's network (reachable from the controller)."""
    out = subprocess.run([*ssh(config), "-G", host], check=True, capture_output=True, text=True).stdout
    return next(line.split()[1] for line in out.splitlines() if line.startswith("hostname "))


def on_host(host: str, *argv: str) -> str:
    """argv run as root on the host, over SSH as Ansible reaches it; its stdout."""
    command = shlex.join(["sudo", *argv])
    return subprocess.run([*ssh(), host, command], check=True, capture_output=True, text=True).stdout


@contextlib.contextmanager
def tunnel(host: str, port: int, config: Path | None = None) -> Iterator[int]:
    """A local port forwarded over SSH to the host's own 127.0.0.1:port, for as long as the block
    runs: how a test reaches an instance port that the host's firewall keeps from the controller."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local = probe.getsockname()[1]
    forward_spec = f"127.0.0.1:{local}:127.0.0.1:{port}"
    forward = subprocess.Popen(
        [*ssh(config), "-N", "-o", "ExitOnForwardFailure=yes", "-L", forward_spec, host]
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if forward.poll() is not None:
                raise RuntimeError(f"ssh -L to {host}:{port} exited with {forward.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", local), timeout=1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"ssh -L to {host}:{port} did not listen within 30 s")
            time.sleep(0.2)
        yield local
    finally:
        forward.terminate()
        forward.wait(timeout=10)


def recap_changed(output: str) -> dict[str, int]:
    """Each host's `changed` count in the PLAY RECAP of an ansible-playbook run's output."""
    recap = re.finditer(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", output, re.M)
    return {m.group(1): int(m.group(2)) for m in recap}
