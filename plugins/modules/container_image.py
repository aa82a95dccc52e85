#!/usr/bin/python
# Copyright: vllm-fleet maintainers
# Apache License 2.0 (see galaxy.yml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: container_image
short_description: Make a container engine hold an image pushed as an archive, verified by its ID
version_added: "0.3.0"
description:
  - An image reaches an air-gapped host as the archive C(docker save) made on the controller;
    this module loads it into docker or podman and verifies the loaded image's ID (the sha256 of
    its config), which the controller read from the archive.
  - C(state=query) only says whether the engine has the image with that ID (so the archive is
    pushed only where it is missing); C(state=present) loads the archive where it has not.
author:
  - vllm-fleet maintainers (!UNKNOWN)
options:
  state:
    description: Whether to load (present) or only look (query).
    type: str
    choices: [present, query]
    default: present
  engine:
    description: The engine's client.
    type: path
    required: true
  image:
    description: The image's name and tag, as the archive tags it.
    type: str
    required: true
  id:
    description: The image's ID (C(sha256:<hex>) or C(<hex>)).
    type: str
    required: true
  archive:
    description: The archive on the host (needed where the image is missing).
    type: path
notes:
  - Check mode loads nothing and reports what it would do.
"""

EXAMPLES = r"""
- name: Load the vLLM image pushed to the host
  vllm_fleet.serving.container_image:
    engine: /usr/bin/podman
    image: localhost/vllm-fleet/vllm-cpu:0.32.0
    id: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
    archive: /var/lib/vllm-fleet/images/vllm-cpu-0.32.0.tar
"""

RETURN = r"""
present:
  description: Whether the engine holds the image with that ID (after the load, for state=present).
  returned: always
  type: bool
"""

import os  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.vllm_fleet.serving.plugins.module_utils.container_images import (  # noqa: E402
    Engine,
    ImageError,
    normal_id,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["present", "query"], "default": "present"},
            "engine": {"type": "path", "required": True},
            "image": {"type": "str", "required": True},
            "id": {"type": "str", "required": True},
            "archive": {"type": "path"},
        },
        supports_check_mode=True,
    )
    params = module.params
    engine = Engine(params["engine"], module.run_command)
    try:
        wanted = normal_id(params["id"])
        present = engine.image_id(params["image"]) == wanted
        if params["state"] == "query" or present or module.check_mode:
            module.exit_json(changed=not present and params["state"] == "present", present=present)
        if not (params["archive"] and os.path.isfile(params["archive"])):
            missing = f"{params['image']} ({wanted}) is not loaded"
            module.fail_json(msg=f"{missing} and no archive is at {params['archive']}")
        engine.ensure(params["image"], wanted, params["archive"])
    except ImageError as error:
        module.fail_json(msg=str(error))
    module.exit_json(changed=True, present=True)


if __name__ == "__main__":
    main()
