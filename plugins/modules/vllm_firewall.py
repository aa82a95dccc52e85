#!/usr/bin/python
# Copyright: vllm-fleet maintainers
# Apache License 2.0 (see galaxy.yml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vllm_firewall
short_description: Close a host's vLLM instance ports to all but the admitted sources (nftables)
version_added: "0.3.0"
description:
  - Keeps an nftables table of its own, C(inet vllm_fleet), that rejects (TCP reset) every
    connection to the given ports from a source that is not admitted and decides nothing else,
    so that the host's own firewall (nftables.conf, firewalld, ufw) keeps its rules. Loopback is
    always admitted.
  - The ruleset lives in C(path) and a oneshot unit, C(vllm-fleet-firewall.service), loads it at
    boot after C(nftables.service) (whose ruleset flush would remove it) and with it again.
  - A new ruleset is checked with C(nft -c) before it replaces the file, and loaded in one
    transaction, so connections are never open in between. The module also loads the file when
    the table is missing from the kernel (flushed by hand).
  - With C(state=absent), the table, the file and the unit are removed.
author:
  - vllm-fleet maintainers (!UNKNOWN)
options:
  state:
    description: Whether the ports are closed (C(present)) or the table is gone (C(absent)).
    type: str
    choices: [present, absent]
    default: present
  ports:
    description: The TCP ports to close (the host's instance ports).
    type: list
    elements: int
    default: []
  admitted:
    description: Addresses and networks (IPv4 or IPv6) that may connect to the ports.
    type: list
    elements: str
    default: []
  path:
    description: File of the ruleset.
    type: path
    default: /etc/vllm-fleet/firewall.nft
requirements:
  - nft (Debian's and RHEL's C(nftables) package)
notes:
  - Check mode and diff mode are supported.
"""

EXAMPLES = r"""
- name: Open the instance ports to the gateways and the monitoring host only
  vllm_fleet.serving.vllm_firewall:
    ports: [8000, 8001]
    admitted: [10.0.0.10/32, 10.0.0.11/32]
"""

RETURN = r"""
ruleset:
  description: The nftables script of the table (with C(state=present)).
  returned: always
  type: str
loaded:
  description: Whether the module loaded the ruleset into the kernel in this run.
  returned: always
  type: bool
"""

import os  # noqa: E402
from typing import Any  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.vllm_fleet.serving.plugins.module_utils.files import (  # noqa: E402
    file_diff,
    read_text,
    write_text_atomic,
)
from ansible_collections.vllm_fleet.serving.plugins.module_utils.firewall import TABLE, ruleset  # noqa: E402

UNIT_NAME = "vllm-fleet-firewall.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"


def unit_text(nft: str, path: str) -> str:
    """The unit that loads the ruleset at boot, and again whenever nftables.service reloads."""
    return "\n".join(
        [
            "# Written by vllm_fleet.serving.vllm_firewall.",
            "[Unit]",
            "Description=vllm-fleet: instance ports open to the gateways and the monitoring host only",
            # As nftables.service itself: early, before any network is up.
            "DefaultDependencies=no",
            "Wants=network-pre.target",
            "Before=network-pre.target shutdown.target",
            "Conflicts=shutdown.target",
            "After=nftables.service",
            "PartOf=nftables.service",
            "",
            "[Service]",
            "Type=oneshot",
            "RemainAfterExit=yes",
            f"ExecStart={nft} -f {path}",
            f"ExecReload={nft} -f {path}",
            f"ExecStop={nft} delete table inet {TABLE}",
            "",
            "[Install]",
            "WantedBy=sysinit.target nftables.service",
            "",
        ]
    )


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "ports": {"type": "list", "elements": "int", "default": []},
            "admitted": {"type": "list", "elements": "str", "default": []},
            "path": {"type": "path", "default": "/etc/vllm-fleet/firewall.nft"},
        },
        supports_check_mode=True,
    )
    p = module.params
    if p["state"] == "absent":
        module.exit_json(**_absent(module, p["path"]))
    try:
        wanted = ruleset(p["ports"], p["admitted"])
    except ValueError as error:
        module.fail_json(msg=f"admitted: {error}")
    nft = module.get_bin_path("nft")
    if not nft:
        if module.check_mode:
            # The package is installed by the task before, which check mode only announced.
            module.exit_json(changed=True, ruleset=wanted, loaded=False)
        module.fail_json(msg="nft is not installed (Debian's and RHEL's nftables package)")
    old = read_text(p["path"])
    unit = unit_text(nft, p["path"])
    old_unit = read_text(UNIT_PATH)
    rc, _out, _err = module.run_command([nft, "list", "table", "inet", TABLE])
    loaded_now = rc == 0
    changed = wanted != old or unit != old_unit or not loaded_now
    result: dict[str, Any] = {"changed": changed, "ruleset": wanted, "loaded": False}
    if module._diff and wanted != old:
        result["diff"] = file_diff(p["path"], old, wanted)
    if not changed or module.check_mode:
        module.exit_json(**result)

    if wanted != old:
        os.makedirs(os.path.dirname(p["path"]), mode=0o755, exist_ok=True)
        staged = p["path"] + ".new"
        write_text_atomic(staged, wanted)
        rc, out, err = module.run_command([nft, "-c", "-f", staged])
        if rc != 0:
            os.unlink(staged)
            module.fail_json(msg=f"nft -c refused the ruleset, nothing changed: {err or out}", ruleset=wanted)
        os.replace(staged, p["path"])
    if unit != old_unit:
        write_text_atomic(UNIT_PATH, unit)
        _systemctl(module, "daemon-reload")
    _systemctl(module, "enable", UNIT_NAME)
    # Loading the file is one transaction: the old table goes and the new one comes at once.
    rc, out, err = module.run_command([nft, "-f", p["path"]])
    if rc != 0:
        module.fail_json(msg=f"nft -f {p['path']} failed: {err or out}")
    # Marks the oneshot unit active, so that a stop or nftables' restart reaches it.
    _systemctl(module, "start", UNIT_NAME)
    result["loaded"] = True
    module.exit_json(**result)


def _systemctl(module: AnsibleModule, *args: str) -> None:
    rc, out, err = module.run_command(["systemctl", *args])
    if rc != 0:
        module.fail_json(msg=f"systemctl {' '.join(args)} failed: {err or out}")


def _absent(module: AnsibleModule, path: str) -> dict[str, Any]:
    nft = module.get_bin_path("nft")
    loaded = bool(nft) and module.run_command([nft, "list", "table", "inet", TABLE])[0] == 0
    present = [f for f in (path, UNIT_PATH) if os.path.exists(f)]
    changed = loaded or bool(present)
    if changed and not module.check_mode:
        if os.path.exists(UNIT_PATH):
            _systemctl(module, "disable", "--now", UNIT_NAME)
            os.unlink(UNIT_PATH)
            _systemctl(module, "daemon-reload")
        if os.path.exists(path):
            os.unlink(path)
        if nft and module.run_command([nft, "list", "table", "inet", TABLE])[0] == 0:
            rc, out, err = module.run_command([nft, "delete", "table", "inet", TABLE])
            if rc != 0:
                module.fail_json(msg=f"nft delete table inet {TABLE} failed: {err or out}")
    return {"changed": changed, "ruleset": "", "loaded": False}


if __name__ == "__main__":
    main()
