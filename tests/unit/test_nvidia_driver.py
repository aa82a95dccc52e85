"""The GPU host roles' decisions: per-distribution packages, repositories and holds, the fabric
manager, the "reboot needed" fact, Secure Boot, DKMS, and the CUDA toolkit's choices.

NVIDIA's CUDA repository cannot be reached from the project's machines and no GPU host was at
hand: these choices are tested here, as data. Debian 12's own packages are installed for real by
the Molecule scenario gpu_driver; its recorded outputs are in tests/fixtures/gpu-host.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_collections.vllm_fleet.serving.plugins.filter.nvidia_driver import FilterModule
from ansible_collections.vllm_fleet.serving.plugins.module_utils import cuda_toolkit, nvidia_smi
from ansible_collections.vllm_fleet.serving.plugins.module_utils import nvidia_driver as nd
from ansible_collections.vllm_fleet.serving.plugins.module_utils.preflight import check_gpus

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "gpu-host"
SMI_FIXTURES = ROOT / "tests" / "fixtures" / "nvidia-smi"
CUDA = "https://developer.download.nvidia.com/compute/cuda/repos"
DEBIAN_KERNEL = "6.1.0-28-amd64"
UBUNTU_KERNEL = "5.15.0-105-generic"
RHEL_KERNEL = "5.14.0-427.13.1.el9_4.x86_64"


def settings(platform: str, **overrides: Any) -> dict[str, Any]:
    """The role's inputs for one host (roles/nvidia_driver/vars/main.yml), with overrides."""
    kernel = {"Debian-12": DEBIAN_KERNEL, "RedHat-9": RHEL_KERNEL}.get(platform, UBUNTU_KERNEL)
    base = {
        "platform": platform,
        "source": "cuda_repo",
        "version": "580",
        "kernel_modules": "open",
        "module_build": "auto",
        "fabric_manager": False,
        "skip_kernel_module": False,
        "kernel": kernel,
        "architecture": "x86_64",
        "codename": "bookworm",
        "cuda_repo_url": CUDA,
        "debian_mirror": "http://deb.debian.org/debian",
        "debian_security_mirror": "http://deb.debian.org/debian-security",
    }
    return {**base, **overrides}


def plan(platform: str, **overrides: Any) -> dict[str, Any]:
    return nd.driver_plan(settings(platform, **overrides))


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


# -- the fixtures --------------------------------------------------------------------------------


def test_every_fixture_says_where_it_came_from() -> None:
    readme = fixture("README.md")
    names = sorted(path.name for path in FIXTURES.glob("*.txt"))
    assert names
    assert [name for name in names if f"`{name}`" not in readme] == []


# -- platforms and settings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("distribution", "major", "family", "key"),
    [
        ("Ubuntu", "22", "Debian", "Ubuntu-22"),
        ("Ubuntu", "24", "Debian", "Ubuntu-24"),
        ("Debian", "12", "Debian", "Debian-12"),
        ("RedHat", "9", "RedHat", "RedHat-9"),
        ("Rocky", 9, "RedHat", "RedHat-9"),
        ("AlmaLinux", "9", "RedHat", "AlmaLinux-9"),
        ("Debian", "11", "Debian", "Debian-11"),
    ],
)
def test_platform_key_from_ansible_facts(distribution: str, major: Any, family: str, key: str) -> None:
    assert nd.platform_key(distribution, major, family) == key


def test_unsupported_platform_is_refused_with_the_supported_list() -> None:
    result = plan("Debian-11")
    assert not result["ok"]
    assert result["errors"] == [
        "nvidia_driver supports Ubuntu 22.04, Ubuntu 24.04, Debian 12, RHEL/Rocky 9; this host is Debian-11"
    ]


def test_version_setting_is_a_branch_or_an_exact_version() -> None:
    assert nd.parse_version_setting("580") == {"branch": "580", "version": None}
    assert nd.parse_version_setting("580.95.05") == {"branch": "580", "version": "580.95.05"}
    assert nd.parse_version_setting(" 570.124 ") == {"branch": "570", "version": "570.124"}
    for bad in ("", "58", "latest", "580.", "580.95.05.1", "r580"):
        with pytest.raises(ValueError, match="nvidia_driver_version must be a driver branch"):
            nd.parse_version_setting(bad)


