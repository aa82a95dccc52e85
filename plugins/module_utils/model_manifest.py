"""Model directories as the model_sync role sees them: checks, manifests, the host's store.

Pure Python without Ansible imports, shared by the controller side (the ``model_source`` action:
entry checks, hub downloads, GGUF imports, manifests computed once) and the host side (the
``model_store`` module: staging, verification, publication, pruning), and unit-tested alone.

A manifest lists every file of a model directory (relative path, size, sha256), its total size
and a digest of that list. Hidden entries (a path component starting with ``.``) are never part
of a model: hub clients keep their bookkeeping there (``.cache/huggingface``), rsync its partial
files, and the store its own record (:data:`RECORD_NAME`).

The store on a host, per model name::

    <store>/<name>/<revision>/            published: complete, verified, never written again
    <store>/<name>/<revision>/.vllm-fleet-manifest.json   the record: manifest + publication time
    <store>/<name>/.partial-<revision>/   staging: rsync copies here (resumable), verified, renamed
    <store>/<name>/current -> <revision>  switched atomically (symlink + rename)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

MANIFEST_VERSION = 1
RECORD_NAME = ".vllm-fleet-manifest.json"
STAGING_PREFIX = ".partial-"
TRASH_PREFIX = ".trash-"
CURRENT_LINK = "current"
SOURCE_TYPES = ("directory", "nfs", "huggingface", "modelscope", "gguf")
HUB_TYPES = ("huggingface", "modelscope")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
ENTRY_KEYS = ("name", "revision", "type", "source", "hub_revision", "include", "current")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
HUB_REPO_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
HF_COMMIT_PATTERN = re.compile(r"^[0-9a-f]{40}$")
# Branch names move: a revision pinned to one is no pin at all.
MOVING_REVISIONS = ("main", "master", "HEAD", "latest")
GGUF_MAGIC = b"GGUF"
BLOCK = 4 << 20
MODEL_DIR_NEEDS = (
    "a model directory needs config.json (a JSON object), weights (*.safetensors, *.bin or *.pt) "
    "and a tokenizer (tokenizer.json, tokenizer_config.json or tokenizer.model)"
)


class ManifestError(Exception):
    """A directory that cannot be described by a manifest (unreadable, broken links, ...)."""


# --- files and hashes ----------------------------------------------------------------------------


def is_hidden(relpath: str) -> bool:
    """Whether a relative path has a component starting with a dot (never part of a model)."""
    return any(part.startswith(".") for part in relpath.split("/"))


def list_files(root: str) -> list[str]:
    """The relative paths of a model directory's files, sorted, without hidden entries.

    Symbolic links are followed (a directory may point into a hub cache); a link that leads
    nowhere or to something other than a regular file raises :class:`ManifestError`.
    """
    if not os.path.isdir(root):
        raise ManifestError(f"{root} is not a directory")
    found = []
    for current, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            path = os.path.join(current, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            try:
                mode = os.stat(path).st_mode
            except OSError as err:
                raise ManifestError(f"{rel}: {err.strerror}") from err
            if not stat.S_ISREG(mode):
                raise ManifestError(f"{rel} is not a regular file")
            found.append(rel)
    return sorted(found)


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(BLOCK)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def default_workers(workers: int = 0) -> int:
    """Hashing threads: ``workers`` if positive, else one per CPU (at most 8)."""
    return workers if workers > 0 else max(1, min(8, os.cpu_count() or 1))


def hash_files(root: str, relpaths: Sequence[str], workers: int = 0) -> dict[str, str]:
    """sha256 of each file, hashed in parallel threads (hashlib releases the GIL)."""
    if not relpaths:
        return {}
    with ThreadPoolExecutor(max_workers=min(default_workers(workers), len(relpaths))) as pool:
        hashes = list(pool.map(lambda rel: sha256_file(os.path.join(root, rel)), relpaths))
    # No zip(strict=...): hosts may run Pythons older than 3.10.
    return {relpaths[i]: hashes[i] for i in range(len(relpaths))}


def manifest_digest(files: Sequence[Mapping[str, Any]]) -> str:
    """The digest of a file list: equal digests, equal contents."""
    canonical = [{"path": f["path"], "sha256": f["sha256"], "size": int(f["size"])} for f in files]
    text = json.dumps(sorted(canonical, key=lambda f: f["path"]), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def make_manifest(files: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    listed = sorted(
        ({"path": f["path"], "size": int(f["size"]), "sha256": f["sha256"]} for f in files),
        key=lambda f: f["path"],
    )
    return {
        "version": MANIFEST_VERSION,
        "files": listed,
        "total_bytes": sum(f["size"] for f in listed),
        "digest": manifest_digest(listed),
    }


def stat_signature(root: str, relpaths: Sequence[str]) -> dict[str, list[int]]:
    """What tells a file changed without reading it: size, mtime, ctime, inode, device."""
    out = {}
    for rel in relpaths:
        st = os.stat(os.path.join(root, rel))
        out[rel] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
    return out


def build_manifest(root: str, workers: int = 0) -> dict[str, Any]:
    """The manifest of a directory: every (non-hidden) file's path, size and sha256."""
    relpaths = list_files(root)
    sizes = {rel: os.stat(os.path.join(root, rel)).st_size for rel in relpaths}
    hashes = hash_files(root, relpaths, workers)
    return make_manifest({"path": rel, "size": sizes[rel], "sha256": hashes[rel]} for rel in relpaths)


