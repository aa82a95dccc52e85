#!/usr/bin/python
# Copyright: vllm-fleet maintainers
# Apache License 2.0 (see galaxy.yml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: model_store
short_description: Stage, verify, publish and prune model revisions in a host's model store
version_added: "0.1.0"
description:
  - The host side of the C(model_sync) role. A revision directory C(<store>/<name>/<revision>)
    that exists is complete and verified against the manifest computed on the controller; copies
    are made in C(<store>/<name>/.partial-<revision>) and renamed into place only after every
    file's size and sha256 matched.
  - C(action=stage) checks a published revision against the manifest (C(reverify) re-hashes
    it), adopts a revision directory without a record if it matches, checks the free space
    against what still has to be copied, creates the staging directory and hard-links into it
    the files that a published revision of the same model already holds (same sha256).
  - C(action=publish) verifies the staging directory, removes what failed (so the next run copies
    it again) and fails, or writes the record and renames the directory into place.
  - C(action=prune) first switches the C(current) link to C(current) when given, then removes
    published revisions beyond C(keep) that are neither requested, nor the target of the
    C(current) link, nor used by an instance link under C(instance_dir), and staging
    directories of revisions no longer requested.
  - C(action=inspect) checks a model directory on the host (an NFS mount) and, with C(hash),
    returns its manifest (cached under C(<store>/.cache) by file stat signature).
author:
  - vllm-fleet maintainers (!UNKNOWN)
options:
  action:
    description: What to do.
    type: str
    required: true
    choices: [stage, publish, prune, inspect]
  store:
    description: The model store.
    type: path
    required: true
  name:
    description: Model name (stage, publish, prune).
    type: str
  revision:
    description: Revision name (stage, publish).
    type: str
  manifest:
    description: The revision's manifest (stage, publish), as the C(model_source) action returns it.
    type: dict
  free_space_margin:
    description: Bytes that must stay free on the store's filesystem after the copy (stage).
    type: int
    default: 0
  reverify:
    description: Re-hash a published revision instead of checking its record and file sizes (stage).
    type: bool
    default: false
  workers:
    description: Hashing threads; 0 is one per CPU, at most 8.
    type: int
    default: 0
  keep:
    description: Old revisions to keep besides the requested, current and in-use ones (prune).
    type: int
    default: 2
  requested:
    description: Revisions the inventory requests on this host (prune).
    type: list
    elements: str
    default: []
  protected:
    description: Further revisions never to remove, e.g. those of the host's instances (prune).
    type: list
    elements: str
    default: []
  instance_dir:
    description: Directory of per-instance C(model) links; their revisions are kept (prune).
    type: path
  current:
    description:
      - Revision that C(<store>/<name>/current) is to point at (prune), switched first and
        atomically (a new link renamed over the old one); it must be published. Kept by the prune.
    type: str
  path:
    description: Model directory to inspect (inspect).
    type: path
  hash:
    description: Compute the manifest of C(path) too (inspect).
    type: bool
    default: false
extends_documentation_fragment:
  - action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
"""

EXAMPLES = r"""
- name: Stage a revision
  vllm_fleet.serving.model_store:
    action: stage
    store: /var/lib/vllm-fleet/models
    name: tiny-llama
    revision: seed0
    manifest: "{{ manifest }}"
    free_space_margin: 1073741824
"""

RETURN = r"""
published:
  description: Whether the revision is published (stage, publish).
  type: bool
  returned: stage, publish
staging:
  description: The staging directory (stage).
  type: str
  returned: stage
linked:
  description: Staged files that are hard links of a published revision's files (rsync skips them).
  type: list
  returned: stage
needed_bytes:
  description: Bytes still to copy (stage).
  type: int
  returned: stage
removed:
  description: Directories removed (prune).
  type: list
  returned: prune
manifest:
  description: The manifest of C(path) (inspect with C(hash)).
  type: dict
  returned: inspect
problems:
  description: What keeps C(path) from being a model directory (inspect).
  type: list
  returned: inspect
