"""`vllm-fleet plan --offline` on the example production inventory: real ansible-runner runs,
no host contacted (the hosts' names do not even resolve)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ROOT / "inventories" / "production"
CLI = [sys.executable, "-m", "vllm_fleet.cli"]


def plan(inventory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "plan", "-i", str(inventory), "--offline", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_offline_plan_prints_every_command():
    proc = plan(PRODUCTION)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["ok"] and doc["offline"]
    hosts = doc["plans"]
    assert sorted(hosts) == [
        "gpu-a01.example.internal",
        "gpu-a02.example.internal",
        "gpu-b01.example.internal",
        "gpu-b02.example.internal",
    ]
    big = hosts["gpu-a01.example.internal"]["instances"]
    assert [i["instance"] for i in big] == ["llama70b"]
    assert "vllm serve" in big[0]["command"] and "--tensor-parallel-size 8" in big[0]["command"]
    small = hosts["gpu-b01.example.internal"]["instances"]
    assert [i["instance"] for i in small] == ["llama8b-a", "llama8b-b"]
    assert all("--tensor-parallel-size 4" in i["command"] for i in small)
    # llama8b-b from vLLM's image: the same flags after `docker run ... IMAGE serve MODEL`.
    container = small[1]["command"]
    assert container.startswith("/usr/bin/docker run --rm --name vllm-llama8b-b --network host --ipc host")
    assert "--gpus '\"device=4,5,6,7\"' --entrypoint vllm vllm/vllm-openai:v0.32.0 serve" in container
    python_flags = small[0]["command"].split(" serve ", 1)[1]
    expected = python_flags.replace("llama8b-a", "llama8b-b").replace("--port 8000", "--port 8001")
    assert container.split(" serve ", 1)[1] == expected
    checks = {c["check"]: c["status"] for c in big[0]["checks"]}
    assert checks["gpus_present"] == "pass"  # from the declared 8 x H100
    assert checks["port_free"] == "not checked"  # offline: never a pass
    assert checks["tp_divides_heads"] == "not checked"  # no config.json on this controller


def test_offline_plan_refuses_a_bad_spec(tmp_path: Path):
    inventory = tmp_path / "production"
    shutil.copytree(PRODUCTION, inventory)
    group_vars = inventory / "group_vars" / "llama8b.yml"
    data = yaml.safe_load(group_vars.read_text())
    data["vllm_server_instances"][1]["gpus"] = [3, 4, 5, 6]  # GPU 3 also belongs to llama8b-a
    group_vars.write_text(yaml.safe_dump(data))
    proc = plan(inventory)
    assert proc.returncode == 3, proc.stdout + proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert not doc["ok"]
    failures = doc["plans"]["gpu-b01.example.internal"]["failures"]
    assert any("GPU 3 is owned by several instances" in f for f in failures), failures


def test_up_refuses_bad_settings_before_contacting_any_host(tmp_path: Path):
    """`vllm-fleet up` (a converge, not offline) checks the settings on the controller first: a
    mistake is refused without contacting any host. The example's hosts do not resolve, so a
    run that tried to reach one would end unreachable (exit 4), not refused (exit 3)."""
    inventory = tmp_path / "production"
    shutil.copytree(PRODUCTION, inventory)
    group_vars = inventory / "group_vars" / "llama8b.yml"
    data = yaml.safe_load(group_vars.read_text())
    data["vllm_server_instances"][1]["port"] = data["vllm_server_instances"][0]["port"]
    group_vars.write_text(yaml.safe_dump(data))
    proc = subprocess.run(
        [*CLI, "up", "-i", str(inventory), "--json"], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    messages = [f["message"] for f in doc["failures"]]
    assert any("'port' must be unique on a host" in m for m in messages), messages
    assert not any(f["unreachable"] for f in doc["failures"]), doc["failures"]
