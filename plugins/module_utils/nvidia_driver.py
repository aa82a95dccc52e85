"""The NVIDIA driver's per-distribution choices and the decisions around it, as pure functions.

The `nvidia_driver` and `cuda_toolkit` roles call these through filters
(plugins/filter/nvidia_driver.py); the unit tests call them directly. Nothing here runs a
command or reads a file: the roles gather the inputs (Ansible facts, the gpu_facts module,
package facts, sysfs, mokutil, dkms) and these functions decide.

- `driver_plan`: packages, repositories, version pins and the hold mechanism for Ubuntu 22.04
  and 24.04, Debian 12 and RHEL/Rocky 9, from the distribution's own packages or NVIDIA's CUDA
  repository, with open or proprietary kernel modules, DKMS-built or prebuilt.
- `pci_nvidia_devices`, `fabric_manager_wanted`: NVSwitches on the PCI bus decide the fabric
  manager.
- `installed_driver_version`, `version_change`: what is installed against what is asked.
- `reboot_decision`: loaded kernel module against installed userspace (the "reboot needed" fact).
- `secure_boot_state`, `mok_key_enrolled`, `secure_boot_decision`: stop before installing
  modules that Secure Boot would refuse to load.
- `dkms_built`: DKMS built the module for the running kernel.

The package layouts of NVIDIA's CUDA repository follow NVIDIA's driver installation guide
(R580): they cannot be reached from the project's machines, so only these choices are tested,
not the packages themselves. Debian 12's own packages are installed for real by the Molecule
scenario `gpu_driver`.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

SOURCES = ("distribution", "cuda_repo")
KERNEL_MODULES = ("open", "proprietary")
MODULE_BUILDS = ("auto", "dkms", "prebuilt")

# Platform key (see `platform_key`) -> what differs between the supported distributions.
PLATFORMS: dict[str, dict[str, str]] = {
    "Ubuntu-22": {"kind": "ubuntu", "manager": "apt", "cuda_slug": "ubuntu2204", "name": "Ubuntu 22.04"},
    "Ubuntu-24": {"kind": "ubuntu", "manager": "apt", "cuda_slug": "ubuntu2404", "name": "Ubuntu 24.04"},
    "Debian-12": {"kind": "debian", "manager": "apt", "cuda_slug": "debian12", "name": "Debian 12"},
    "RedHat-9": {"kind": "rhel", "manager": "dnf", "cuda_slug": "rhel9", "name": "RHEL/Rocky 9"},
}
# Distributions of the RedHat family treated as RHEL.
_RHEL_LIKE = ("RedHat", "Rocky")

# NVIDIA's CUDA repository: one directory per distribution and architecture, signed with one
# key for the .deb repositories (3bf863cc, fingerprint EB693B3035CD5710E231E123A4B469963BF863CC)
# and another for the RHEL ones (D42D0685); each lies in the repository's directory.
CUDA_REPO_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "sbsa", "arm64": "sbsa"}
CUDA_REPO_KEYS = {"apt": "3bf863cc.pub", "dnf": "D42D0685.pub"}

# Debian 12 ships the 535 series only (contrib/non-free, security updates in bookworm-security).
DEBIAN_BRANCHES = ("535",)
# NVIDIA's Ubuntu packages drop the branch from their names from this branch on
# (libnvidia-compute-580 -> libnvidia-compute); the branch is then chosen by the version pin.
UBUNTU_UNBRANCHED_FROM = 590
# The fabric manager of NVIDIA's Debian and RHEL repositories is one package from this branch
# on (nvidia-fabricmanager), one per branch before (nvidia-fabricmanager-570).
FABRIC_MANAGER_UNBRANCHED_FROM = 580
# Open kernel modules exist from R515.
OPEN_MODULES_FROM = 515

# Installed packages matching these are held (apt) or version-locked (dnf): the whole driver,
# including the dependencies that come with it (nvidia-alternative, firmware-nvidia-gsp, ...).
HOLD_PATTERNS = {"apt": r"nvidia|^libcuda|^libxnvctrl|^cuda-drivers", "dnf": r"nvidia|^libcuda|^cuda-drivers"}

# Any installed package that tells the userspace driver's version, whatever the branch in its
# name (switching branches on Ubuntu changes the package names).
VERSION_PACKAGE_PATTERNS = {
    "ubuntu": r"^libnvidia-compute(-\d+)?(-server)?$",
    "debian": r"^libnvidia-ml1$",
    "rhel": r"^nvidia-driver-cuda-libs$",
}

# DKMS's signing key: DKMS signs the modules it builds with it; Secure Boot loads them only when
# the key is enrolled as a Machine Owner Key.
DKMS_SIGNING_KEYS = {
    "debian": "/var/lib/dkms/mok.pub",
    "ubuntu": "/var/lib/shim-signed/mok/MOK.der",
    "rhel": "/var/lib/dkms/mok.pub",
}
# The EFI variable behind `mokutil --sb-state` (4 attribute bytes, then 1 = enabled).
SECURE_BOOT_EFIVAR = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"

NVIDIA_PCI_VENDOR = "0x10de"
# PCI classes: 0x0300 VGA controller, 0x0302 3D controller (datacenter GPUs), 0x0680 other
# bridge (NVSwitch).
_GPU_CLASSES = ("0x0300", "0x0302")
_NVSWITCH_CLASS = "0x0680"

_BRANCH = re.compile(r"^(?P<branch>\d{3,})$")
_EXACT = re.compile(r"^(?P<branch>\d{3,})\.\d+(?:\.\d+)?$")
_KERNEL_FLAVOUR = re.compile(r"^\d+\.\d+\.\d+-\d+-(?P<flavour>[a-z0-9-]+)$")
_UPSTREAM = re.compile(r"^(?:\d+:)?(?P<upstream>\d+(?:\.\d+)+)")


def platform_key(distribution: str, major_version: str | int, os_family: str) -> str:
    """`Debian-12`, `Ubuntu-22`, `RedHat-9` (RHEL and Rocky) from Ansible facts.

    Returns "<distribution>-<major>" for anything else; `driver_plan` then says it is unsupported.
    """
    major = str(major_version)
    if os_family == "RedHat" and distribution in _RHEL_LIKE:
        return f"RedHat-{major}"
    return f"{distribution}-{major}"


def parse_version_setting(value: str) -> dict[str, str | None]:
    """`nvidia_driver_version`: a branch ("580") or an exact version ("580.95.05").

    Returns {branch, version} (version None for a branch alone). Raises ValueError otherwise.
    """
    text = str(value).strip()
    for pattern, exact in ((_BRANCH, False), (_EXACT, True)):
        match = pattern.match(text)
        if match:
            return {"branch": match.group("branch"), "version": text if exact else None}
    raise ValueError(
        f"nvidia_driver_version must be a driver branch such as '580' or an exact version such as "
        f"'580.95.05', got {value!r}"
    )


def cuda_repository(platform: str, architecture: str, base_url: str) -> dict[str, Any]:
    """NVIDIA's CUDA repository for a platform: name, description, URL and signing key URL.

    Raises ValueError for a platform or architecture NVIDIA has no repository for here.
    """
    if platform not in PLATFORMS:
        raise ValueError(f"no CUDA repository for {platform}")
    arch = CUDA_REPO_ARCH.get(architecture)
    if arch is None:
        raise ValueError(
            f"no CUDA repository for architecture {architecture!r}; known: {sorted(CUDA_REPO_ARCH)}"
        )
    info = PLATFORMS[platform]
    url = f"{base_url.rstrip('/')}/{info['cuda_slug']}/{arch}/"
    return {
        "name": "vllm-fleet-cuda",
        "description": f"NVIDIA CUDA repository ({info['cuda_slug']}/{arch})",
        "url": url,
        "key_url": url + CUDA_REPO_KEYS[info["manager"]],
    }


def debian_nonfree_sources(codename: str, mirror: str, security_mirror: str) -> list[dict[str, Any]]:
    """Debian's contrib, non-free and non-free-firmware components (deb822 sources).

    Only the components the NVIDIA packages live in are added (main is already configured on
    any Debian host), for the release, its updates and its security updates: Debian publishes
    the driver's security fixes in <codename>-security.
    """
    components = ["contrib", "non-free", "non-free-firmware"]
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    return [
        {
            "name": "vllm-fleet-debian-nonfree",
            "uris": [mirror],
            "suites": [codename, f"{codename}-updates"],
            "components": components,
            "signed_by": keyring,
        },
        {
            "name": "vllm-fleet-debian-nonfree-security",
            "uris": [security_mirror],
            "suites": [f"{codename}-security"],
            "components": components,
            "signed_by": keyring,
        },
    ]


def kernel_header_packages(kind: str, kernel: str) -> list[str]:
    """Headers DKMS needs: for the running kernel, and for the kernels to come.

    Debian's kernel metapackage brings no headers: the flavour's headers metapackage is added
    (linux-headers-amd64). Ubuntu's kernel metapackages (linux-generic, linux-aws, ...) bring
    theirs already. RHEL: kernel-devel-matched installs kernel-devel with every kernel.
    """
    if kind == "rhel":
        return [f"kernel-devel-{kernel}", "kernel-devel-matched"]
    packages = [f"linux-headers-{kernel}"]
    flavour = _KERNEL_FLAVOUR.match(kernel)
    if kind == "debian" and flavour:
        packages.append(f"linux-headers-{flavour.group('flavour')}")
    return packages


def _ubuntu_names(source: str, branch: int, open_modules: bool) -> dict[str, Any]:
    if source == "distribution":
        suffix = f"{branch}-server"
        return {
            "userspace": [
                f"libnvidia-compute-{suffix}",
                f"nvidia-utils-{suffix}",
                f"nvidia-compute-utils-{suffix}",
            ],
            "dkms": [f"nvidia-dkms-{suffix}" + ("-open" if open_modules else "")],
            "prebuilt_common": [f"nvidia-kernel-common-{suffix}"],
            "prebuilt_module": f"linux-modules-nvidia-{suffix}" + ("-open" if open_modules else ""),
            "fabric_manager": [f"nvidia-fabricmanager-{branch}", f"libnvidia-nscq-{branch}"],
            "version_package": f"libnvidia-compute-{suffix}",
        }
    tag = "" if branch >= UBUNTU_UNBRANCHED_FROM else f"-{branch}"
    return {
        "userspace": [f"libnvidia-compute{tag}", f"nvidia-utils{tag}", f"nvidia-compute-utils{tag}"],
        "dkms": [f"nvidia-dkms{tag}" + ("-open" if open_modules else "")],
        "fabric_manager": [f"nvidia-fabricmanager{tag}", f"libnvidia-nscq{tag}"],
        "version_package": f"libnvidia-compute{tag}",
    }


def _fabric_manager_name(branch: int) -> str:
    return (
        "nvidia-fabricmanager"
        if branch >= FABRIC_MANAGER_UNBRANCHED_FROM
        else f"nvidia-fabricmanager-{branch}"
    )


def _debian_names(source: str, branch: int, open_modules: bool) -> dict[str, Any]:
    userspace = ["nvidia-smi", "libcuda1", "libnvidia-ml1"]
    if source == "distribution":
        # Debian's nvidia-persistenced is its own source package with its own version
        # (535.171.04 next to driver 535.261.03): installed unpinned, then held.
        return {
            "userspace": userspace,
            "unpinned": ["nvidia-persistenced"],
            "dkms": ["nvidia-open-kernel-dkms" if open_modules else "nvidia-kernel-dkms"],
            "fabric_manager": [],
            "version_package": "libnvidia-ml1",
        }
    return {
        "userspace": [*userspace, "nvidia-persistenced"],
        "dkms": ["nvidia-kernel-open-dkms" if open_modules else "nvidia-kernel-dkms"],
        "fabric_manager": [_fabric_manager_name(branch)],
        "version_package": "libnvidia-ml1",
    }


def _rhel_names(branch: int, open_modules: bool) -> dict[str, Any]:
    return {
        "userspace": ["nvidia-driver-cuda", "nvidia-driver-cuda-libs", "nvidia-persistenced"],
        "dkms": ["kmod-nvidia-open-dkms" if open_modules else "kmod-nvidia-latest-dkms"],
        "fabric_manager": [_fabric_manager_name(branch)],
        "version_package": "nvidia-driver-cuda-libs",
    }


def version_pattern(manager: str, branch: str, version: str | None) -> str:
    """The version glob every pinned package is installed and pinned at.

    apt: "580.95.05-*" (any Debian revision of that upstream version) or "580.*" (the branch);
    dnf: "580.95.05" or "580.*".
    """
    if version is None:
        return f"{branch}.*"
    return f"{version}-*" if manager == "apt" else version


def package_spec(manager: str, name: str, pattern: str) -> str:
    """`name=pattern` for apt, `name-pattern` for dnf."""
    return f"{name}={pattern}" if manager == "apt" else f"{name}-{pattern}"


def platform_and_source_errors(role: str, platform: str, source: str, errors: list[str]) -> bool:
    """Add the errors of an unsupported host or an unknown package source; False when the
    platform is unsupported (nothing else can be planned then)."""
    if platform not in PLATFORMS:
        supported = ", ".join(info["name"] for info in PLATFORMS.values())
        errors.append(f"{role} supports {supported}; this host is {platform}")
        return False
    if source not in SOURCES:
        errors.append(f"{role}_source must be one of {list(SOURCES)}, got {source!r}")
    return True


def driver_plan(settings: Mapping[str, Any]) -> dict[str, Any]:
    """What the nvidia_driver role installs, pins and holds on one host.

    `settings` keys: platform (see `platform_key`), source, version, kernel_modules,
    module_build, fabric_manager (bool, already decided), skip_kernel_module, kernel (release of
    the running kernel), architecture, codename (Debian), cuda_repo_url, debian_mirror,
    debian_security_mirror.

    Returns the plan with `ok` and `errors` (each naming the setting at fault and the choices);
    the other keys are filled as far as the settings allow.
    """
    errors: list[str] = []
    platform = str(settings.get("platform", ""))
    source = str(settings.get("source", ""))
    modules = str(settings.get("kernel_modules", ""))
    build = str(settings.get("module_build", "auto"))
    skip_kernel = bool(settings.get("skip_kernel_module", False))
    want_fm = bool(settings.get("fabric_manager", False))
    plan: dict[str, Any] = {
        "ok": False,
        "errors": errors,
        "platform": platform,
        "source": source,
        "package_manager": None,
        "branch": None,
        "version": None,
        "version_pattern": None,
        "repositories": [],
        "cuda_repository": None,
        "install": [],
        "kernel_install": [],
        "fabric_manager_packages": [],
        "version_package": None,
        "version_package_pattern": None,
        "hold_mechanism": None,
        "hold_pattern": None,
        "hold_extra": [],
        "module_build": None,
        "secure_boot_key": None,
        "persistenced_user": None,
    }
    if not platform_and_source_errors("nvidia_driver", platform, source, errors):
        return plan
    if modules not in KERNEL_MODULES:
        errors.append(f"nvidia_driver_kernel_modules must be one of {list(KERNEL_MODULES)}, got {modules!r}")
    if build not in MODULE_BUILDS:
        errors.append(
            f"nvidia_driver_kernel_module_build must be one of {list(MODULE_BUILDS)}, got {build!r}"
        )
    try:
        version_setting = parse_version_setting(str(settings.get("version", "")))
    except ValueError as exc:
        errors.append(str(exc))
    if errors:
        return plan

    info = PLATFORMS[platform]
    kind, manager = info["kind"], info["manager"]
    branch_text = str(version_setting["branch"])
    branch, version = int(branch_text), version_setting["version"]
    open_modules = modules == "open"
    plan.update(
        package_manager=manager,
        branch=branch_text,
        version=version,
        hold_mechanism="dpkg hold + apt pin" if manager == "apt" else "dnf versionlock",
        hold_pattern=HOLD_PATTERNS[manager],
        version_package_pattern=VERSION_PACKAGE_PATTERNS[kind],
        secure_boot_key=DKMS_SIGNING_KEYS[kind],
        persistenced_user="nvpd" if kind == "debian" else "nvidia-persistenced",
    )

    if open_modules and branch < OPEN_MODULES_FROM:
        errors.append(
            f"nvidia_driver_kernel_modules: open kernel modules exist from branch {OPEN_MODULES_FROM} on; "
            f"branch {branch} needs 'proprietary'"
        )
    if source == "distribution" and kind == "rhel":
        errors.append(
            f"nvidia_driver_source: {info['name']} packages no NVIDIA driver of its own; "
            "use nvidia_driver_source: cuda_repo"
        )
    if source == "distribution" and kind == "debian" and branch_text not in DEBIAN_BRANCHES:
        errors.append(
            f"nvidia_driver_version: {info['name']}'s own packages carry branch(es) "
            f"{', '.join(DEBIAN_BRANCHES)} only, not {branch}; use nvidia_driver_source: cuda_repo "
            f"for other branches"
        )
    if errors:
        return plan

    if kind == "ubuntu":
        names = _ubuntu_names(source, branch, open_modules)
    elif kind == "debian":
        names = _debian_names(source, branch, open_modules)
    else:
        names = _rhel_names(branch, open_modules)

    resolved_build = build
    if build == "auto":
        resolved_build = "prebuilt" if "prebuilt_module" in names else "dkms"
    if resolved_build == "prebuilt" and "prebuilt_module" not in names:
        errors.append(
            f"nvidia_driver_kernel_module_build: prebuilt (signed) modules come with Ubuntu's own packages "
            f"only; {info['name']} from {source} has 'dkms'"
        )
    if want_fm and not names["fabric_manager"]:
        errors.append(
            f"nvidia_driver_fabric_manager: this host has NVSwitches but {info['name']}'s own packages "
            "have no fabric manager; use nvidia_driver_source: cuda_repo (or set "
            "nvidia_driver_fabric_manager: false if the NVSwitches are not used)"
        )
    if errors:
        return plan

    pattern = version_pattern(manager, branch_text, version)
    kernel = str(settings.get("kernel", ""))
    install = [package_spec(manager, name, pattern) for name in names["userspace"]]
    install += list(names.get("unpinned", []))
    kernel_install: list[str] = []
    hold_extra: list[str] = []
    if not skip_kernel:
        if resolved_build == "dkms":
            kernel_install = kernel_header_packages(kind, kernel)
            kernel_install += [package_spec(manager, name, pattern) for name in names["dkms"]]
        else:
            # Canonical's signed modules for the running kernel; their package version is the
            # kernel's, not the driver's. A new kernel would bring modules of whatever driver the
            # archive has then, so the kernel metapackages are held with the driver.
            flavour_match = _KERNEL_FLAVOUR.match(kernel)
            flavour = flavour_match.group("flavour") if flavour_match else "generic"
            kernel_install = [package_spec(manager, name, pattern) for name in names["prebuilt_common"]]
            kernel_install.append(f"{names['prebuilt_module']}-{kernel}")
            hold_extra = [f"linux-{flavour}", f"linux-image-{flavour}", f"linux-headers-{flavour}"]

    repositories: list[dict[str, Any]] = []
    cuda_repo = None
    if source == "cuda_repo":
        cuda_repo = cuda_repository(
            platform, str(settings.get("architecture", "")), str(settings.get("cuda_repo_url", ""))
        )
    elif kind == "debian":
        repositories = debian_nonfree_sources(
            str(settings.get("codename", "")),
            str(settings.get("debian_mirror", "")),
            str(settings.get("debian_security_mirror", "")),
        )

    plan.update(
        ok=True,
        version_pattern=pattern,
        repositories=repositories,
        cuda_repository=cuda_repo,
        install=install,
        kernel_install=kernel_install,
        fabric_manager_packages=list(names["fabric_manager"]) if want_fm else [],
        version_package=names["version_package"],
        hold_extra=hold_extra,
        module_build=None if skip_kernel else resolved_build,
    )
    return plan


def fabric_manager_install(plan: Mapping[str, Any], installed_version: str | None) -> list[str]:
    """The fabric manager's packages at exactly the installed driver's version.

    With a branch setting the driver's version is only known once it is installed; before that
    (check mode on a new host) the plan's own pattern stands in.
    """
    manager = str(plan.get("package_manager"))
    pattern = version_pattern(manager, str(plan.get("branch")), installed_version or plan.get("version"))
    return [package_spec(manager, name, pattern) for name in plan.get("fabric_manager_packages") or []]


def pci_nvidia_devices(text: str) -> dict[str, list[str]]:
    """NVIDIA GPUs and NVSwitches from "<slot> <vendor> <class>" lines (read from sysfs).

    Each line is a PCI device as /sys/bus/pci/devices/<slot>/{vendor,class} give it, e.g.
    "0000:8d:00.0 0x10de 0x068000" for an NVSwitch.
    """
    found: dict[str, list[str]] = {"gpus": [], "nvswitches": []}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or parts[1].lower() != NVIDIA_PCI_VENDOR:
            continue
        slot, pci_class = parts[0], parts[2].lower()
        if pci_class.startswith(_GPU_CLASSES):
            found["gpus"].append(slot)
        elif pci_class.startswith(_NVSWITCH_CLASS):
            found["nvswitches"].append(slot)
    return found


def fabric_manager_wanted(setting: Any, pci: Mapping[str, list[str]]) -> bool:
    """`nvidia_driver_fabric_manager`: true/false as given, `auto` when NVSwitches are present."""
    if isinstance(setting, bool):
        return setting
    text = str(setting).strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0"):
        return False
    if text == "auto":
        return bool(pci.get("nvswitches"))
    raise ValueError(f"nvidia_driver_fabric_manager must be auto, true or false, got {setting!r}")


def upstream_version(package_version: str | None) -> str | None:
    """The driver version inside a package version: "535.261.03-1" -> "535.261.03".

    Drops an epoch ("3:580.95.05") and the Debian/RPM revision. None for None or no version.
    """
    if not package_version:
        return None
    match = _UPSTREAM.match(str(package_version).strip())
    return match.group("upstream") if match else None


def installed_driver_version(packages: Mapping[str, Any] | None, plan: Mapping[str, Any]) -> str | None:
    """The installed userspace driver version, from `ansible_facts.packages` (package_facts).

    Read from the plan's `version_package`, else from any installed package matching its
    `version_package_pattern` (another branch's package, before a branch change).
    """
    if not packages:
        return None
    names = [plan.get("version_package")]
    pattern = plan.get("version_package_pattern")
    if pattern:
        names += sorted(name for name in packages if re.search(str(pattern), name))
    for name in names:
        entries = packages.get(name) if name else None
        if entries:
            return upstream_version(str(entries[0].get("version", "")))
    return None


def version_change(installed: str | None, setting: str) -> str:
    """What `nvidia_driver_version` asks of a host: "install", "keep" or "change".

    A branch setting keeps any installed version of that branch (the holds keep it there).
    """
    wanted = parse_version_setting(setting)
    if installed is None:
        return "install"
    if wanted["version"] is not None:
        return "keep" if installed == wanted["version"] else "change"
    return "keep" if installed.split(".")[0] == wanted["branch"] else "change"


def holds(installed_names: Iterable[str], pattern: str, extra: Iterable[str] = ()) -> list[str]:
    """Installed packages to hold or lock: those matching the driver's pattern, plus `extra`
    (kernel metapackages with prebuilt modules) where installed. Sorted, no duplicates."""
    names = set(installed_names)
    matcher = re.compile(pattern)
    chosen = {name for name in names if matcher.search(name)}
    chosen.update(name for name in extra if name in names)
    return sorted(chosen)


def reboot_decision(
    kernel_module_version: str | None,
    userspace_version: str | None,
    *,
    skip_kernel_module: bool = False,
    gpu_status: str | None = None,
) -> dict[str, Any]:
    """The "reboot needed" fact: does the loaded kernel module match the installed userspace?

    `kernel_module_version` is gpu_facts' `kernel_module_version` (/proc/driver/nvidia/version),
    `userspace_version` the installed driver packages' version, `gpu_status` gpu_facts' status.
    """
    state = {
        "kernel_module_version": kernel_module_version,
        "userspace_version": userspace_version,
        "reboot_needed": False,
        "reason": "",
    }
    if skip_kernel_module:
        state["reason"] = (
            "kernel module not managed on this host (nvidia_driver_skip_kernel_module): nothing to reload"
        )
    elif userspace_version is None:
        state["reason"] = "no NVIDIA driver installed"
    elif kernel_module_version is None:
        state["reboot_needed"] = True
        state["reason"] = (
            f"driver {userspace_version} is installed but no nvidia kernel module is loaded; "
            "a reboot loads it (with nouveau blacklisted)"
        )
    elif kernel_module_version != userspace_version:
        state["reboot_needed"] = True
        state["reason"] = (
            f"the loaded kernel module is {kernel_module_version}, the installed userspace driver "
            f"{userspace_version}: new CUDA processes fail (driver/library version mismatch) until a reboot"
        )
    elif gpu_status == "driver_mismatch":
        state["reboot_needed"] = True
        state["reason"] = "nvidia-smi reports a driver/library version mismatch"
    else:
        state["reason"] = f"the loaded kernel module and the userspace driver are both {userspace_version}"
    return state


def secure_boot_state(efi: bool, mokutil_output: str | None = None, efivar_base64: str | None = None) -> str:
    """Secure Boot: "enabled", "disabled", "unsupported" (BIOS boot, no EFI) or "unknown".

    From `mokutil --sb-state` when it ran, else from the SecureBoot EFI variable.
    """
    if not efi:
        return "unsupported"
    text = (mokutil_output or "").lower()
    if "secureboot enabled" in text:
        return "enabled"
    if "secureboot disabled" in text:
        return "disabled"
    if "not supported" in text or "doesn't support" in text or "does not support" in text:
        return "unsupported"
    if efivar_base64:
        try:
            raw = base64.b64decode(efivar_base64, validate=True)
        except (binascii.Error, ValueError):
            return "unknown"
        if len(raw) >= 5:
            return "enabled" if raw[4] == 1 else "disabled"
    return "unknown"


def mok_key_enrolled(test_key_output: str | None) -> bool | None:
    """`mokutil --test-key KEY`: True ("is already enrolled"), False ("is not enrolled"), else None."""
    text = (test_key_output or "").lower()
    if "is already enrolled" in text:
        return True
    if "is not enrolled" in text:
        return False
    return None


def secure_boot_decision(
    state: str,
    module_build: str | None,
    *,
    key_path: str,
    key_exists: bool = False,
    key_enrolled: bool | None = None,
    skip_kernel_module: bool = False,
) -> dict[str, Any]:
    """Whether the kernel modules about to be installed can be loaded under Secure Boot.

    Returns {ok, reason}. Stops (ok False) when Secure Boot is on and the modules would be
    DKMS-built and signed with a key the firmware does not trust, and when the state is unknown.
    """
    if skip_kernel_module or module_build is None:
        return {"ok": True, "reason": "kernel modules not managed here"}
    if state in ("disabled", "unsupported"):
        return {"ok": True, "reason": f"Secure Boot {state}"}
    if state == "enabled" and module_build == "prebuilt":
        return {
            "ok": True,
            "reason": "Secure Boot enabled; the prebuilt modules are signed by the distribution",
        }
    if state == "enabled" and key_exists and key_enrolled:
        return {"ok": True, "reason": f"Secure Boot enabled; DKMS signs with {key_path}, an enrolled key"}
    choices = (
        "Choose one: (1) enrol DKMS's signing key: `mokutil --import "
        f"{key_path}` (create it first with `dkms generate_mok` if it does not exist), reboot, confirm "
        "the enrolment in the MOK manager on the console, then run again; (2) use prebuilt modules "
        "signed by the distribution (Ubuntu: nvidia_driver_source: distribution, "
        "nvidia_driver_kernel_module_build: prebuilt); (3) turn Secure Boot off in the firmware."
    )
    if state == "enabled":
        why = "is not enrolled" if key_exists and key_enrolled is False else "does not exist yet"
        if key_exists and key_enrolled is None:
            why = "could not be checked (mokutil --test-key gave no answer)"
        return {
            "ok": False,
            "reason": (
                f"Secure Boot is enabled and the nvidia modules would be built by DKMS and signed with "
                f"{key_path}, which {why}: the kernel would refuse to load them. {choices}"
            ),
        }
    return {
        "ok": False,
        "reason": (
            "Secure Boot state unknown (EFI present, but neither mokutil nor the SecureBoot EFI variable "
            f"answered): install mokutil and run again. {choices}"
        ),
    }


def dkms_built(dkms_status: str, version: str | None, kernel: str) -> bool:
    """Whether `dkms status` lists an nvidia module at `version` installed for `kernel`.

    Reads both formats: "nvidia-current/535.261.03, 6.1.0-18-amd64, x86_64: installed" (dkms 3)
    and "nvidia, 535.161.08, 5.15.0-105-generic, x86_64: installed" (dkms 2). The module name
    differs between packagings (nvidia, nvidia-current, nvidia-srv, ...): any name starting with
    "nvidia" counts.
    """
    if not version:
        return False
    for line in dkms_status.splitlines():
        head, _colon, status = line.rpartition(":")
        if not status.strip().startswith("installed"):
            continue
        fields = [field.strip() for field in head.replace("/", ",").split(",")]
        if (
            len(fields) >= 3
            and fields[0].startswith("nvidia")
            and fields[1] == version
            and fields[2] == kernel
        ):
            return True
    return False
