#!/usr/bin/python
# Copyright: vllm-fleet maintainers
# Apache License 2.0 (see galaxy.yml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: model_source
short_description: Check, fetch and describe the models that model_sync places, on the controller
version_added: "0.1.0"
description:
  - The controller side of the C(model_sync) role; an action plugin, it always runs on the
    controller. For each entry of C(models) (as in C(model_sync_models)) it checks the entry
    (name, revision, type, source, a pinned hub revision), fetches what is not local yet, checks
    the model directory (config.json, weights, tokenizer) and computes its manifest (relative
    path, size and sha256 of every file) once.
  - C(directory) sources are used in place. C(gguf) files are imported with
    C(python -m vllm_fleet.gguf_import) into C(<work_dir>/gguf/<name>/<revision>).
    C(huggingface) and C(modelscope) revisions are downloaded once into
    C(<work_dir>/hub/<type>/<org--repo>/<revision>) with the hub's own library, the token on the
    download's standard input (never on a command line, in the environment or in the output).
    C(nfs) sources are paths on the hosts and are left to the C(model_store) module.
  - Concurrent forks share the work through lock files under C(<work_dir>/locks); manifests are
    cached under C(<work_dir>/manifests) and reused while no file's size, mtime, ctime or inode
    changed.
  - In check mode nothing is fetched; entries not fetched yet are returned as C(pending).
author:
  - vllm-fleet maintainers (!UNKNOWN)
options:
  models:
    description:
      - Model entries (C(name), C(revision), C(type), C(source), C(hub_revision), C(include),
        C(current)).
    type: list
    elements: dict
    required: true
  work_dir:
    description: Controller directory for downloads, imports, manifests and locks.
    type: path
    required: true
  fetch:
    description: Download or import sources that are not local yet (never in check mode).
    type: bool
    default: true
  manifests:
    description: Compute the manifests (false for a quick preflight).
    type: bool
    default: true
  hub_python:
    description: Python with C(huggingface_hub) or C(modelscope) installed.
    type: str
    default: python3
  gguf_python:
    description: Python with the C(vllm_fleet) package (and torch, transformers, gguf) installed.
    type: str
    default: python3
  hf_token:
    description:
      - Hugging Face token for gated or private repositories. Default, and the way the role passes
        it - the variable C(model_sync_hf_token), read by the action itself so that the secret is
        never part of the task's arguments.
    type: str
    default: ""
  modelscope_token:
    description:
      - ModelScope token for private repositories. Default - the variable C(model_sync_modelscope_token).
    type: str
    default: ""
  workers:
    description: Hashing threads; 0 is one per CPU, at most 8.
    type: int
    default: 0
  setting:
    description: Name of the setting the entries come from, used in messages.
    type: str
    default: model_sync_models
extends_documentation_fragment:
  - action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
"""

EXAMPLES = r"""
- name: Check, fetch and hash the models on the controller
  vllm_fleet.serving.model_source:
    models: "{{ model_sync_models }}"
    work_dir: ~/.cache/vllm-fleet/model_sync
  vars:
    model_sync_hf_token: "{{ vault_hf_token }}"
  register: sources
"""

RETURN = r"""
models:
  description:
    - One entry per model with C(key), C(name), C(revision), C(type), C(path) (the directory to
      copy from, on the controller or, for C(nfs), on the hosts), C(manifest) and C(pending).
  type: list
  returned: always
current:
  description: Per model name, the revision its C(current) link is to point at.
  type: dict
  returned: always
fetched:
  description: Keys of the entries downloaded or imported by this run.
  type: list
  returned: always
"""