def test_bad_settings_name_the_variable_and_the_choices() -> None:
    result = plan("Ubuntu-24", source="ppa", kernel_modules="nouveau", module_build="kmod", version="new")
    assert not result["ok"]
    assert result["errors"] == [
        "nvidia_driver_source must be one of ['distribution', 'cuda_repo'], got 'ppa'",
        "nvidia_driver_kernel_modules must be one of ['open', 'proprietary'], got 'nouveau'",
        "nvidia_driver_kernel_module_build must be one of ['auto', 'dkms', 'prebuilt'], got 'kmod'",
        "nvidia_driver_version must be a driver branch such as '580' or an exact version such as "
        "'580.95.05', got 'new'",
    ]


def test_open_modules_need_branch_515_or_newer() -> None:
    result = plan("Ubuntu-22", version="470.239.06")
    assert result["errors"] == [
        "nvidia_driver_kernel_modules: open kernel modules exist from branch 515 on; "
        "branch 470 needs 'proprietary'"
    ]
    assert plan("Ubuntu-22", version="470.239.06", kernel_modules="proprietary")["ok"]


# -- NVIDIA's CUDA repository --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "arch", "url", "key"),
    [
        ("Ubuntu-22", "x86_64", f"{CUDA}/ubuntu2204/x86_64/", "3bf863cc.pub"),
        ("Ubuntu-24", "x86_64", f"{CUDA}/ubuntu2404/x86_64/", "3bf863cc.pub"),
        ("Ubuntu-24", "aarch64", f"{CUDA}/ubuntu2404/sbsa/", "3bf863cc.pub"),
        ("Debian-12", "x86_64", f"{CUDA}/debian12/x86_64/", "3bf863cc.pub"),
        ("RedHat-9", "x86_64", f"{CUDA}/rhel9/x86_64/", "D42D0685.pub"),
        ("RedHat-9", "aarch64", f"{CUDA}/rhel9/sbsa/", "D42D0685.pub"),
    ],
)
def test_cuda_repository_url_and_key(platform: str, arch: str, url: str, key: str) -> None:
    repo = nd.cuda_repository(platform, arch, CUDA + "/")
    assert repo["url"] == url
    assert repo["key_url"] == url + key
    assert repo["name"] == "vllm-fleet-cuda"
    assert plan(platform, architecture=arch)["cuda_repository"] == repo


def test_cuda_repository_follows_a_mirror_and_refuses_unknown_architectures() -> None:
    mirror = nd.cuda_repository("Debian-12", "amd64", "http://mirror.internal/cuda")
    assert mirror["url"] == "http://mirror.internal/cuda/debian12/x86_64/"
    with pytest.raises(ValueError, match="ppc64le"):
        nd.cuda_repository("RedHat-9", "ppc64le", CUDA)


# -- Ubuntu ---------------------------------------------------------------------------------------


def test_ubuntu_2204_own_packages_with_canonical_signed_prebuilt_open_modules() -> None:
    result = plan("Ubuntu-22", source="distribution", version="535.183.06")
    assert result["ok"], result["errors"]
    assert result["package_manager"] == "apt"
    assert result["cuda_repository"] is None and result["repositories"] == []
    assert result["install"] == [
        "libnvidia-compute-535-server=535.183.06-*",
        "nvidia-utils-535-server=535.183.06-*",
        "nvidia-compute-utils-535-server=535.183.06-*",
    ]
    assert result["module_build"] == "prebuilt"
    assert result["kernel_install"] == [
        "nvidia-kernel-common-535-server=535.183.06-*",
        f"linux-modules-nvidia-535-server-open-{UBUNTU_KERNEL}",
    ]
    # Modules for a new kernel would carry whatever driver the archive has then: the kernel
    # metapackages are held with the driver.
    assert result["hold_extra"] == ["linux-generic", "linux-image-generic", "linux-headers-generic"]
    assert result["version_package"] == "libnvidia-compute-535-server"
    assert result["persistenced_user"] == "nvidia-persistenced"
    assert result["secure_boot_key"] == "/var/lib/shim-signed/mok/MOK.der"
    assert (result["hold_mechanism"], result["version_pattern"]) == ("dpkg hold + apt pin", "535.183.06-*")


def test_ubuntu_2204_own_packages_proprietary_dkms() -> None:
    result = plan(
        "Ubuntu-22", source="distribution", version="535", kernel_modules="proprietary", module_build="dkms"
    )
    assert result["kernel_install"] == [f"linux-headers-{UBUNTU_KERNEL}", "nvidia-dkms-535-server=535.*"]
    assert result["install"][0] == "libnvidia-compute-535-server=535.*"
    assert result["hold_extra"] == []


