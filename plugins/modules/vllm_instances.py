#!/usr/bin/python
# Copyright: vllm-fleet maintainers
# Apache License 2.0 (see galaxy.yml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vllm_instances
short_description: Plan, switch, restore and commit the vLLM instances of a host
version_added: "0.2.0"
description:
  - The host side of the C(vllm_server) role; one call per step of a change to the instances
    of a host. The role renders each instance's unit and passes it here with its link targets.
  - C(state=planned) changes nothing and returns what a switch would do, as C(changes).
  - C(state=switched) records what each changing instance runs now (links and unit, its
    C(upgrade-from) record), writes units, secrets and links, reloads systemd and restarts
    exactly the instances that change (or are not running); instances no longer in
    C(instances) are stopped and removed (their models and environments stay).
  - C(state=restored) puts the C(upgrade-from) record of the given instances back and restarts
    them (the way back after a failed readiness gate). Instances new in the switch are removed.
  - C(state=committed) keeps the C(upgrade-from) record as the C(previous) record (the target of
    C(target=previous), playbooks/rollback.yml), or drops it after a switch to C(previous).
  - The on-host layout and records are described in module_utils/instances.py.
author:
  - vllm-fleet maintainers (!UNKNOWN)
options:
  state:
    description: The step.
    type: str
    required: true
    choices: [planned, switched, restored, committed]
  target:
    description:
      - What the instances are switched to (planned, switched, committed), C(inventory) (the
        specs in C(instances)) or C(previous) (each instance's previous record, where its model
        or environment differs from the current one).
    type: str
    default: inventory
    choices: [inventory, previous]
  instances:
    description: Every instance the host should run, as the role renders it.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Instance name; the unit is C(vllm-<name>.service).
        type: str
        required: true
      unit:
        description: The unit file's content.
        type: str
        required: true
      model:
        description: Target of the instance's C(model) link (a revision in the model store).
        type: str
        required: true
      env:
        description: Target of the instance's C(env) link (a Python environment).
        type: str
        required: true
  secrets:
    description: Content of each instance's root-only environment file, by instance name.
    type: dict
    default: {}
  unit_dir:
    description: Where the units are.
    type: path
    default: /etc/systemd/system
  instance_dir:
    description: The per-instance directories (links and records).
    type: path
    required: true
  config_dir:
    description: The root-only directory of the secrets files.
    type: path
    required: true
notes:
  - Check mode and diff mode are supported; the secrets never appear in a diff.
"""

EXAMPLES = r"""
- name: Plan what changes on the host's instances
  vllm_fleet.serving.vllm_instances:
    state: planned
    instances: "{{ rendered_instances }}"
    instance_dir: /var/lib/vllm-fleet/instances
    config_dir: /etc/vllm-fleet
  register: plan
"""

RETURN = r"""
changes:
  description: What the host runs and what the switch changes (or would change, for C(planned)).
  returned: state is planned or switched
  type: dict
  contains:
    pending:
      description: Instances that (re)start.
      type: list
      elements: str
    retired:
      description: Instances that stop and are removed.
      type: list
      elements: str
    active:
      description: Instances running before the step.
      type: list
      elements: str
    unconfirmed:
      description: Instances with an upgrade-from record (switched, not yet committed).
      type: list
      elements: str
    drain:
      description: Whether running instances stop or restart (the host must be drained).
      type: bool
names:
  description: Instances restored or committed.
  returned: state is restored or committed
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.vllm_fleet.serving.plugins.module_utils.instances import Desired, Host  # noqa: E402


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {
                "type": "str",
                "required": True,
                "choices": ["planned", "switched", "restored", "committed"],
            },
            "target": {"type": "str", "default": "inventory", "choices": ["inventory", "previous"]},
            "instances": {
                "type": "list",
                "elements": "dict",
                "required": True,
                "options": {
                    "name": {"type": "str", "required": True},
                    "unit": {"type": "str", "required": True},
                    "model": {"type": "str", "required": True},
                    "env": {"type": "str", "required": True},
                },
            },
            "secrets": {"type": "dict", "default": {}, "no_log": True},
            "unit_dir": {"type": "path", "default": "/etc/systemd/system"},
            "instance_dir": {"type": "path", "required": True},
            "config_dir": {"type": "path", "required": True},
        },
        supports_check_mode=True,
    )
    p = module.params
    systemctl_bin = module.get_bin_path("systemctl", required=True)

    def systemctl(*args: str) -> tuple[int, str]:
        rc, out, err = module.run_command([systemctl_bin, *args])
        # is-active answers through its exit code; every other call must succeed.
        if rc != 0 and args[0] != "is-active":
            module.fail_json(msg=f"systemctl {' '.join(args)} failed (rc {rc}): {err.strip() or out.strip()}")
        return rc, out

    host = Host(p["unit_dir"], p["instance_dir"], p["config_dir"], systemctl, module.check_mode)
    desired = [Desired.from_param(spec, p["secrets"] or {}) for spec in p["instances"]]
    names = [d.name for d in desired]

    if p["state"] == "planned":
        plan = host.plan(desired, p["target"])
        module.exit_json(changed=False, changes=plan.as_dict())
    if p["state"] == "switched":
        plan = host.switch(desired, p["target"])
        changed = bool(plan.pending or plan.retired)
        result = {"changed": changed, "changes": plan.as_dict()}
        if module._diff and plan.diff:
            result["diff"] = plan.diff
        module.exit_json(**result)
    if p["state"] == "restored":
        restored = host.restore(names)
        module.exit_json(changed=bool(restored), names=restored)
    committed = host.commit(names, p["target"])
    module.exit_json(changed=bool(committed), names=committed)


if __name__ == "__main__":
    main()
