"""Model sources as ``model_sync_models`` lists them: entry checks, pins, hub downloads, GGUF.

Pure Python without Ansible imports, used on the controller by the ``model_source`` action
(which entries are valid, which revision each model's ``current`` link names, the commands that
download a pinned hub revision or import a GGUF file, where their results go) and unit-tested
alone.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from ansible_collections.vllm_fleet.serving.plugins.module_utils.revision_store import CURRENT_LINK

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

SOURCE_TYPES = ("directory", "nfs", "huggingface", "modelscope", "gguf")
HUB_TYPES = ("huggingface", "modelscope")
ENTRY_KEYS = ("name", "revision", "type", "source", "hub_revision", "include", "current")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
HUB_REPO_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
HF_COMMIT_PATTERN = re.compile(r"^[0-9a-f]{40}$")
# Branch names move: a revision pinned to one is no pin at all.
MOVING_REVISIONS = ("main", "master", "HEAD", "latest")
GGUF_MAGIC = b"GGUF"


# --- entries ----------------------------------------------------------------------------------


def entry_type(entry: Mapping[str, Any]) -> str:
    return str(entry.get("type") or "directory")


def hub_revision(entry: Mapping[str, Any]) -> str:
    """The hub revision to download: ``hub_revision``, else the entry's own ``revision``."""
    return str(entry.get("hub_revision") or entry.get("revision") or "")


def entry_key(entry: Mapping[str, Any]) -> str:
    return f"{entry.get('name')}@{entry.get('revision')}"


def validate_models(models: Any, setting: str = "model_sync_models") -> list[str]:
    """Problems with a list of model entries, each naming the setting and what is allowed."""
    if not isinstance(models, list):
        got = type(models).__name__
        return [f"{setting} must be a list of mappings (name, revision, source, type), got {got}"]
    errors = []
    seen: dict[str, Mapping[str, Any]] = {}
    current_marks: dict[str, int] = {}
    for index, entry in enumerate(models):
        where = f"{setting}[{index}]"
        if not isinstance(entry, dict):
            errors.append(f"{where} must be a mapping with name, revision and source")
            continue
        where = f"{where} ({entry_key(entry)})"
        unknown = sorted(set(entry) - set(ENTRY_KEYS))
        if unknown:
            errors.append(f"{where}: unknown keys {', '.join(unknown)}; allowed: {', '.join(ENTRY_KEYS)}")
        for field in ("name", "revision"):
            value = entry.get(field)
            if not isinstance(value, str) or not NAME_PATTERN.match(value):
                errors.append(
                    f"{where}: {field} {value!r} must be 1-128 characters of letters, digits, '.', '_', "
                    "'+' or '-', starting with a letter or digit"
                )
        if entry.get("revision") == CURRENT_LINK:
            errors.append(f"{where}: revision 'current' is reserved for the store's current link")
        kind = entry_type(entry)
        if kind not in SOURCE_TYPES:
            errors.append(f"{where}: type {kind!r} is unknown; allowed: {', '.join(SOURCE_TYPES)}")
            continue
        source = entry.get("source")
        if not isinstance(source, str) or not source:
            errors.append(f"{where}: source is required ({_source_help(kind)})")
        elif kind in HUB_TYPES and not HUB_REPO_PATTERN.match(source):
            errors.append(f"{where}: source {source!r} must be a {kind} repository id like 'org/model'")
        elif kind in ("directory", "nfs", "gguf") and not source.startswith("/"):
            errors.append(f"{where}: source {source!r} must be an absolute path ({_source_help(kind)})")
        if kind in HUB_TYPES:
            pinned = hub_revision(entry)
            if kind == "huggingface" and not HF_COMMIT_PATTERN.match(pinned):
                errors.append(
                    f"{where}: a huggingface source must be pinned to a full 40-character commit hash "
                    f"(hub_revision, else revision); got {pinned!r}"
                )
            elif kind == "modelscope" and (not pinned or pinned in MOVING_REVISIONS):
                errors.append(
                    f"{where}: a modelscope source must be pinned to a tag or commit (hub_revision, else "
                    f"revision), not the moving {pinned or 'default'} branch"
                )
        elif "hub_revision" in entry:
            errors.append(f"{where}: hub_revision only applies to types {', '.join(HUB_TYPES)}")
        include = entry.get("include")
        if include is not None and (
            kind not in HUB_TYPES
            or not isinstance(include, list)
            or not all(isinstance(p, str) for p in include)
        ):
            errors.append(f"{where}: include must be a list of file patterns, for hub types only")
        if not isinstance(entry.get("current", False), bool):
            errors.append(f"{where}: current must be true or false")
        elif entry.get("current"):
            current_marks[str(entry.get("name"))] = current_marks.get(str(entry.get("name")), 0) + 1
        key = entry_key(entry)
        if key in seen:
            if _source_identity(seen[key]) != _source_identity(entry):
                errors.append(f"{where}: {key} is listed twice with different sources")
        else:
            seen[key] = entry
    for name, count in sorted(current_marks.items()):
        if count > 1:
            errors.append(f"{setting}: model {name} has {count} entries with current: true; at most one")
    return errors


