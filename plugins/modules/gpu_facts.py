#!/usr/bin/python
# Copyright: vllm-fleet maintainers
# Apache License 2.0 (see galaxy.yml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: gpu_facts
short_description: Gather the NVIDIA GPUs of a host, as every vllm_fleet role sees them
version_added: "0.1.0"
description:
  - Runs C(nvidia-smi --query-gpu=FIELDS --format=csv,noheader,nounits) with the fields index, uuid,
    name, memory.total, memory.used, compute_cap, driver_version, mig.mode.current, persistence_mode
    and pci.bus_id, and sets the fact C(vllm_fleet_gpus) with one entry per GPU, plus the driver,
    CUDA and loaded kernel module versions.
  - This is the single source of GPU truth for all roles of the collection (preflight checks of
    instance specs, driver installation, service units). The parsing lives in the C(nvidia_smi)
    module utility, which other plugins import too.
  - A host without C(nvidia-smi), without a loaded driver, or without GPUs is not an error. It reports
    C(count=0) with a C(status) and a C(reason), so that a play over a mixed fleet keeps going.
  - A driver/library version mismatch (the user-space driver was upgraded while the old kernel module
    is still loaded) is reported as C(status=driver_mismatch), with the NVML library version from the
    message and the version of the loaded kernel module. That half-upgraded state needs a reboot or a
    module reload, not a reinstall.
  - Drivers older than 510 do not know the C(compute_cap) query field. Any field the driver rejects
    (except index, name and memory.total) is dropped and the query repeated, so
    C(compute_capability) is then null.
  - The driver and CUDA versions come from C(nvidia-smi --version), or from the header of plain
    C(nvidia-smi) on drivers without that option. The kernel module version is read from
    C(/proc/driver/nvidia/version), else C(/sys/module/nvidia/version).
  - Read-only; never reports a change.
author:
  - vllm-fleet maintainers (!UNKNOWN)
options:
  nvidia_smi:
    description:
      - Name of the C(nvidia-smi) executable, looked up in E(PATH) and the usual system
        directories, or its absolute path.
    type: str
    default: nvidia-smi
extends_documentation_fragment:
  - action_common_attributes
  - action_common_attributes.facts
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  facts:
    support: full
  platform:
    platforms: posix
notes:
  - Values that C(nvidia-smi) cannot give (C([N/A]), C([Not Supported]) and similar) are returned
    as null.
seealso:
  - name: nvidia-smi documentation
    description: The NVIDIA System Management Interface, with the list of C(--query-gpu) fields.
    link: https://docs.nvidia.com/deploy/nvidia-smi/index.html
"""

EXAMPLES = r"""
- name: Gather the GPUs of every host
  vllm_fleet.serving.gpu_facts:

- name: Stop early on a half-upgraded driver
  ansible.builtin.assert:
    that: vllm_fleet_gpus.status != 'driver_mismatch'
    fail_msg: "{{ vllm_fleet_gpus.reason }}"

- name: Refuse bfloat16 below compute capability 8.0
  ansible.builtin.assert:
    that:
      - item.compute_capability is not none
      - item.compute_capability is version('8.0', '>=')
    fail_msg: "GPU {{ item.index }} ({{ item.name }}) cannot run bfloat16; serve it with dtype half"
  loop: "{{ vllm_fleet_gpus.devices }}"
  loop_control:
    label: "{{ item.index }}"

- name: Use an nvidia-smi outside PATH
  vllm_fleet.serving.gpu_facts:
    nvidia_smi: /usr/local/nvidia/bin/nvidia-smi
"""

RETURN = r"""
ansible_facts:
  description: Facts added to the host.
  returned: always
  type: dict
  contains:
    vllm_fleet_gpus:
      description: The NVIDIA GPUs of the host and the state of its driver.
      returned: always
      type: dict
      contains:
        status:
          description:
            - V(ok) when GPUs were listed.
            - V(absent) when there is no C(nvidia-smi).
            - V(no_driver) when C(nvidia-smi) cannot talk to the kernel driver.
            - V(no_devices) when the driver lists no GPU.
            - V(driver_mismatch) when the user-space driver and the loaded kernel module differ.
            - V(error) for any other failure of C(nvidia-smi).
          type: str
          returned: always
          sample: ok
        reason:
          description: Why there are no GPU facts; null when the device query worked.
          type: str
          returned: always
          sample: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.
        count:
          description: Number of GPUs listed; 0 unless status is V(ok).
          type: int
          returned: always
          sample: 8
        driver_version:
          description: The driver version C(nvidia-smi) reports.
          type: str
          returned: always
          sample: 535.161.08
        cuda_version:
          description: The highest CUDA version the driver supports (the C(CUDA Version) of C(nvidia-smi)).
          type: str
          returned: always
          sample: "12.2"
        kernel_module_version:
          description: Version of the loaded nvidia kernel module; null when none is loaded or unreadable.
          type: str
          returned: always
          sample: 580.173.02
        nvml_library_version:
          description: Version of the user-space NVML library; known only from a mismatch message.
          type: str
          returned: always
          sample: "580.178"
        source:
          description:
            - Where the device list came from, V(query-gpu) normally.
            - V(summary) when only the table of plain C(nvidia-smi) could be read (no UUID and no
              compute capability).
          type: str
          returned: always
          sample: query-gpu
        devices:
          description: One entry per GPU, in index order.
          type: list
          elements: dict
          returned: always
          contains:
            index:
              description: The GPU index, as nvidia-smi numbers it (PCI bus order).
              type: int
              sample: 0
            uuid:
              description: The GPU UUID.
              type: str
              sample: GPU-b5169cef-2205-c30e-f2b3-220cfa14bafd
            name:
              description: The product name.
              type: str
              sample: NVIDIA H100 80GB HBM3
            memory_total_mib:
              description: Total memory in MiB.
              type: int
              sample: 81559
            memory_used_mib:
              description: Memory in use in MiB when the facts were gathered.
              type: int
              sample: 0
            compute_capability:
              description: CUDA compute capability as C(major.minor); null on drivers older than 510.
              type: str
              sample: "9.0"
            mig_mode:
              description: Current MIG mode, V(enabled) or V(disabled); null on GPUs without MIG.
              type: str
              sample: disabled
            persistence_mode:
              description: Whether persistence mode is on; null where it does not apply.
              type: bool
              sample: true
            pci_bus_id:
              description: PCI bus id as C(domain:bus:device.function).
              type: str
              sample: 00000000:8D:00.0
"""

import os  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.vllm_fleet.serving.plugins.module_utils.nvidia_smi import (  # noqa: E402
    KERNEL_VERSION_FILES,
    gather,
)


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def _locate(module: AnsibleModule, name: str) -> str | None:
    if os.path.sep in name:
        return name if os.access(name, os.X_OK) else None
    path: str | None = module.get_bin_path(name)  # AnsibleModule is untyped (Any)
    return path


def main() -> None:
    module = AnsibleModule(
        argument_spec={"nvidia_smi": {"type": "str", "default": "nvidia-smi"}},
        supports_check_mode=True,
    )

    def run(argv: list[str]) -> tuple[int, str, str]:
        rc, out, err = module.run_command(argv, environ_update={"LC_ALL": "C", "LANG": "C"})
        return rc, out, err

    facts = gather(_locate(module, module.params["nvidia_smi"]), run, _read_text, KERNEL_VERSION_FILES)
    module.exit_json(changed=False, ansible_facts={"vllm_fleet_gpus": facts})


if __name__ == "__main__":
    main()
