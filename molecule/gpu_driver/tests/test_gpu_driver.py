"""The GPU host roles on a Debian 12 host without a GPU, after converge and idempotence.

nvidia_driver installed Debian's own 535 userspace driver from non-free at a pinned version,
with the kernel module part skipped (containers cannot load modules). These tests check what it
left on the host, then run playbooks against it: the preflight planner refusing a cuda instance,
a plain converge refusing to move the driver, and the cuda_toolkit role.
"""

from __future__ import annotations

import json
import re

DRIVER_VERSION = "535.261.03"
PINNED = ("nvidia-smi", "libcuda1", "libnvidia-ml1")
NOUVEAU_BLACKLIST = "/etc/modprobe.d/vllm-fleet-blacklist-nouveau.conf"
APT_PIN = "/etc/apt/preferences.d/vllm-fleet-nvidia.pref"
STATE_FACT = "/etc/ansible/facts.d/vllm_fleet_nvidia_driver.fact"
CUDA_PROFILE = "/etc/profile.d/vllm-fleet-cuda.sh"


def _selections(host) -> dict[str, str]:
    """Installed packages and their dpkg selection (install, hold)."""
    out = host.check_output("dpkg-query -W -f='${Package} ${db:Status-Want} ${db:Status-Status}\\n'")
    rows = (line.split() for line in out.splitlines())
    return {row[0]: row[1] for row in rows if len(row) == 3 and row[2] == "installed"}


def test_userspace_driver_at_the_pinned_version(host):
    for name in PINNED:
        package = host.package(name)
        assert package.is_installed, name
        assert package.version.startswith(f"{DRIVER_VERSION}-"), (name, package.version)
    # Debian's persistence daemon has its own version (535.171.04): installed, not pinned.
    assert host.package("nvidia-persistenced").is_installed


def test_kernel_module_part_skipped(host):
    installed = _selections(host)
    for name in ("nvidia-kernel-dkms", "nvidia-open-kernel-dkms", "dkms", "firmware-nvidia-gsp"):
        assert name not in installed, name
    assert not [name for name in installed if name.startswith("linux-headers")]


def test_every_nvidia_package_is_held(host):
    # The role's own pattern, as its apt pin names the packages: "Package: /<regex>/".
    pattern = re.search(r"^Package: /(.+)/$", host.file(APT_PIN).content_string, re.MULTILINE)
    assert pattern, host.file(APT_PIN).content_string
    installed = _selections(host)
    nvidia = {name: want for name, want in installed.items() if re.search(pattern.group(1), name)}
    print(f"held NVIDIA packages ({len(nvidia)}): {sorted(nvidia)}")
    assert set(PINNED) | {"nvidia-persistenced"} <= set(nvidia)
    assert all(want == "hold" for want in nvidia.values()), nvidia


def test_apt_pin_keeps_the_driver_against_a_newer_version(host):
    pin = host.file(APT_PIN)
    assert pin.mode == 0o644
    assert f"Pin: version {DRIVER_VERSION}-*" in pin.content_string
    policy = host.check_output("apt-cache policy nvidia-smi libcuda1")
    # The sources offer a newer driver (the security update): the pin must win over it.
    offered = set(re.findall(r"^\s+(?:\*\*\* )?(535\.\d+\.\d+\S*) \d+$", policy, re.MULTILINE))
    assert any(not version.startswith(DRIVER_VERSION) for version in offered), policy
    candidates = re.findall(r"Candidate: (\S+)", policy)
    assert candidates and all(c.startswith(f"{DRIVER_VERSION}-") for c in candidates), policy
    upgrade = host.check_output("apt-get -s -o Debug::NoLocking=1 dist-upgrade")
    assert not re.search(r"^Inst \S*(nvidia|libcuda)", upgrade, re.MULTILINE), upgrade


def test_nouveau_blacklisted(host):
    blacklist = host.file(NOUVEAU_BLACKLIST)
    assert blacklist.user == "root" and blacklist.mode == 0o644
    lines = blacklist.content_string.splitlines()
    assert "blacklist nouveau" in lines
    assert "options nouveau modeset=0" in lines