def cached_manifest(
    root: str, cache_dir: str, workers: int = 0, write: bool = True
) -> tuple[dict[str, Any], bool]:
    """The manifest of ``root``, reused from ``cache_dir`` while no file's stat signature changed.

    Returns ``(manifest, computed)``. The cache is keyed by the real path of ``root``; any file
    added, removed, resized, rewritten or touched (ctime) makes it compute the manifest again.
    Then only files no cached manifest knows by the same signature are hashed: a file hard-linked
    (or symlinked, as hub caches do) from a directory hashed before costs nothing.
    """
    real = os.path.realpath(root)
    cache = os.path.join(cache_dir, hashlib.sha256(real.encode()).hexdigest()[:32] + ".json")
    relpaths = list_files(real)
    signature = stat_signature(real, relpaths)
    cached = read_json(cache)
    if cached and cached.get("root") == real and cached.get("signature") == signature:
        manifest = cached.get("manifest")
        if isinstance(manifest, dict) and manifest.get("version") == MANIFEST_VERSION:
            return manifest, False
    known = _known_hashes(cache_dir)
    hashes = {rel: known[_file_key(signature[rel])] for rel in relpaths if _file_key(signature[rel]) in known}
    hashes.update(hash_files(real, [rel for rel in relpaths if rel not in hashes], workers))
    manifest = make_manifest(
        {"path": rel, "size": signature[rel][0], "sha256": hashes[rel]} for rel in relpaths
    )
    # Files changed while they were read: the signature taken before no longer holds.
    if write and stat_signature(real, relpaths) == signature:
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        write_json_atomic(cache, {"root": real, "signature": signature, "manifest": manifest}, 0o600)
    return manifest, True