def test_ubuntu_2204_own_fabric_manager() -> None:
    result = plan("Ubuntu-22", source="distribution", version="535.183.06", fabric_manager=True)
    assert result["fabric_manager_packages"] == ["nvidia-fabricmanager-535", "libnvidia-nscq-535"]
    assert nd.fabric_manager_install(result, "535.183.06") == [
        "nvidia-fabricmanager-535=535.183.06-*",
        "libnvidia-nscq-535=535.183.06-*",
    ]


def test_ubuntu_2404_cuda_repo_names_carry_the_branch_until_590() -> None:
    result = plan("Ubuntu-24", version="580.95.05", fabric_manager=True)
    assert result["ok"], result["errors"]
    assert result["install"] == [
        "libnvidia-compute-580=580.95.05-*",
        "nvidia-utils-580=580.95.05-*",
        "nvidia-compute-utils-580=580.95.05-*",
    ]
    assert result["module_build"] == "dkms"
    assert result["kernel_install"] == [f"linux-headers-{UBUNTU_KERNEL}", "nvidia-dkms-580-open=580.95.05-*"]
    assert result["fabric_manager_packages"] == ["nvidia-fabricmanager-580", "libnvidia-nscq-580"]


def test_ubuntu_2404_cuda_repo_names_without_branch_from_590() -> None:
    result = plan("Ubuntu-24", version="590", kernel_modules="proprietary", fabric_manager=True)
    assert result["install"] == [
        "libnvidia-compute=590.*",
        "nvidia-utils=590.*",
        "nvidia-compute-utils=590.*",
    ]
    assert result["kernel_install"][-1] == "nvidia-dkms=590.*"
    assert result["fabric_manager_packages"] == ["nvidia-fabricmanager", "libnvidia-nscq"]
    assert result["version_package"] == "libnvidia-compute"


def test_prebuilt_modules_only_from_ubuntus_own_packages() -> None:
    result = plan("Ubuntu-24", module_build="prebuilt")
    assert result["errors"] == [
        "nvidia_driver_kernel_module_build: prebuilt (signed) modules come with Ubuntu's own packages only; "
        "Ubuntu 24.04 from cuda_repo has 'dkms'"
    ]


# -- Debian 12 ------------------------------------------------------------------------------------


def test_debian_12_own_packages_as_the_molecule_scenario_installs_them() -> None:
    result = plan(
        "Debian-12",
        source="distribution",
        version="535.261.03",
        kernel_modules="proprietary",
        skip_kernel_module=True,
    )
    assert result["ok"], result["errors"]
    assert result["install"] == [
        "nvidia-smi=535.261.03-*",
        "libcuda1=535.261.03-*",
        "libnvidia-ml1=535.261.03-*",
        # Its own version (535.171.04): not pinned to the driver's, held once installed.
        "nvidia-persistenced",
    ]
    assert result["kernel_install"] == [] and result["module_build"] is None
    assert result["persistenced_user"] == "nvpd"
    assert result["version_package"] == "libnvidia-ml1"
    components = ["contrib", "non-free", "non-free-firmware"]
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    assert result["repositories"] == [
        {
            "name": "vllm-fleet-debian-nonfree",
            "uris": ["http://deb.debian.org/debian"],
            "suites": ["bookworm", "bookworm-updates"],
            "components": components,
            "signed_by": keyring,
        },
        {
            "name": "vllm-fleet-debian-nonfree-security",
            "uris": ["http://deb.debian.org/debian-security"],
            "suites": ["bookworm-security"],
            "components": components,
            "signed_by": keyring,
        },
    ]


@pytest.mark.parametrize(
    ("modules", "package"), [("proprietary", "nvidia-kernel-dkms"), ("open", "nvidia-open-kernel-dkms")]
)
def test_debian_12_own_packages_with_dkms(modules: str, package: str) -> None:
    result = plan("Debian-12", source="distribution", version="535", kernel_modules=modules)
    # The running kernel's headers, and the flavour's metapackage for the kernels to come.
    assert result["kernel_install"] == [
        f"linux-headers-{DEBIAN_KERNEL}",
        "linux-headers-amd64",
        f"{package}=535.*",
    ]
    assert result["module_build"] == "dkms"
    assert result["secure_boot_key"] == "/var/lib/dkms/mok.pub"


def test_debian_12_own_packages_are_the_535_series_only() -> None:
    result = plan("Debian-12", source="distribution", version="550.163.01")
    assert result["errors"] == [
        "nvidia_driver_version: Debian 12's own packages carry branch(es) 535 only, not 550; "
        "use nvidia_driver_source: cuda_repo for other branches"
    ]


