#!/usr/bin/python
# Copyright: vllm-fleet maintainers
# Apache License 2.0 (see galaxy.yml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleet_plan
short_description: Plan the vLLM instances of every host at once, on the controller
version_added: "0.1.0"
description:
  - The preflight planner of the C(vllm_server) role as one computation for the whole fleet; an
    action plugin, it runs on the controller and contacts no host. Run it once (C(run_once)).
  - For each host it reads that host's C(vllm_server_instances) (with its
    C(vllm_server_instance_defaults) under each), C(model_sync_models),
    C(vllm_server_golden_prompts), C(vllm_server_declared_gpus), C(vllm_server_instance_dir),
    C(vllm_server_shutdown_timeout), and what a container instance's command line takes
    (C(vllm_server_config_dir), C(vllm_server_environment), C(vllm_server_stop_margin)), falling
    back to O(defaults), and unless O(offline) the C(vllm_fleet_gpus) fact and the listeners (and
    the engines' containers) that the role's C(facts.yml) read on the host.
  - It checks C(vllm_server_api_key) and C(vllm_server_api_keys) from the host's variables (unset
    they are empty) and returns no key; the keys never travel as task arguments.
  - Each model directory is read once for the whole fleet (config.json and weight sizes).
  - The checks are those of C(plugins/module_utils/preflight.py); it changes nothing and never
    fails for a refused plan; the caller decides (the role asserts that RV(refused) is empty).
author:
  - vllm-fleet maintainers (!UNKNOWN)
options:
  hosts:
    description: Inventory names of the hosts to plan (the play's hosts).
    type: list
    elements: str
    required: true
  fleet_hosts:
    description:
      - Every host whose instances C(vllm_server_api_keys) and C(vllm_server_golden_prompts) may
        name (the whole group, also under C(--limit)); a name that no instance of these hosts or
        of O(hosts) has is refused.
    type: list
    elements: str
    default: []
  offline:
    description: Plan from C(vllm_server_declared_gpus) without host facts.
    type: bool
    default: false
  settings_only:
    description:
      - Check only what the controller knows, the settings of every host against their models,
        without host facts or declared hardware, before any host is contacted. The GPU, port and
        store checks are then not checked, never failed.
    type: bool
    default: false
  defaults:
    description: The role defaults of the variables listed above, for hosts that do not set them.
    type: dict
    required: true
attributes:
  check_mode:
    support: full
    description: It reads and computes only.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to show.
  platform:
    support: N/A
    platforms: posix
    description: Runs on the controller.
"""

EXAMPLES = r"""
- name: Plan the fleet
  vllm_fleet.serving.fleet_plan:
    hosts: "{{ ansible_play_hosts }}"
    fleet_hosts: "{{ groups['vllm_servers'] }}"
    offline: true
    defaults:
      vllm_server_instances: []
      vllm_server_declared_gpus: {}
      model_sync_models: []
      vllm_server_instance_dir: /var/lib/vllm-fleet/instances
      vllm_server_shutdown_timeout: 20
      vllm_server_golden_prompts: {}
  run_once: true
  register: plan
"""

RETURN = r"""
plans:
  description: >-
    By host: C(instances) (each with C(instance), C(command), C(argv) and C(checks), every check a
    C(check), C(status) of pass, fail or not checked, and C(detail)), C(host_errors), C(failures)
    and C(ok).
  returned: always
  type: dict
refused:
  description: >-
    Every failed check of every host, each as C(host: failure) (empty when all passed).
  returned: always
  type: list
  elements: str
"""