def test_persistence_daemon_enabled_with_persistence_mode(host):
    service = host.service("nvidia-persistenced")
    assert service.is_enabled
    exec_start = host.check_output("systemctl show -p ExecStart --value nvidia-persistenced.service")
    assert "--persistence-mode" in exec_start and "--no-persistence-mode" not in exec_start
    assert "--user nvpd" in exec_start
    # Without a kernel module it cannot run: the role does not start it in a container.
    state = host.run("systemctl is-active nvidia-persistenced.service").stdout.strip()
    print(f"nvidia-persistenced in the container (no kernel module): {state}")


def test_driver_state_fact(host):
    state = json.loads(host.file(STATE_FACT).content_string)
    assert state["userspace_version"] == DRIVER_VERSION
    assert state["kernel_module_version"] is None
    assert state["reboot_needed"] is False
    assert "nvidia_driver_skip_kernel_module" in state["reason"]
    assert state["gpus"] == 0 and state["pci_gpus"] == 0 and state["nvswitches"] == 0
    assert state["fabric_manager"] is False
    assert state["hold_mechanism"] == "dpkg hold + apt pin"


def test_gpu_facts_say_zero_gpus(host):
    facts = host.ansible("vllm_fleet.serving.gpu_facts", check=False)["ansible_facts"]["vllm_fleet_gpus"]
    print(f"gpu_facts on the GPU-less host: status={facts['status']} reason={facts['reason']!r}")
    assert facts["count"] == 0
    assert facts["devices"] == []
    assert facts["status"] != "ok"


def test_cuda_instance_refused_by_the_preflight(host, run_playbook):
    spec = {
        "vllm_server_instances": [
            {
                "name": "gpu",
                "model": "smollm2-135m-instruct",
                "revision": "q4_1-bf16",
                "port": 8000,
                "device": "cuda",
                "gpus": [0],
            }
        ],
        # The sandbox's golden prompt names its smollm2 instance, which this spec replaces: a
        # settings error the preflight would refuse first, before it reads the host's GPUs.
        "vllm_server_golden_prompts": {},
    }
    rc, output, seconds = run_playbook("playbooks/plan.yml", None, "-e", json.dumps(spec), flat=True)
    print(f"plan.yml refused the cuda instance in {seconds:.1f} s")
    assert rc != 0, output[-3000:]
    assert "device cuda needs NVIDIA GPUs, the host has none" in output, output[-5000:]


def test_plain_converge_refuses_to_move_the_driver(host, run_playbook):
    before = _selections(host)
    rc, output, _seconds = run_playbook(
        "molecule/gpu_driver/converge.yml", None, "-e", "nvidia_driver_version=535.309.01", flat=True
    )
    assert rc != 0, output[-3000:]
    assert "nvidia_driver_version is 535.309.01 but vllm-gpu-driver-1 has driver 535.261.03" in output
    assert "playbooks/driver.yml" in output
    assert _selections(host) == before
    assert host.package("nvidia-smi").version.startswith(f"{DRIVER_VERSION}-")


def test_driver_playbook_leaves_a_host_with_nothing_to_do_alone(host, run_playbook):
    rc, output, seconds = run_playbook("playbooks/driver.yml", flat=True)
    print(f"playbooks/driver.yml on a host with nothing to change: {seconds:.1f} s")
    assert rc == 0, output[-5000:]
    assert re.search(r"vllm-gpu-driver-1 : ok=\d+ changed=0 unreachable=0 failed=0", output), output[-3000:]
    assert "Drain the host" in output and "Wait until the host's vLLM instances serve again" in output
    assert not re.search(r"TASK \[Wait until the host's vLLM instances serve again\] \**\s*ok:", output)


def test_driver_playbook_refuses_to_take_a_serving_host_down_undrained(host, run_playbook):
    # The sandbox group_vars give this host a vLLM instance; no gateway role exists to drain it.
    before = _selections(host)
    rc, output, _seconds = run_playbook(
        "playbooks/driver.yml", None, "-e", "nvidia_driver_version=535.309.01", flat=True
    )
    assert rc != 0, output[-3000:]
    assert "vllm-gpu-driver-1 serves vLLM instances and its driver would change" in output, output[-3000:]
    assert "driver_drain_tasks" in output
    assert _selections(host) == before


