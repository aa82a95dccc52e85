"""Filters of the nvidia_driver and cuda_toolkit roles; the logic lives in module_utils
(nvidia_driver.py, cuda_toolkit.py)."""

from __future__ import annotations

from typing import Any

from ansible_collections.vllm_fleet.serving.plugins.module_utils.cuda_toolkit import (
    driver_check,
    toolkit_plan,
)
from ansible_collections.vllm_fleet.serving.plugins.module_utils.nvidia_driver import (
    dkms_built,
    driver_plan,
    fabric_manager_install,
    fabric_manager_wanted,
    holds,
    installed_driver_version,
    mok_key_enrolled,
    pci_nvidia_devices,
    platform_key,
    reboot_decision,
    secure_boot_decision,
    secure_boot_state,
    version_change,
)


def _reboot(
    kernel_module_version: str | None,
    userspace_version: str | None,
    skip_kernel_module: bool = False,
    gpu_status: str | None = None,
) -> dict[str, Any]:
    return reboot_decision(
        kernel_module_version,
        userspace_version,
        skip_kernel_module=bool(skip_kernel_module),
        gpu_status=gpu_status,
    )


def _secure_boot(
    state: str,
    module_build: str | None,
    key_path: str,
    key_exists: bool = False,
    key_enrolled: bool | None = None,
    skip_kernel_module: bool = False,
) -> dict[str, Any]:
    return secure_boot_decision(
        state,
        module_build,
        key_path=key_path,
        key_exists=bool(key_exists),
        key_enrolled=key_enrolled,
        skip_kernel_module=bool(skip_kernel_module),
    )


class FilterModule:
    """vllm_fleet.serving GPU host filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "nvidia_platform": platform_key,
            "nvidia_driver_plan": driver_plan,
            "nvidia_pci_devices": pci_nvidia_devices,
            "nvidia_fabric_manager_wanted": fabric_manager_wanted,
            "nvidia_fabric_manager_install": fabric_manager_install,
            "nvidia_installed_version": installed_driver_version,
            "nvidia_version_change": version_change,
            "nvidia_holds": holds,
            "nvidia_reboot_decision": _reboot,
            "nvidia_secure_boot_state": secure_boot_state,
            "nvidia_mok_key_enrolled": mok_key_enrolled,
            "nvidia_secure_boot_decision": _secure_boot,
            "nvidia_dkms_built": dkms_built,
            "cuda_toolkit_plan": toolkit_plan,
            "cuda_toolkit_driver_check": driver_check,
        }