def test_debian_12_own_packages_have_no_fabric_manager() -> None:
    result = plan("Debian-12", source="distribution", version="535", fabric_manager=True)
    assert not result["ok"]
    assert "has NVSwitches but Debian 12's own packages have no fabric manager" in result["errors"][0]
    assert "nvidia_driver_source: cuda_repo" in result["errors"][0]


def test_debian_12_cuda_repo() -> None:
    result = plan("Debian-12", version="580.95.05", fabric_manager=True)
    assert result["install"] == [
        "nvidia-smi=580.95.05-*",
        "libcuda1=580.95.05-*",
        "libnvidia-ml1=580.95.05-*",
        "nvidia-persistenced=580.95.05-*",
    ]
    assert result["kernel_install"][-1] == "nvidia-kernel-open-dkms=580.95.05-*"
    assert result["fabric_manager_packages"] == ["nvidia-fabricmanager"]
    assert result["repositories"] == []
    older = plan("Debian-12", version="570", kernel_modules="proprietary", fabric_manager=True)
    assert older["fabric_manager_packages"] == ["nvidia-fabricmanager-570"]
    assert older["kernel_install"][-1] == "nvidia-kernel-dkms=570.*"


# -- RHEL / Rocky 9 ------------------------------------------------------------------------------


def test_rhel_9_cuda_repo_open_dkms() -> None:
    result = plan("RedHat-9", version="580.95.05", fabric_manager=True)
    assert result["ok"], result["errors"]
    assert result["package_manager"] == "dnf"
    assert result["install"] == [
        "nvidia-driver-cuda-580.95.05",
        "nvidia-driver-cuda-libs-580.95.05",
        "nvidia-persistenced-580.95.05",
    ]
    assert result["kernel_install"] == [
        f"kernel-devel-{RHEL_KERNEL}",
        "kernel-devel-matched",
        "kmod-nvidia-open-dkms-580.95.05",
    ]
    assert (result["hold_mechanism"], result["version_pattern"]) == ("dnf versionlock", "580.95.05")
    assert result["fabric_manager_packages"] == ["nvidia-fabricmanager"]
    assert nd.fabric_manager_install(result, "580.95.05") == ["nvidia-fabricmanager-580.95.05"]
    assert result["secure_boot_key"] == "/var/lib/dkms/mok.pub"


def test_rhel_9_cuda_repo_proprietary_branch() -> None:
    result = plan("RedHat-9", version="570", kernel_modules="proprietary", fabric_manager=True)
    assert result["install"][0] == "nvidia-driver-cuda-570.*"
    assert result["kernel_install"][-1] == "kmod-nvidia-latest-dkms-570.*"
    assert result["fabric_manager_packages"] == ["nvidia-fabricmanager-570"]
    # With a branch, the fabric manager follows the driver version actually installed.
    assert nd.fabric_manager_install(result, "570.172.08") == ["nvidia-fabricmanager-570-570.172.08"]


def test_rhel_9_has_no_driver_of_its_own() -> None:
    result = plan("RedHat-9", source="distribution")
    assert result["errors"] == [
        "nvidia_driver_source: RHEL/Rocky 9 packages no NVIDIA driver of its own; "
        "use nvidia_driver_source: cuda_repo"
    ]


# -- holds and versions -------------------------------------------------------------------------


def test_hold_pattern_picks_the_nvidia_packages_of_the_recorded_host() -> None:
    installed = fixture("dpkg-packages_debian12-container_nvidia-535.261.03.txt").split()
    assert len(installed) > 150
    assert nd.holds(installed, nd.HOLD_PATTERNS["apt"]) == [
        "glx-alternative-nvidia",
        "libcuda1",
        "libnvidia-cfg1",
        "libnvidia-ml1",
        "libnvidia-pkcs11-openssl3",
        "libnvidia-ptxjitcompiler1",
        "nvidia-alternative",
        "nvidia-installer-cleanup",
        "nvidia-legacy-check",
        "nvidia-persistenced",
        "nvidia-smi",
        "nvidia-support",
    ]


