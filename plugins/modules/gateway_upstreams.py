#!/usr/bin/python
# Copyright: vllm-fleet maintainers
# Apache License 2.0 (see galaxy.yml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: gateway_upstreams
short_description: The upstreams of a vllm-fleet gateway, and which backend hosts are drained
version_added: "0.2.0"
description:
  - The gateway host side of the C(gateway) role. Its state, C(<dir>/upstreams.json), holds the
    upstreams (one per served model, as the role computes them), the passive health-check
    settings and the drained backend hosts; C(<dir>/upstreams.conf), which nginx's main
    configuration includes, is rendered from it.
  - With C(upstreams), the state takes the inventory's upstreams and settings (the role's
    configure step); drained hosts stay drained.
  - C(drain) and C(undrain) mark backend hosts down or up again (rolling changes, driver
    changes); changes of hosts running at once are serialized by a lock.
  - With C(reload) (the default), a changed file is checked with C(nginx -t) (and put back as it
    was if nginx refuses it) and nginx reloads, then the module waits a moment so that requests
    the old workers accepted are on their way before anyone counts in-flight requests.
author:
  - vllm-fleet maintainers (!UNKNOWN)
options:
  dir:
    description: Directory of the state and the rendered upstreams (root-only).
    type: path
    default: /etc/nginx/vllm-fleet
  upstreams:
    description: The upstreams, as the C(vllm_fleet.serving.gateway_upstreams) filter returns them.
    type: list
    elements: dict
  max_fails:
    description: nginx's max_fails of every server (with C(upstreams)).
    type: int
  fail_timeout:
    description: nginx's fail_timeout of every server, seconds (with C(upstreams)).
    type: int
  keepalive:
    description: Idle keep-alive connections per upstream (with C(upstreams)).
    type: int
  drain:
    description: Backend hosts to take out (their server lines marked down).
    type: list
    elements: str
    default: []
  undrain:
    description: Backend hosts to return.
    type: list
    elements: str
    default: []
  reload:
    description: Check the whole configuration and reload nginx when the file changed (if it runs).
    type: bool
    default: true
notes:
  - Check mode and diff mode are supported.
"""

EXAMPLES = r"""
- name: Take a backend host out of every gateway
  vllm_fleet.serving.gateway_upstreams:
    drain: ["{{ inventory_hostname }}"]
  delegate_to: "{{ item }}"
  loop: "{{ groups['gateways'] }}"
"""

RETURN = r"""
drained:
  description: The backend hosts drained after the call.
  returned: always
  type: list
  elements: str
"""

import fcntl  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.vllm_fleet.serving.plugins.module_utils.files import (  # noqa: E402
    file_diff,
    read_text,
    write_text_atomic,
)
from ansible_collections.vllm_fleet.serving.plugins.module_utils.gateway import new_state, upstream_blocks  # noqa: E402

# After a reload nginx returns once signalled; give the new workers this long to take over.
TAKE_OVER_SECONDS = 1.0


def _put(path: str, content: str | None) -> None:
    """Write ``path``, or remove it for None (putting back a file that was not there)."""
    if content is not None:
        write_text_atomic(path, content)
    elif os.path.exists(path):
        os.unlink(path)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "dir": {"type": "path", "default": "/etc/nginx/vllm-fleet"},
            "upstreams": {"type": "list", "elements": "dict"},
            "max_fails": {"type": "int"},
            "fail_timeout": {"type": "int"},
            "keepalive": {"type": "int"},
            "drain": {"type": "list", "elements": "str", "default": []},
            "undrain": {"type": "list", "elements": "str", "default": []},
            "reload": {"type": "bool", "default": True},
        },
        required_together=[("upstreams", "max_fails", "fail_timeout", "keepalive")],
        supports_check_mode=True,
    )
    p = module.params
    state_path = os.path.join(p["dir"], "upstreams.json")
    conf_path = os.path.join(p["dir"], "upstreams.conf")
    if not os.path.isdir(p["dir"]):
        if p["upstreams"] is None:
            # No gateway configured here yet: nothing routes to any backend, nothing to drain.
            module.exit_json(changed=False, drained=[], skipped_reason=f"{p['dir']} does not exist")
        if not module.check_mode:
            os.makedirs(p["dir"], mode=0o700)

    with open(os.path.join(p["dir"], ".lock"), "a") if os.path.isdir(p["dir"]) else open(os.devnull) as lock:
        # Hosts of one batch drain at the same moment: one read-change-write at a time.
        fcntl.flock(lock, fcntl.LOCK_EX)
        module.exit_json(**_converge(module, state_path, conf_path))


def _converge(module: AnsibleModule, state_path: str, conf_path: str) -> dict[str, Any]:
    p = module.params
    old_state_text = read_text(state_path)
    old_conf = read_text(conf_path)
    settings = None
    if p["upstreams"] is not None:
        settings = {key: p[key] for key in ("max_fails", "fail_timeout", "keepalive")}
    state = new_state(json.loads(old_state_text or "{}"), p["upstreams"], settings, p["drain"], p["undrain"])
    state_text = json.dumps(state, indent=2, sort_keys=True) + "\n"
    conf = upstream_blocks(state)
    changed = state_text != old_state_text or conf != old_conf
    result = {"changed": changed, "drained": state["drained"]}
    if module._diff and conf != old_conf:
        result["diff"] = file_diff(conf_path, old_conf, conf)
    if not changed or module.check_mode:
        return result

    _put(conf_path, conf)
    _put(state_path, state_text)
    if p["reload"]:
        rc, _out, _err = module.run_command(["systemctl", "is-active", "--quiet", "nginx.service"])
        if rc == 0:
            rc, out, err = module.run_command(["nginx", "-t", "-q"])
            if rc != 0:
                _put(conf_path, old_conf)
                _put(state_path, old_state_text)
                module.fail_json(
                    msg=f"nginx -t refused the new upstreams (put back as they were): {err or out}"
                )
            rc, out, err = module.run_command(["systemctl", "reload", "nginx.service"])
            if rc != 0:
                module.fail_json(msg=f"systemctl reload nginx failed: {err or out}")
            time.sleep(TAKE_OVER_SECONDS)
            result["reloaded"] = True
    return result


if __name__ == "__main__":
    main()
