"""The store of model revisions on a host: its layout, records, links, space and pruning.

Pure Python without Ansible imports, used on the hosts by the ``model_store`` module (staging,
publication, the ``current`` link, pruning) and unit-tested alone. Per model name::

    <store>/<name>/<revision>/            published: complete, verified, never written again
    <store>/<name>/<revision>/.vllm-fleet-manifest.json   the record: manifest + publication time
    <store>/<name>/.partial-<revision>/   staging: rsync copies here (resumable), verified, renamed
    <store>/<name>/current -> <revision>  switched atomically (symlink + rename)
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

RECORD_NAME = ".vllm-fleet-manifest.json"
STAGING_PREFIX = ".partial-"
TRASH_PREFIX = ".trash-"
CURRENT_LINK = "current"


def read_record(revision_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(revision_dir, RECORD_NAME), encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("manifest"), dict) else None


def published_revisions(model_dir: str) -> dict[str, dict[str, Any]]:
    """The published revisions of a model (a directory with a record), by revision name."""
    out: dict[str, dict[str, Any]] = {}
    try:
        names = os.listdir(model_dir)
    except OSError:
        return out
    for name in names:
        path = os.path.join(model_dir, name)
        if name.startswith(".") or name == CURRENT_LINK or os.path.islink(path) or not os.path.isdir(path):
            continue
        record = read_record(path)
        if record is not None:
            out[name] = record
    return out


def quick_check(revision_dir: str, manifest: Mapping[str, Any]) -> list[str]:
    """Cheap check of a published revision: every file there with its size (no hashing)."""
    problems = []
    for entry in manifest["files"]:
        try:
            size = os.stat(os.path.join(revision_dir, entry["path"])).st_size
        except OSError:
            problems.append(f"{entry['path']} is missing")
            continue
        if size != entry["size"]:
            problems.append(f"{entry['path']} has {size} bytes, not {entry['size']}")
    return problems


def verified_links(
    manifest: Mapping[str, Any], staging: str, published: Mapping[str, Mapping[str, Any]], model_dir: str
) -> list[str]:
    """Files of ``staging`` that are hard links of a published file recorded with the same sha256."""
    by_hash: dict[str, list[str]] = {}
    for revision, record in published.items():
        for entry in record["manifest"].get("files", []):
            by_hash.setdefault(entry["sha256"], []).append(os.path.join(model_dir, revision, entry["path"]))
    out = []
    for entry in manifest["files"]:
        try:
            st = os.stat(os.path.join(staging, entry["path"]))
        except OSError:
            continue
        if any(_same_file(origin, st, entry["size"]) for origin in by_hash.get(entry["sha256"], [])):
            out.append(entry["path"])
    return sorted(out)


def link_plan(
    manifest: Mapping[str, Any], staging: str, published: Mapping[str, Mapping[str, Any]], model_dir: str
) -> dict[str, Any]:
    """How the staging directory of a new revision gets its files without copying them all.

    A file whose sha256 a published revision already holds (verified when it was published) is
    hard-linked from there; one already in staging with the right size is kept for rsync to
    check (a resumed copy). Returns ``links`` ({relpath: source path}), ``linked`` (relpaths
    already hard links of a published file), ``needed_bytes`` (what still has to come over).
    """
    by_hash: dict[str, str] = {}
    for revision, record in sorted(published.items()):
        for entry in record["manifest"].get("files", []):
            by_hash.setdefault(entry["sha256"], os.path.join(model_dir, revision, entry["path"]))
    links: dict[str, str] = {}
    linked: list[str] = []
    needed = 0
    for entry in manifest["files"]:
        rel, size = entry["path"], entry["size"]
        target = os.path.join(staging, rel)
        origin = by_hash.get(entry["sha256"])
        try:
            st = os.stat(target)
        except OSError:
            st = None
        if origin is not None and _same_file(origin, st, size):
            linked.append(rel)
        elif origin is not None and _size_of(origin) == size:
            links[rel] = origin
        elif st is None or st.st_size != size:
            needed += size - (st.st_size if st is not None and st.st_size < size else 0)
    return {"links": links, "linked": sorted(linked), "needed_bytes": needed}


def _size_of(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _same_file(origin: str, st: os.stat_result | None, size: int) -> bool:
    if st is None or st.st_size != size:
        return False
    try:
        other = os.stat(origin)
    except OSError:
        return False
    return (other.st_ino, other.st_dev) == (st.st_ino, st.st_dev)


def free_bytes(path: str) -> int:
    """Free bytes for an unprivileged writer on the filesystem that holds (or will hold) ``path``."""
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    st = os.statvfs(probe)
    return st.f_bavail * st.f_frsize


def prune_plan(
    published: Mapping[str, Mapping[str, Any]], keep: int, protected: Iterable[str]
) -> dict[str, list[str]]:
    """Which published revisions to remove: all but the protected ones and ``keep`` newest others."""
    protect = set(protected)
    others = sorted(
        (r for r in published if r not in protect),
        key=lambda r: (float(published[r].get("published_at", 0)), r),
        reverse=True,
    )
    return {
        "keep": sorted(protect & set(published)) + sorted(others[: max(keep, 0)]),
        "remove": sorted(others[max(keep, 0) :]),
    }


def revisions_in_use(instance_dir: str, model_dir: str) -> list[str]:
    """Revisions of ``model_dir`` that an instance's ``model`` link points at on this host.

    Also those its ``previous-model`` link (the rolling upgrade's way back) points at.
    """
    used = set()
    try:
        names = os.listdir(instance_dir)
    except OSError:
        return []
    real_model_dir = os.path.realpath(model_dir)
    for name, kind in itertools.product(names, ("model", "previous-model")):
        link = os.path.join(instance_dir, name, kind)
        if not os.path.islink(link):
            continue
        target = os.readlink(link)
        target = os.path.normpath(os.path.join(os.path.dirname(link), target))
        parent, revision = os.path.split(target)
        if os.path.realpath(parent) == real_model_dir:
            used.add(revision)
    return sorted(used)


def remove_tree(path: str) -> None:
    """Take a directory out of sight at once (rename), then delete it."""
    parent, name = os.path.split(path.rstrip("/"))
    trash = os.path.join(parent, f"{TRASH_PREFIX}{name.lstrip('.')}-{os.getpid()}-{time.time_ns()}")
    os.rename(path, trash)
    shutil.rmtree(trash)