def test_extra_holds_only_where_installed() -> None:
    installed = ["linux-generic", "linux-image-generic", "nvidia-utils-535-server", "libc6"]
    extra = ["linux-generic", "linux-image-generic", "linux-headers-generic"]
    assert nd.holds(installed, nd.HOLD_PATTERNS["apt"], extra) == [
        "linux-generic",
        "linux-image-generic",
        "nvidia-utils-535-server",
    ]
    rpms = ["kmod-nvidia-open-dkms", "nvidia-driver-cuda-libs", "libcuda", "kernel-core", "cuda-drivers"]
    assert nd.holds(rpms, nd.HOLD_PATTERNS["dnf"]) == [
        "cuda-drivers",
        "kmod-nvidia-open-dkms",
        "libcuda",
        "nvidia-driver-cuda-libs",
    ]


@pytest.mark.parametrize(
    ("package_version", "upstream"),
    [
        ("535.261.03-1", "535.261.03"),
        ("535.309.01-0+deb12u1", "535.309.01"),
        ("535.171.04-1~deb12u1", "535.171.04"),
        ("535.183.06-0ubuntu0.22.04.1", "535.183.06"),
        ("3:580.95.05", "580.95.05"),
        ("580.95.05", "580.95.05"),
        ("", None),
        (None, None),
        ("20220217+3~deb12u1", None),  # nvidia-support: not a driver version
    ],
)
def test_upstream_version(package_version: str | None, upstream: str | None) -> None:
    assert nd.upstream_version(package_version) == upstream


def test_installed_version_from_package_facts() -> None:
    debian = plan("Debian-12", source="distribution", version="535")
    packages = {
        "libnvidia-ml1": [{"version": "535.261.03-1"}],
        "nvidia-persistenced": [{"version": "535.171.04-1~deb12u1"}],
    }
    assert nd.installed_driver_version(packages, debian) == "535.261.03"
    assert nd.installed_driver_version({}, debian) is None
    assert nd.installed_driver_version(None, debian) is None


def test_installed_version_survives_a_branch_switch_on_ubuntu() -> None:
    # 550 is asked; 535's packages are what is installed: still a driver, so a change, not an install.
    ubuntu = plan("Ubuntu-22", source="distribution", version="550")
    packages = {"libnvidia-compute-535-server": [{"version": "535.183.06-0ubuntu0.22.04.1"}]}
    installed = nd.installed_driver_version(packages, ubuntu)
    assert installed == "535.183.06"
    assert nd.version_change(installed, "550") == "change"


@pytest.mark.parametrize(
    ("installed", "setting", "change"),
    [
        (None, "535.261.03", "install"),
        ("535.261.03", "535.261.03", "keep"),
        ("535.261.03", "535.309.01", "change"),
        ("535.261.03", "535", "keep"),
        ("535.261.03", "580", "change"),
        (None, "580", "install"),
    ],
)
def test_version_change(installed: str | None, setting: str, change: str) -> None:
    assert nd.version_change(installed, setting) == change


# -- fabric manager -------------------------------------------------------------------------------

# Format examples (not recordings: no NVSwitch system was at hand): an HGX H100 board's 8 GPUs
# (3D controller, class 0x0302) and 4 NVSwitches (other bridge, class 0x0680) next to a host
# bridge and an NVMe drive.
HGX_PCI = "\n".join(
    ["0000:00:00.0 0x8086 0x060000", "0000:0b:00.0 0x144d 0x010802"]
    + [f"0000:{bus}:00.0 0x10de 0x030200" for bus in ("18", "2a", "3a", "5d", "9a", "ab", "ba", "db")]
    + [f"0000:{bus}:00.0 0x10de 0x068000" for bus in ("05", "06", "07", "08")]
)


def test_pci_listing_of_the_recorded_gpu_less_host() -> None:
    found = nd.pci_nvidia_devices(fixture("sysfs-pci_debian12-container_no-nvidia.txt"))
    assert found == {"gpus": [], "nvswitches": []}
    assert nd.fabric_manager_wanted("auto", found) is False


def test_pci_listing_of_an_hgx_board() -> None:
    found = nd.pci_nvidia_devices(HGX_PCI)
    assert len(found["gpus"]) == 8
    assert found["nvswitches"] == ["0000:05:00.0", "0000:06:00.0", "0000:07:00.0", "0000:08:00.0"]
    assert nd.fabric_manager_wanted("auto", found) is True


@pytest.mark.parametrize(
    ("setting", "nvswitches", "wanted"),
    [
        ("auto", ["0000:05:00.0"], True),
        ("auto", [], False),
        (True, [], True),
        ("true", [], True),
        (False, ["0000:05:00.0"], False),
        ("False", ["0000:05:00.0"], False),
    ],
)
def test_fabric_manager_decision(setting: Any, nvswitches: list[str], wanted: bool) -> None:
    assert nd.fabric_manager_wanted(setting, {"gpus": [], "nvswitches": nvswitches}) is wanted