"""

import os  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.vllm_fleet.serving.plugins.module_utils.model_files import (  # noqa: E402
    ManifestError,
    cached_manifest,
    check_manifest_shape,
    check_model_dir,
    verify_tree,
    write_json_atomic,
)
from ansible_collections.vllm_fleet.serving.plugins.module_utils.model_sources import (  # noqa: E402
    NAME_PATTERN,
)
from ansible_collections.vllm_fleet.serving.plugins.module_utils.revision_store import (  # noqa: E402
    CURRENT_LINK,
    RECORD_NAME,
    STAGING_PREFIX,
    TRASH_PREFIX,
    free_bytes,
    link_plan,
    prune_plan,
    published_revisions,
    quick_check,
    read_record,
    remove_tree,
    revisions_in_use,
    verified_links,
)

MAX_LISTED = 10


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{size} B"


def _makedirs(path: str) -> bool:
    if os.path.isdir(path):
        return False
    os.makedirs(path, mode=0o755, exist_ok=True)
    os.chmod(path, 0o755)
    return True


def _shorten(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def stage(module: AnsibleModule, p: dict[str, Any]) -> dict[str, Any]:
    manifest = p["manifest"]
    model_dir = os.path.join(p["store"], p["name"])
    revision_dir = os.path.join(model_dir, p["revision"])
    staging = os.path.join(model_dir, STAGING_PREFIX + p["revision"])
    where = f"{p['name']}@{p['revision']} in {model_dir}"
    result: dict[str, Any] = {"changed": False, "staging": staging, "revision_dir": revision_dir}

    if os.path.islink(revision_dir) or (os.path.exists(revision_dir) and not os.path.isdir(revision_dir)):
        module.fail_json(msg=f"{where}: {revision_dir} is not a directory; remove it", **result)
    if os.path.isdir(revision_dir):
        record = read_record(revision_dir)
        if record is None:
            # A directory from before records (or made by hand): adopt it only if it matches.
            check = verify_tree(revision_dir, manifest, p["workers"])
            if any(check.values()):
                module.fail_json(
                    msg=(
                        f"{where}: {revision_dir} exists without a model_sync record and differs from the "
                        f"source ({_problems(check)}); move it away or give the new content a new revision"
                    ),
                    **result,
                )
            if not module.check_mode:
                _write_record(revision_dir, p, manifest)
            return dict(result, changed=True, published=True, adopted=True, linked=[], needed_bytes=0)
        if record["manifest"].get("digest") != manifest["digest"]:
            module.fail_json(
                msg=(
                    f"{where}: the host holds different content for this revision (manifest digest "
                    f"{record['manifest'].get('digest', '?')[:12]}, "
                    f"the source's is {manifest['digest'][:12]}). "
                    "Revisions are immutable: give the new content a new revision in model_sync_models."
                ),
                **result,
            )
        if p["reverify"]:
            check = verify_tree(revision_dir, manifest, p["workers"])
            problems = _problems(check) if any(check.values()) else ""
        else:
            problems = _shorten(quick_check(revision_dir, manifest))
        if problems:
            module.fail_json(
                msg=(
                    f"{where}: the published revision was altered on the host ({problems}). Remove "
                    f"{revision_dir} (after moving its instances to another revision) to copy it again."
                ),
                **result,
            )
        return dict(result, published=True, linked=[], needed_bytes=0)

    published = published_revisions(model_dir)
    plan = link_plan(manifest, staging, published, model_dir)
    to_link = sum(next(f["size"] for f in manifest["files"] if f["path"] == rel) for rel in plan["links"])
    free = free_bytes(model_dir)
    margin = p["free_space_margin"]
    result.update(needed_bytes=plan["needed_bytes"], free_bytes=free, total_bytes=manifest["total_bytes"])
    if plan["needed_bytes"] + margin > free:
        module.fail_json(
            msg=(
                f"{where}: not enough free space on {module.params['store']} (model_sync_store): "
                f"{_human(free)} free, the copy needs {_human(plan['needed_bytes'])} of the revision's "
                f"{_human(manifest['total_bytes'])} plus model_sync_free_space_margin {_human(margin)}. "
                "Free space, lower model_sync_keep_revisions, or point model_sync_store at a larger disk."
            ),
            **result,
        )
    changed = False
    if module.check_mode:
        changed = True
    else:
        for path in (p["store"], model_dir, staging):
            changed = _makedirs(path) or changed
        for rel, origin in sorted(plan["links"].items()):
            target = os.path.join(staging, rel)
            _makedirs(os.path.dirname(target))
            tmp = f"{target}.vllm-fleet-link"
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.link(origin, tmp)
            os.replace(tmp, target)
            changed = True
    linked = sorted(set(plan["linked"]) | set(plan["links"]))
    result.update(
        changed=changed,
        published=False,
        linked=linked,
        linked_bytes=to_link,
        diff={
            "before": "",
            "after": f"staging {staging}: {len(linked)} files linked, {plan['needed_bytes']} bytes to copy\n",
        },
    )
    return result


def _problems(check: dict[str, list[str]]) -> str:
    words = {
        "missing": "missing",
        "size": "wrong size",
        "sha256": "wrong sha256",
        "extra": "not in the manifest",
    }
    return "; ".join(f"{words[k]}: {_shorten(v)}" for k, v in check.items() if v)


def _write_record(directory: str, p: dict[str, Any], manifest: dict[str, Any]) -> None:
    record = {
        "name": p["name"],
        "revision": p["revision"],
        "manifest": manifest,
        "published_at": time.time(),
    }
    write_json_atomic(os.path.join(directory, RECORD_NAME), record, 0o644)


def _fix_modes(root: str) -> None:
    os.chmod(root, 0o755)
    for current, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(current, name), 0o755)
        for name in files:
            path = os.path.join(current, name)
            if not os.path.islink(path) and os.stat(path).st_mode & 0o7777 != 0o644:
                os.chmod(path, 0o644)


def _remove_leftovers(staging: str, manifest: dict[str, Any]) -> list[str]:
    """Hidden entries (rsync's temporary files and partial dirs) and files not in the manifest."""
    expected = {f["path"] for f in manifest["files"]}
    removed = []
    for current, dirs, files in os.walk(staging, topdown=True):
        rel_dir = os.path.relpath(current, staging)
        for name in list(dirs):
            if name.startswith("."):
                remove_tree(os.path.join(current, name))
                dirs.remove(name)
                removed.append(os.path.normpath(os.path.join(rel_dir, name)))
        for name in files:
            rel = os.path.normpath(os.path.join(rel_dir, name)).replace(os.sep, "/")
            if name.startswith(".") or rel not in expected:
                os.unlink(os.path.join(current, name))
                removed.append(rel)
    return removed


def publish(module: AnsibleModule, p: dict[str, Any]) -> dict[str, Any]:
    manifest = p["manifest"]
    model_dir = os.path.join(p["store"], p["name"])
    revision_dir = os.path.join(model_dir, p["revision"])
    staging = os.path.join(model_dir, STAGING_PREFIX + p["revision"])
    where = f"{p['name']}@{p['revision']} on this host"
    result: dict[str, Any] = {"changed": False, "revision_dir": revision_dir}
    if os.path.isdir(revision_dir) and not os.path.islink(revision_dir):
        record = read_record(revision_dir)
        if record is None or record["manifest"].get("digest") != manifest["digest"]:
            module.fail_json(
                msg=f"{where}: {revision_dir} exists and is not this revision's content", **result
            )
        return dict(result, published=True)
    if module.check_mode:
        return dict(
            result,
            changed=True,
            published=False,
            diff={
                "before": "",
                "after": f"{revision_dir}: verified copy of {len(manifest['files'])} files\n",
            },
        )
    if not os.path.isdir(staging):
        module.fail_json(msg=f"{where}: no staging directory {staging}; nothing was copied", **result)
    _remove_leftovers(staging, manifest)
    # Hard links of files verified when their revision was published need no second hashing.
    trusted = verified_links(manifest, staging, published_revisions(model_dir), model_dir)
    check = verify_tree(staging, manifest, p["workers"], trusted)
    if any(check.values()):
        # What failed is removed, so the next run copies it again instead of trusting it.
        for rel in check["size"] + check["sha256"]:
            os.unlink(os.path.join(staging, rel))
        module.fail_json(
            msg=(
                f"{where}: the copy in {staging} does not match the manifest computed on the "
                f"controller ({_problems(check)}). Nothing was published; the files that failed were "
                "removed from the staging directory and are copied again on the next run. If the source "
                "changed while it was copied, run again; if it keeps failing, check the source and the "
                "host's disk, and remove the cached manifests in model_sync_controller_dir/manifests."
            ),
            verification=check,
            **result,
        )
    _fix_modes(staging)
    _write_record(staging, p, manifest)
    os.rename(staging, revision_dir)
    fd = os.open(model_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return dict(
        result,
        changed=True,
        published=True,
        diff={"before": "", "after": f"{revision_dir}: verified copy of {len(manifest['files'])} files\n"},
    )


def switch_current(module: AnsibleModule, p: dict[str, Any]) -> dict[str, Any]:
    """Point <model>/current at the revision ``current``: a new link renamed over the old one."""
    model_dir = os.path.join(p["store"], p["name"])
    link = os.path.join(model_dir, CURRENT_LINK)
    target = p["current"]
    old = os.readlink(link) if os.path.islink(link) else None
    if old == target:
        return {"changed": False}
    if os.path.lexists(link) and old is None:
        module.fail_json(msg=f"{link} exists and is not a symbolic link; move it away")
    if not module.check_mode:
        if read_record(os.path.join(model_dir, target)) is None:
            module.fail_json(
                msg=f"{p['name']}@{target} is not published in {model_dir}; not switching current"
            )
        tmp = f"{link}.{os.getpid()}.tmp"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(target, tmp)
        os.rename(tmp, link)
    return {"changed": True, "diff": {"before": f"current -> {old}\n", "after": f"current -> {target}\n"}}


def prune(module: AnsibleModule, p: dict[str, Any]) -> dict[str, Any]:
    """Switch the current link (when ``current`` is given), then remove what is no longer kept."""
    switched: dict[str, Any] = switch_current(module, p) if p["current"] else {"changed": False}
    model_dir = os.path.join(p["store"], p["name"])
    published = published_revisions(model_dir)
    protected = set(p["requested"]) | set(p["protected"])
    current = os.path.join(model_dir, CURRENT_LINK)
    if p["current"]:
        protected.add(p["current"])
    if os.path.islink(current):
        protected.add(os.path.basename(os.path.normpath(os.readlink(current))))
    if p["instance_dir"]:
        protected |= set(revisions_in_use(p["instance_dir"], model_dir))
    plan = prune_plan(published, p["keep"], protected)
    doomed = [os.path.join(model_dir, r) for r in plan["remove"]]
    try:
        entries = sorted(os.listdir(model_dir))
    except OSError:
        entries = []
    for name in entries:
        path = os.path.join(model_dir, name)
        stale_staging = name.startswith(STAGING_PREFIX) and name[len(STAGING_PREFIX) :] not in p["requested"]
        if (
            (stale_staging or name.startswith(TRASH_PREFIX))
            and os.path.isdir(path)
            and not os.path.islink(path)
        ):
            doomed.append(path)
    if not module.check_mode:
        for path in doomed:
            remove_tree(path)
    before = switched.get("diff", {}).get("before", "") + "".join(f"{d}\n" for d in doomed)
    return {
        "changed": switched["changed"] or bool(doomed),
        "current_switched": switched["changed"],
        "removed": doomed,
        "kept": plan["keep"],
        "diff": {"before": before, "after": switched.get("diff", {}).get("after", "")},
    }


def inspect(module: AnsibleModule, p: dict[str, Any]) -> dict[str, Any]:
    path = p["path"]
    problems = check_model_dir(path)
    result: dict[str, Any] = {"changed": False, "problems": problems}
    if p["hash"] and not problems:
        cache = os.path.join(p["store"], ".cache", "manifests")
        manifest, computed = cached_manifest(path, cache, p["workers"], write=not module.check_mode)
        result.update(manifest=manifest, computed=computed)
        if p["name"] and p["revision"]:
            result["model"] = {
                "key": f"{p['name']}@{p['revision']}",
                "name": p["name"],
                "revision": p["revision"],
                "type": "nfs",
                "path": path,
                "manifest": manifest,
                "pending": False,
            }
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "action": {"type": "str", "required": True, "choices": ["stage", "publish", "prune", "inspect"]},
            "store": {"type": "path", "required": True},
            "name": {"type": "str"},
            "revision": {"type": "str"},
            "manifest": {"type": "dict"},
            "free_space_margin": {"type": "int", "default": 0},
            "reverify": {"type": "bool", "default": False},
            "workers": {"type": "int", "default": 0},
            "keep": {"type": "int", "default": 2},
            "requested": {"type": "list", "elements": "str", "default": []},
            "protected": {"type": "list", "elements": "str", "default": []},
            "instance_dir": {"type": "path"},
            "current": {"type": "str"},
            "path": {"type": "path"},
            "hash": {"type": "bool", "default": False},
        },
        required_if=[
            ("action", "stage", ("name", "revision", "manifest")),
            ("action", "publish", ("name", "revision", "manifest")),
            ("action", "prune", ("name",)),
            ("action", "inspect", ("path",)),
        ],
        supports_check_mode=True,
    )
    p = module.params
    for field in ("name", "revision", "current"):
        if p[field] is not None and not NAME_PATTERN.match(p[field]):
            module.fail_json(msg=f"{field} {p[field]!r} is not a valid store name")
    if p["manifest"] is not None:
        problems = check_manifest_shape(p["manifest"])
        if problems:
            module.fail_json(msg="model_store: bad manifest: " + "; ".join(problems[:MAX_LISTED]))
    actions = {"stage": stage, "publish": publish, "prune": prune, "inspect": inspect}
    try:
        result = actions[p["action"]](module, p)
    except (OSError, ManifestError) as err:
        module.fail_json(msg=f"model_store {p['action']}: {err}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
