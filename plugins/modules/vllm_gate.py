#!/usr/bin/python
# Copyright: vllm-fleet maintainers
# Apache License 2.0 (see galaxy.yml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vllm_gate
short_description: Wait until a host's vLLM instances are ready, or idle
version_added: "0.2.0"
description:
  - The readiness gate and the drain wait of the C(vllm_server) role, asked on the host itself.
  - C(state=ready) waits for each instance's unit to run and its /health to answer 200 (failing
    at once, with the unit's last log lines, if systemd sees the process exit), then checks that
    /v1/models lists the served name, that a 1-token completion comes back, and that the golden
    prompt (if the instance has one) gets its known answer at temperature 0.
  - C(state=idle) waits until vLLM's running and waiting request gauges are 0 on every instance.
  - Each instance's API key is read from its root-only secrets file in C(config_dir); it is never
    a parameter and never returned. Changes nothing.
author:
  - vllm-fleet maintainers (!UNKNOWN)
options:
  state:
    description: Which gate.
    type: str
    required: true
    choices: [ready, idle]
  instances:
    description:
      - The instances to gate, as instance specs with their defaults filled in; read are
        C(name), C(port) (on 127.0.0.1), C(served_model_name) (a name or a list; every one and
        the names of C(adapters) must be listed, the first is asked) and C(adapters). Other keys
        are ignored.
    type: list
    elements: dict
    required: true
  golden_prompts:
    description: Golden prompts by instance name (C(vllm_server_golden_prompts)).
    type: dict
    default: {}
  config_dir:
    description: The root-only directory of the secrets files.
    type: path
    required: true
  timeout:
    description: Seconds to wait for each instance (ready) or for all of them (idle).
    type: int
    default: 600
  interval:
    description: Seconds between two polls.
    type: int
    default: 3
notes:
  - In check mode nothing was started, so C(state=ready) returns at once without asking.
"""

EXAMPLES = r"""
- name: Readiness gate
  vllm_fleet.serving.vllm_gate:
    state: ready
    instances: [{name: chat, port: 8000, served_model_name: chat}]
    config_dir: /etc/vllm-fleet
"""

RETURN = r"""
instances:
  description: Per instance gated, the seconds it took and (ready, with a golden prompt) the answer.
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.vllm_fleet.serving.plugins.module_utils.gate import (  # noqa: E402
    GateFailed,
    Instance,
    api_key,
    check_serving,
    wait_idle,
    wait_ready,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "required": True, "choices": ["ready", "idle"]},
            "instances": {"type": "list", "elements": "dict", "required": True},
            "golden_prompts": {"type": "dict", "default": {}},
            "config_dir": {"type": "path", "required": True},
            "timeout": {"type": "int", "default": 600},
            "interval": {"type": "int", "default": 3},
        },
        supports_check_mode=True,
    )
    p = module.params
    if module.check_mode and p["state"] == "ready":
        module.exit_json(changed=False, instances=[], skipped_reason="check mode starts nothing")
    for spec in p["instances"]:
        if not all(spec.get(key) for key in ("name", "port", "served_model_name")):
            module.fail_json(msg=f"each instance needs name, port and served_model_name: {spec!r}")
    instances = [Instance(spec, api_key(p["config_dir"], spec["name"])) for spec in p["instances"]]
    systemctl = module.get_bin_path("systemctl", required=True)
    journalctl = module.get_bin_path("journalctl", required=True)

    def unit_state(unit: str) -> dict[str, str]:
        props = "ActiveState,SubState,InvocationID,NRestarts,ExecMainStatus"
        _rc, out, _err = module.run_command([systemctl, "show", "-p", props, unit])
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(unit: str, lines: int) -> str:
        _rc, out, _err = module.run_command(
            [journalctl, "-u", unit, "-n", str(lines), "--no-pager", "-o", "cat"]
        )
        return str(out)

    results = []
    try:
        if p["state"] == "idle":
            seconds = wait_idle(instances, p["timeout"], p["interval"])
            results = [{"instance": i.name, "seconds": round(seconds, 1)} for i in instances]
        else:
            for instance in instances:
                seconds = wait_ready(instance, unit_state, journal, p["timeout"], p["interval"])
                row = check_serving(instance, (p["golden_prompts"] or {}).get(instance.name))
                results.append({**row, "seconds": round(seconds, 1)})
    except GateFailed as failure:
        module.fail_json(msg=str(failure), instances=results)
    module.exit_json(changed=False, instances=results)


if __name__ == "__main__":
    main()