def test_fabric_manager_setting_must_be_auto_true_or_false() -> None:
    with pytest.raises(ValueError, match="auto, true or false"):
        nd.fabric_manager_wanted("sometimes", {"nvswitches": []})


def test_fabric_manager_at_exactly_the_installed_driver_version() -> None:
    # A branch setting: the fabric manager takes the version the driver got, not "any 580".
    result = plan("Ubuntu-24", version="580", fabric_manager=True)
    assert nd.fabric_manager_install(result, "580.95.05") == [
        "nvidia-fabricmanager-580=580.95.05-*",
        "libnvidia-nscq-580=580.95.05-*",
    ]
    # Before the driver is installed (check mode on a new host) the setting's own pattern.
    assert nd.fabric_manager_install(result, None) == [
        "nvidia-fabricmanager-580=580.*",
        "libnvidia-nscq-580=580.*",
    ]
    assert nd.fabric_manager_install(plan("Ubuntu-24"), "580.95.05") == []


# -- reboot needed --------------------------------------------------------------------------------


def test_reboot_needed_when_the_loaded_module_differs_from_userspace() -> None:
    state = nd.reboot_decision("580.173.02", "580.178.01")
    assert state["reboot_needed"] is True
    assert state["reason"].startswith(
        "the loaded kernel module is 580.173.02, the installed userspace driver 580.178.01"
    )


def test_no_reboot_when_module_and_userspace_match() -> None:
    state = nd.reboot_decision("535.261.03", "535.261.03", gpu_status="ok")
    assert state == {
        "kernel_module_version": "535.261.03",
        "userspace_version": "535.261.03",
        "reboot_needed": False,
        "reason": "the loaded kernel module and the userspace driver are both 535.261.03",
    }


def test_reboot_needed_after_a_first_install() -> None:
    state = nd.reboot_decision(None, "580.95.05")
    assert state["reboot_needed"] is True
    assert "no nvidia kernel module is loaded" in state["reason"]


def test_reboot_needed_on_a_reported_mismatch() -> None:
    assert nd.reboot_decision("580.95.05", "580.95.05", gpu_status="driver_mismatch")["reboot_needed"] is True


def test_no_reboot_without_a_driver_or_without_kernel_management() -> None:
    assert nd.reboot_decision(None, None)["reboot_needed"] is False
    skipped = nd.reboot_decision(None, "535.261.03", skip_kernel_module=True)
    assert skipped["reboot_needed"] is False
    assert "nvidia_driver_skip_kernel_module" in skipped["reason"]


def test_reboot_decision_from_a_recorded_half_upgraded_host() -> None:
    """gpu_facts on the recorded TrueNAS host (module 580.173.02 loaded, NVML 580.178): reboot."""
    mismatch = (SMI_FIXTURES / "failure_driver-library-mismatch_nvml-580.178.txt").read_text()
    proc = (SMI_FIXTURES / "proc-driver-nvidia-version_580.173.02.txt").read_text()
    facts = nvidia_smi.gather(
        "nvidia-smi",
        lambda argv: (18, mismatch, ""),
        lambda path: proc if path == "/proc/driver/nvidia/version" else None,
    )
    state = nd.reboot_decision(facts["kernel_module_version"], "580.178.01", gpu_status=facts["status"])
    assert state["reboot_needed"] is True
    assert "580.173.02" in state["reason"]


def test_recorded_container_nvidia_smi_gives_zero_gpus_and_a_refused_cuda_instance() -> None:
    answer = fixture("nvidia-smi_debian12-container_535.261.03_query-gpu.txt")
    assert answer == "Failed to initialize NVML: Unknown Error\n"
    facts = nvidia_smi.gather("/usr/bin/nvidia-smi", lambda argv: (255, answer, ""), lambda path: None)
    assert (facts["count"], facts["devices"], facts["status"]) == (0, [], "error")
    state = nd.reboot_decision(facts["kernel_module_version"], "535.261.03", skip_kernel_module=True)
    assert state["reboot_needed"] is False
    spec = {"name": "gpu", "model": "m", "revision": "r", "port": 8000, "device": "cuda", "gpus": [0]}
    [present] = [check for check in check_gpus(spec, facts) if check["check"] == "gpus_present"]
    assert present["status"] == "fail"
    assert present["detail"].startswith("device cuda needs NVIDIA GPUs, the host has none")
    assert "Failed to initialize NVML: Unknown Error" in present["detail"]


