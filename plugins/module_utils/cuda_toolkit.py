"""The CUDA toolkit's per-distribution choices, as pure functions (see nvidia_driver.py).

vLLM's wheels bring their own CUDA runtime: the toolkit (nvcc, headers, libraries) is only for
compiling kernels on the host, so the `cuda_toolkit` role is optional and off by default.

Sources:
- `cuda_repo`: NVIDIA's CUDA repository, any version, as `cuda-toolkit-<major>-<minor>` under
  /usr/local/cuda-<major>.<minor>, side by side with other versions.
- `distribution`: the distribution's one packaged version, `nvidia-cuda-toolkit` (Ubuntu 22.04:
  11.5, Ubuntu 24.04: 12.0, Debian 12: 11.8 in non-free). Debian's unstable carries 12.4, but
  a stable host must not mix in unstable packages: other versions come from `cuda_repo`.
  RHEL/Rocky package no CUDA toolkit.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ansible_collections.vllm_fleet.serving.plugins.module_utils.nvidia_driver import (
    PLATFORMS,
    cuda_repository,
    debian_nonfree_sources,
    platform_and_source_errors,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

# The one toolkit version each distribution packages (nvidia-cuda-toolkit).
DISTRIBUTION_TOOLKITS = {"Ubuntu-22": "11.5", "Ubuntu-24": "12.0", "Debian-12": "11.8"}

# The oldest driver each CUDA major version runs on (minor version compatibility, Linux), from
# NVIDIA's CUDA compatibility guide. Newer minor versions may need a newer driver for PTX JIT.
MINIMUM_DRIVER = {"11": "450.80.02", "12": "525.60.13", "13": "580.65.06"}

_VERSION = re.compile(r"^(?P<major>\d+)\.(?P<minor>\d+)$")


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def toolkit_plan(settings: Mapping[str, Any]) -> dict[str, Any]:
    """What the cuda_toolkit role installs, and where the toolkit lives.

    `settings` keys: platform, source, version ("12.8"), architecture, codename, cuda_repo_url,
    debian_mirror, debian_security_mirror. Returns {ok, errors, packages, home, bin_dir, lib_dir,
    repositories, cuda_repository, package_manager}; bin_dir and lib_dir are None where the
    toolkit lives in the system's own directories (nothing to add to PATH / LD_LIBRARY_PATH).
    """
    errors: list[str] = []
    platform = str(settings.get("platform", ""))
    source = str(settings.get("source", ""))
    version = str(settings.get("version", "")).strip()
    plan: dict[str, Any] = {
        "ok": False,
        "errors": errors,
        "package_manager": None,
        "packages": [],
        "home": None,
        "bin_dir": None,
        "lib_dir": None,
        "repositories": [],
        "cuda_repository": None,
    }
    if not platform_and_source_errors("cuda_toolkit", platform, source, errors):
        return plan
    match = _VERSION.match(version)
    if not match:
        errors.append(
            f"cuda_toolkit_version must be a CUDA major.minor version such as '12.8', got {version!r}"
        )
    if errors or match is None:
        return plan
    info = PLATFORMS[platform]
    plan["package_manager"] = info["manager"]

    if source == "cuda_repo":
        plan.update(
            ok=True,
            packages=[f"cuda-toolkit-{match.group('major')}-{match.group('minor')}"],
            home=f"/usr/local/cuda-{version}",
            bin_dir=f"/usr/local/cuda-{version}/bin",
            lib_dir=f"/usr/local/cuda-{version}/lib64",
            cuda_repository=cuda_repository(
                platform, str(settings.get("architecture", "")), str(settings.get("cuda_repo_url", ""))
            ),
        )
        return plan

    packaged = DISTRIBUTION_TOOLKITS.get(platform)
    if packaged is None:
        errors.append(
            f"cuda_toolkit_source: {info['name']} packages no CUDA toolkit; "
            "use cuda_toolkit_source: cuda_repo"
        )
        return plan
    if version != packaged:
        errors.append(
            f"cuda_toolkit_version: {info['name']} packages CUDA {packaged} only (nvidia-cuda-toolkit), "
            f"not {version}; use cuda_toolkit_version: '{packaged}' or cuda_toolkit_source: cuda_repo"
        )
        return plan
    repositories: list[dict[str, Any]] = []
    if info["kind"] == "debian":
        repositories = debian_nonfree_sources(
            str(settings.get("codename", "")),
            str(settings.get("debian_mirror", "")),
            str(settings.get("debian_security_mirror", "")),
        )
    plan.update(
        ok=True,
        packages=["nvidia-cuda-toolkit"],
        # nvcc in /usr/bin, headers in /usr/include, libraries in the multiarch directory: all on
        # the default paths already; CUDA_HOME=/usr is what build tools expect then.
        home="/usr",
        repositories=repositories,
    )
    return plan


def driver_check(toolkit_version: str, driver_version: str | None) -> dict[str, Any]:
    """Whether the host's driver runs this toolkit's programs: {ok, checked, reason}.

    `driver_version` is gpu_facts' driver_version (None where no driver answers: not checked).
    """
    major = toolkit_version.split(".")[0]
    minimum = MINIMUM_DRIVER.get(major)
    if driver_version is None:
        return {"ok": True, "checked": False, "reason": "no NVIDIA driver answered: driver not checked"}
    if minimum is None:
        return {"ok": True, "checked": False, "reason": f"no known minimum driver for CUDA {major}.x"}
    try:
        too_old = _version_key(driver_version) < _version_key(minimum)
    except ValueError:
        return {"ok": True, "checked": False, "reason": f"unreadable driver version {driver_version!r}"}
    if too_old:
        return {
            "ok": False,
            "checked": True,
            "reason": (
                f"CUDA {toolkit_version} needs NVIDIA driver {minimum} or newer, the host runs "
                f"{driver_version}: raise nvidia_driver_version (playbooks/driver.yml) or choose an "
                "older cuda_toolkit_version"
            ),
        }
    return {
        "ok": True,
        "checked": True,
        "reason": f"driver {driver_version} runs CUDA {major}.x (>= {minimum})",
    }