def read_json(path: str) -> dict[str, Any] | None:
    """A JSON object from a file; None when it is missing, unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _file_key(sig: Sequence[int]) -> tuple[int, ...]:
    # size, mtime, inode, device: the same file, not rewritten since it was hashed. Not ctime:
    # making a hard link changes it, and hard-linked copies are what this reuse is for.
    return (sig[0], sig[1], sig[3], sig[4])


def _known_hashes(cache_dir: str) -> dict[tuple[int, ...], str]:
    """sha256 by file signature, from every manifest cached in ``cache_dir``."""
    known: dict[tuple[int, ...], str] = {}
    try:
        names = os.listdir(cache_dir)
    except OSError:
        return known
    for name in names:
        data = read_json(os.path.join(cache_dir, name)) if name.endswith(".json") else None
        try:
            signature = data["signature"] if data else {}
            for entry in data["manifest"]["files"] if data else []:
                known[_file_key(signature[entry["path"]])] = entry["sha256"]
        except (KeyError, TypeError):
            continue
    return known


def write_json_atomic(path: str, data: Any, mode: int = 0o644) -> None:
    """Write JSON to a sibling temporary file, fsync it and rename it over ``path``."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def check_manifest_shape(manifest: Any) -> list[str]:
    """Problems with a manifest handed to the host (paths must stay inside the directory)."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        return ["the manifest is not a mapping with a list of files"]
    problems = []
    for entry in manifest["files"]:
        path = entry.get("path") if isinstance(entry, dict) else None
        if (
            not isinstance(path, str)
            or not path
            or path.startswith("/")
            or any(part in ("", ".", "..") for part in path.split("/"))
            or is_hidden(path)
        ):
            problems.append(f"manifest path {path!r} is not a plain relative path")
        elif not isinstance(entry.get("size"), int) or not re.match(
            r"^[0-9a-f]{64}$", str(entry.get("sha256"))
        ):
            problems.append(f"manifest entry {path} needs an integer size and a sha256")
    if not problems and manifest.get("digest") != manifest_digest(manifest["files"]):
        problems.append("the manifest's digest does not match its file list")
    return problems


def verify_tree(
    root: str, manifest: Mapping[str, Any], workers: int = 0, trusted: Iterable[str] = ()
) -> dict[str, list[str]]:
    """Compare a directory with a manifest: every file present, of its size and sha256.

    ``trusted`` files are checked for presence and size only: the caller knows them to be the
    very files (same inode) that were verified against the same sha256 before.
    Returns ``{"missing", "size", "sha256", "extra"}`` lists of relative paths (all empty: the
    directory is exactly the manifest, hidden entries aside).
    """
    expected = {f["path"]: f for f in manifest["files"]}
    present = set(list_files(root))
    skip = set(trusted)
    result: dict[str, list[str]] = {
        "missing": sorted(set(expected) - present),
        "size": [],
        "sha256": [],
        "extra": sorted(present - set(expected)),
    }
    to_hash = []
    for rel in sorted(set(expected) & present):
        if os.stat(os.path.join(root, rel)).st_size != expected[rel]["size"]:
            result["size"].append(rel)
        elif rel not in skip:
            to_hash.append(rel)
    for rel, digest in hash_files(root, to_hash, workers).items():
        if digest != expected[rel]["sha256"]:
            result["sha256"].append(rel)
    return result


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


# --- model directories and entries ------------------------------------------------------------------


def check_model_dir(root: str) -> list[str]:
    """What keeps a directory from being a vLLM-ready model (empty list: nothing)."""
    if not os.path.isdir(root):
        return [f"{root} is not a directory"]
    try:
        files = list_files(root)
    except ManifestError as err:
        return [str(err)]
    problems = []
    top = {f for f in files if "/" not in f}
    if "config.json" not in top:
        problems.append("no config.json")
    else:
        try:
            with open(os.path.join(root, "config.json"), encoding="utf-8") as handle:
                config = json.load(handle)
        except (OSError, ValueError) as err:
            problems.append(f"config.json is not valid JSON ({err})")
        else:
            if not isinstance(config, dict):
                problems.append("config.json is not a JSON object")
            elif not (config.get("model_type") or config.get("architectures")):
                problems.append("config.json names neither model_type nor architectures")
    weights = [f for f in top if f.endswith(WEIGHT_SUFFIXES)]
    if not weights:
        problems.append("no weights (*.safetensors, *.bin or *.pt)")
    for index_name in (f for f in top if f.endswith(".index.json")):
        try:
            with open(os.path.join(root, index_name), encoding="utf-8") as handle:
                shards = set(json.load(handle).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError) as err:
            problems.append(f"{index_name} is not a valid weight index ({err})")
            continue
        missing = sorted(s for s in shards if s not in top)
        if missing:
            problems.append(f"{index_name} names shards that are missing: {', '.join(missing)}")
    if not top & set(TOKENIZER_FILES):
        problems.append("no tokenizer (tokenizer.json, tokenizer_config.json or tokenizer.model)")
    return problems


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


# --- the store on a host ------------------------------------------------------------------------


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