# -- Secure Boot ----------------------------------------------------------------------------------


def _efivar(value: int) -> str:
    # 4 bytes of attributes (non-volatile, boot and runtime access: 0x06 0x00 0x00 0x00), then the value.
    return base64.b64encode(bytes([6, 0, 0, 0, value])).decode()


@pytest.mark.parametrize(
    ("efi", "mokutil", "efivar", "state"),
    [
        (True, "SecureBoot enabled\n", None, "enabled"),
        (True, "SecureBoot disabled\n", None, "disabled"),
        (True, "SecureBoot disabled\nPlatform is in Setup Mode\n", None, "disabled"),
        (True, "EFI variables are not supported on this system\n", None, "unsupported"),
        (True, "This system doesn't support Secure Boot\n", None, "unsupported"),
        (False, None, None, "unsupported"),
        (True, "", _efivar(1), "enabled"),
        (True, "", _efivar(0), "disabled"),
        (True, "", "not base64!", "unknown"),
        (True, None, None, "unknown"),
    ],
)
def test_secure_boot_state(efi: bool, mokutil: str | None, efivar: str | None, state: str) -> None:
    assert nd.secure_boot_state(efi, mokutil, efivar) == state


def test_mok_key_enrolment_from_mokutil() -> None:
    assert nd.mok_key_enrolled("/var/lib/dkms/mok.pub is already enrolled\n") is True
    assert nd.mok_key_enrolled("/var/lib/dkms/mok.pub is not enrolled\n") is False
    assert nd.mok_key_enrolled("") is None


def test_secure_boot_stops_unsigned_dkms_modules_with_the_choices() -> None:
    decision = nd.secure_boot_decision("enabled", "dkms", key_path="/var/lib/dkms/mok.pub", key_exists=False)
    assert decision["ok"] is False
    reason = decision["reason"]
    assert "Secure Boot is enabled" in reason and "does not exist yet" in reason
    assert "mokutil --import /var/lib/dkms/mok.pub" in reason
    assert "nvidia_driver_kernel_module_build: prebuilt" in reason
    assert "turn Secure Boot off" in reason
    not_enrolled = nd.secure_boot_decision(
        "enabled", "dkms", key_path="/var/lib/dkms/mok.pub", key_exists=True, key_enrolled=False
    )
    assert not not_enrolled["ok"] and "which is not enrolled" in not_enrolled["reason"]


@pytest.mark.parametrize(
    ("state", "build", "exists", "enrolled"),
    [
        ("enabled", "dkms", True, True),
        ("enabled", "prebuilt", False, None),
        ("disabled", "dkms", False, None),
        ("unsupported", "dkms", False, None),
    ],
)
def test_secure_boot_lets_loadable_modules_through(
    state: str, build: str, exists: bool, enrolled: bool | None
) -> None:
    decision = nd.secure_boot_decision(state, build, key_path="/k", key_exists=exists, key_enrolled=enrolled)
    assert decision["ok"] is True, decision


def test_secure_boot_unknown_state_stops_and_skipped_kernel_passes() -> None:
    assert nd.secure_boot_decision("unknown", "dkms", key_path="/k")["ok"] is False
    assert nd.secure_boot_decision("enabled", None, key_path="/k")["ok"] is True
    assert nd.secure_boot_decision("enabled", "dkms", key_path="/k", skip_kernel_module=True)["ok"] is True


# -- DKMS -----------------------------------------------------------------------------------------

# Format examples of `dkms status` (dkms 3 on Debian 12, dkms 2 on Ubuntu 22.04), not recordings.
DKMS3 = (
    "nvidia-current/535.261.03, 6.1.0-28-amd64, x86_64: installed\n"
    "nvidia-current/535.261.03, 6.1.0-27-amd64, x86_64: built\n"
)
DKMS2 = "nvidia-srv, 535.183.06, 5.15.0-105-generic, x86_64: installed\n"


def test_dkms_built_for_the_running_kernel() -> None:
    assert nd.dkms_built(DKMS3, "535.261.03", "6.1.0-28-amd64")
    assert nd.dkms_built(DKMS2, "535.183.06", "5.15.0-105-generic")


def test_dkms_not_built() -> None:
    assert not nd.dkms_built(DKMS3, "535.261.03", "6.1.0-27-amd64")  # built, not installed
    assert not nd.dkms_built(DKMS3, "535.309.01", "6.1.0-28-amd64")
    assert not nd.dkms_built("", "535.261.03", "6.1.0-28-amd64")
    assert not nd.dkms_built(DKMS3, None, "6.1.0-28-amd64")