def _source_identity(entry: Mapping[str, Any]) -> tuple[str, str, str]:
    return (
        entry_type(entry),
        str(entry.get("source")),
        hub_revision(entry) if entry_type(entry) in HUB_TYPES else "",
    )


def _source_help(kind: str) -> str:
    return {
        "directory": "a model directory on the controller",
        "nfs": "a model directory already mounted on the hosts",
        "gguf": "a .gguf file on the controller",
        "huggingface": "a Hugging Face repository id",
        "modelscope": "a ModelScope repository id",
    }[kind]


def current_revisions(models: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Per model name, the revision its ``current`` link points to.

    The entry marked ``current: true``, else the last entry of that name in the list (the
    newest requested revision: append a new revision to switch, reorder or mark to roll back).
    """
    chosen: dict[str, str] = {}
    marked: set[str] = set()
    for entry in models:
        name, revision = str(entry["name"]), str(entry["revision"])
        if entry.get("current"):
            chosen[name] = revision
            marked.add(name)
        elif name not in marked:
            chosen[name] = revision
    return chosen


def is_gguf(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == GGUF_MAGIC
    except OSError:
        return False


# --- hub downloads -----------------------------------------------------------------------------

# Run by the hub Python with the token (possibly empty) on standard input: never on a command
# line, in the environment or in Ansible's output. argv: repo, revision, destination, patterns.
HF_DOWNLOAD = """\
import sys
from huggingface_hub import snapshot_download
token = sys.stdin.read().strip() or None
repo, revision, dest, *patterns = sys.argv[1:]
snapshot_download(repo_id=repo, revision=revision, local_dir=dest, token=token,
                  allow_patterns=patterns or None)
"""

MODELSCOPE_DOWNLOAD = """\
import sys
from modelscope.hub.api import HubApi
from modelscope.hub.snapshot_download import snapshot_download
token = sys.stdin.read().strip()
if token:
    HubApi().login(token)
repo, revision, dest, *patterns = sys.argv[1:]
snapshot_download(repo, revision=revision, local_dir=dest, allow_patterns=patterns or None)
"""


def hub_download_argv(entry: Mapping[str, Any], dest: str, python: str) -> list[str]:
    """The command that downloads a pinned hub revision into ``dest`` (token on stdin)."""
    kind = entry_type(entry)
    script = {"huggingface": HF_DOWNLOAD, "modelscope": MODELSCOPE_DOWNLOAD}[kind]
    return [
        python,
        "-c",
        script,
        str(entry["source"]),
        hub_revision(entry),
        dest,
        *list(entry.get("include") or []),
    ]


def hub_download_env(kind: str, base: Mapping[str, str]) -> dict[str, str]:
    """The download's environment: the caller's, without tokens, with telemetry off."""
    env = {
        k: v
        for k, v in base.items()
        if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_API_TOKEN")
    }
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    env["DO_NOT_TRACK"] = "1"
    if kind == "huggingface":
        env.pop("HF_HUB_OFFLINE", None)
    return env


def hub_dir(work_dir: str, entry: Mapping[str, Any]) -> str:
    repo = str(entry["source"]).replace("/", "--")
    return os.path.join(work_dir, "hub", entry_type(entry), repo, hub_revision(entry))


def gguf_dir(work_dir: str, entry: Mapping[str, Any]) -> str:
    return os.path.join(work_dir, "gguf", str(entry["name"]), str(entry["revision"]))


def gguf_import_argv(python: str, gguf_file: str, dest: str) -> list[str]:
    return [python, "-m", "vllm_fleet.gguf_import", gguf_file, dest]
