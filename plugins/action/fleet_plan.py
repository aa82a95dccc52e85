"""Action: every host's preflight plan in one run on the controller (docs: modules/fleet_plan.py)."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.plugins.action import ActionBase
from ansible_collections.vllm_fleet.serving.plugins.module_utils.preflight import (
    TIMINGS,
    instance_names,
    parse_containers,
    parse_listeners,
    parse_store_listing,
    plan_fleet,
)

# What a host's plan reads from its variables; role defaults are not host variables, so the
# task passes them (`defaults`) for the hosts whose inventory does not set them.
HOST_INPUTS = {
    "instances": "vllm_server_instances",
    "instance_defaults": "vllm_server_instance_defaults",
    "declared_gpus": "vllm_server_declared_gpus",
    "models": "model_sync_models",
    "instance_root": "vllm_server_instance_dir",
    "model_store": "vllm_server_model_store",
    "shutdown_timeout": "vllm_server_shutdown_timeout",
    "config_dir": "vllm_server_config_dir",
    "environment": "vllm_server_environment",
    "golden_prompts": "vllm_server_golden_prompts",
    "firewall": "vllm_server_firewall",
    "firewall_groups": "vllm_server_firewall_groups",
    "firewall_allow": "vllm_server_firewall_allow",
}
# The API keys, only checked (never returned): read from the host's variables, never passed as
# task arguments (which events and artifacts may record); unset, they are the role's defaults.
KEY_INPUTS = {"api_key": ("vllm_server_api_key", ""), "api_keys": ("vllm_server_api_keys", {})}


class ActionModule(ActionBase):
    """vllm_fleet.serving.fleet_plan"""

    TRANSFERS_FILES = False
    _requires_connection = False
    _VALID_ARGS = frozenset(("hosts", "fleet_hosts", "offline", "settings_only", "defaults"))

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        # ActionBase is untyped (Any): its run() returns the result dict every action extends.
        result: dict[str, Any] = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = self._task.args
        hosts = args.get("hosts")
        if not isinstance(hosts, list) or not hosts:
            raise AnsibleActionFail("fleet_plan needs hosts: a non-empty list of inventory host names")
        # Settings only: what the controller knows, before any host is contacted; the hardware an
        # inventory declares for offline plans is left out too, so no check of it can fail here.
        settings_only = bool(args.get("settings_only", False))
        offline = settings_only or bool(args.get("offline", False))
        defaults = args.get("defaults") or {}
        missing = sorted((set(HOST_INPUTS.values()) | set(TIMINGS)) - set(defaults))
        if missing:
            raise AnsibleActionFail(f"fleet_plan needs defaults for {', '.join(missing)}")

        hostvars = task_vars["hostvars"]
        inputs = {}
        for host in hosts:
            # One lookup per host: each hostvars[host] computes that host's variables anew.
            view = hostvars[host]
            host_inputs = {
                key: view[var] if var in view else defaults[var] for key, var in HOST_INPUTS.items()
            }
            host_inputs["timings"] = {var: view[var] if var in view else defaults[var] for var in TIMINGS}
            for key, (var, unset) in KEY_INPUTS.items():
                try:
                    host_inputs[key] = view.get(var, unset)
                except AnsibleError:
                    # Not resolvable here (a vault variable an offline plan has no password
                    # for): not checked now; the roles resolve and check it where it is used.
                    host_inputs[key] = unset
            if settings_only:
                host_inputs["declared_gpus"] = None
            if offline:
                host_inputs.update(gpus=None, listeners=None)
            else:
                # Read on each host by tasks/facts.yml just before.
                host_inputs["gpus"] = view["vllm_fleet_gpus"]
                containers = view.get("__vllm_server_containers", {}).get("results", [])
                host_inputs["listeners"] = parse_listeners(
                    view["__vllm_server_listeners"]["stdout"],
                    {k: v for r in containers for k, v in parse_containers(r.get("stdout", "")).items()},
                )
                stored = view["__vllm_server_stored"]
                host_inputs["stored"] = parse_store_listing(stored["rc"], stored["stdout"], stored["stderr"])
            inputs[host] = host_inputs

        # Keys and golden prompts may name instances of hosts a --limit left out of the play.
        other_instances: set[str] = set()
        var = HOST_INPUTS["instances"]
        for host in set(args.get("fleet_hosts") or []) - set(inputs):
            view = hostvars[host]
            other_instances |= instance_names(view[var] if var in view else defaults[var])

        inventory = {group: list(hosts) for group, hosts in (task_vars.get("groups") or {}).items()}
        plans = plan_fleet(inputs, other_instances=other_instances, inventory=inventory)
        refused = [f"{host}: {failure}" for host, plan in plans.items() for failure in plan["failures"]]
        result.update(changed=False, plans=plans, refused=refused)
        return result