# -- CUDA toolkit ---------------------------------------------------------------------------------


def toolkit(platform: str, **overrides: Any) -> dict[str, Any]:
    base = {key: settings(platform)[key] for key in ("platform", "architecture", "codename", "cuda_repo_url")}
    base.update(
        debian_mirror="http://deb.debian.org/debian",
        debian_security_mirror="http://deb.debian.org/debian-security",
    )
    return cuda_toolkit.toolkit_plan({**base, "source": "cuda_repo", "version": "12.8", **overrides})


@pytest.mark.parametrize(
    ("platform", "slug"),
    [
        ("Ubuntu-22", "ubuntu2204"),
        ("Ubuntu-24", "ubuntu2404"),
        ("Debian-12", "debian12"),
        ("RedHat-9", "rhel9"),
    ],
)
def test_toolkit_from_the_cuda_repository(platform: str, slug: str) -> None:
    result = toolkit(platform)
    assert result["ok"], result["errors"]
    assert result["packages"] == ["cuda-toolkit-12-8"]
    assert (result["home"], result["bin_dir"], result["lib_dir"]) == (
        "/usr/local/cuda-12.8",
        "/usr/local/cuda-12.8/bin",
        "/usr/local/cuda-12.8/lib64",
    )
    assert result["cuda_repository"]["url"] == f"{CUDA}/{slug}/x86_64/"


@pytest.mark.parametrize(
    ("platform", "version"), [("Ubuntu-22", "11.5"), ("Ubuntu-24", "12.0"), ("Debian-12", "11.8")]
)
def test_toolkit_from_the_distribution(platform: str, version: str) -> None:
    result = toolkit(platform, source="distribution", version=version)
    assert result["ok"], result["errors"]
    assert result["packages"] == ["nvidia-cuda-toolkit"]
    assert (result["home"], result["bin_dir"], result["lib_dir"]) == ("/usr", None, None)
    assert bool(result["repositories"]) is (platform == "Debian-12")


def test_toolkit_debian_packages_one_version_only() -> None:
    result = toolkit("Debian-12", source="distribution", version="12.4")
    assert result["errors"] == [
        "cuda_toolkit_version: Debian 12 packages CUDA 11.8 only (nvidia-cuda-toolkit), not 12.4; "
        "use cuda_toolkit_version: '11.8' or cuda_toolkit_source: cuda_repo"
    ]


def test_toolkit_refusals() -> None:
    assert "RHEL/Rocky 9 packages no CUDA toolkit" in toolkit("RedHat-9", source="distribution")["errors"][0]
    assert toolkit("Ubuntu-24", version="12")["errors"] == [
        "cuda_toolkit_version must be a CUDA major.minor version such as '12.8', got '12'"
    ]
    assert toolkit("Ubuntu-24", source="conda")["errors"] == [
        "cuda_toolkit_source must be one of ['distribution', 'cuda_repo'], got 'conda'"
    ]


def test_toolkit_against_the_driver() -> None:
    assert cuda_toolkit.driver_check("12.8", "535.261.03") == {
        "ok": True,
        "checked": True,
        "reason": "driver 535.261.03 runs CUDA 12.x (>= 525.60.13)",
    }
    too_old = cuda_toolkit.driver_check("13.0", "570.172.08")
    assert too_old["ok"] is False
    assert too_old["reason"].startswith(
        "CUDA 13.0 needs NVIDIA driver 580.65.06 or newer, the host runs 570.172.08"
    )
    assert cuda_toolkit.driver_check("12.8", None) == {
        "ok": True,
        "checked": False,
        "reason": "no NVIDIA driver answered: driver not checked",
    }


# -- the roles' settings --------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["nvidia_driver", "cuda_toolkit"])
def test_argument_specs_list_exactly_the_defaults(role: str) -> None:
    defaults = yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    assert sorted(defaults) == sorted(options)
    assert all(name.startswith(f"{role}_") for name in defaults)
    for name, value in defaults.items():
        if "{{" not in str(value):
            assert options[name]["default"] == value, name


def test_filters_are_registered() -> None:
    filters = FilterModule().filters()
    assert filters["nvidia_driver_plan"] is nd.driver_plan
    assert filters["cuda_toolkit_plan"] is cuda_toolkit.toolkit_plan
    assert filters["nvidia_reboot_decision"](None, "580.95.05", False, None)["reboot_needed"] is True