def test_cuda_toolkit_from_debian_in_check_mode(host, run_playbook):
    rc, output, _seconds = run_playbook(
        "molecule/gpu_driver/toolkit.yml",
        None,
        "--check",
        "-e",
        "cuda_toolkit_source=distribution",
        "-e",
        "cuda_toolkit_version=11.8",
        flat=True,
    )
    assert rc == 0, output[-5000:]
    # The 1.6 GB nvidia-cuda-toolkit would be installed from the non-free sources the driver added.
    # Role tasks print with the role's FQCN since the playbooks name roles by it.
    install = r"TASK \[vllm_fleet\.serving\.cuda_toolkit : Install the CUDA toolkit 11\.8\] \**\s*changed:"
    assert re.search(install, output), output[-5000:]
    assert not host.package("nvidia-cuda-toolkit").is_installed


def test_cuda_toolkit_refuses_a_version_debian_does_not_package(host, run_playbook):
    rc, output, _seconds = run_playbook(
        "molecule/gpu_driver/toolkit.yml",
        None,
        "-e",
        "cuda_toolkit_source=distribution",
        "-e",
        "cuda_toolkit_version=12.4",
        flat=True,
    )
    assert rc != 0, output[-3000:]
    assert "Debian 12 packages CUDA 11.8 only" in output, output[-3000:]


def test_container_toolkit_refuses_a_host_whose_driver_sees_no_gpu(host, run_playbook):
    engines = json.dumps({"nvidia_container_toolkit_engines": ["podman"]})
    playbook = "molecule/gpu_driver/container-toolkit.yml"
    rc, output, _seconds = run_playbook(playbook, None, "-e", engines, flat=True)
    assert rc != 0, output[-3000:]
    assert "the NVIDIA driver sees no GPU" in output, output[-3000:]
    assert "the container toolkit needs a working driver: run the nvidia_driver" in output, output[-3000:]
    # Stopped before any change: no repository, no package, no CDI spec.
    assert not host.file("/etc/apt/sources.list.d/nvidia-container-toolkit.sources").exists
    assert not host.package("nvidia-container-toolkit").is_installed
    assert not host.file("/etc/cdi/nvidia.yaml").exists


def test_cuda_toolkit_profile_script(host, run_playbook):
    # NVIDIA's repository is out of reach here: the settings and the profile script only.
    rc, output, _seconds = run_playbook(
        "molecule/gpu_driver/toolkit.yml",
        None,
        "--tags",
        "cuda_toolkit_configure",
        "-e",
        "cuda_toolkit_source=cuda_repo",
        "-e",
        "cuda_toolkit_version=12.8",
        flat=True,
    )
    try:
        assert rc == 0, output[-5000:]
        profile = host.file(CUDA_PROFILE)
        assert profile.mode == 0o644
        env = host.check_output("bash -lc 'echo $CUDA_HOME; echo $PATH; echo $LD_LIBRARY_PATH'").splitlines()
        assert env[0] == "/usr/local/cuda-12.8"
        assert env[1].startswith("/usr/local/cuda-12.8/bin:")
        assert env[2] == "/usr/local/cuda-12.8/lib64"
        # Sourced twice (nested login shells): no duplicate entries.
        twice = host.check_output(f"bash -c '. {CUDA_PROFILE}; . {CUDA_PROFILE}; echo $PATH'")
        assert twice.count("/usr/local/cuda-12.8/bin") == 1
    finally:
        host.run(f"rm -f {CUDA_PROFILE}")


# Last: it moves the host to another driver version.
def test_version_change_when_allowed_moves_and_holds_everything(host, run_playbook):
    """What playbooks/driver.yml does on a host (here without the reboot: no kernel module)."""
    newer = "535.309.01"  # bookworm-security's version, offered by the same sources
    rc, output, seconds = run_playbook(
        "molecule/gpu_driver/converge.yml",
        None,
        "-e",
        f"nvidia_driver_version={newer}",
        "-e",
        "nvidia_driver_allow_version_change=true",
        flat=True,
    )
    print(f"driver {DRIVER_VERSION} -> {newer} with the holds lifted and set again: {seconds:.1f} s")
    assert rc == 0, output[-5000:]
    for name in PINNED:
        assert host.package(name).version.startswith(f"{newer}-"), name
    pattern = re.search(r"^Package: /(.+)/$", host.file(APT_PIN).content_string, re.MULTILINE)
    assert pattern and f"Pin: version {newer}-*" in host.file(APT_PIN).content_string
    nvidia = {name: want for name, want in _selections(host).items() if re.search(pattern.group(1), name)}
    assert all(want == "hold" for want in nvidia.values()), nvidia
    assert json.loads(host.file(STATE_FACT).content_string)["userspace_version"] == newer
