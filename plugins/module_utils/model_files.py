"""A model directory's files: listing, hashing, manifests, verification, the vLLM-ready check.

Pure Python without Ansible imports, used on the controller (the ``model_source`` action computes
a source's manifest once) and on the hosts (the ``model_store`` module verifies staged copies
against it), and unit-tested alone.

A manifest lists every file of a model directory (relative path, size, sha256), its total size
and a digest of that list. Hidden entries (a path component starting with ``.``) are never part
of a model: hub clients keep their bookkeeping there (``.cache/huggingface``), rsync its partial
files, and the store its own record (``revision_store.RECORD_NAME``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ansible_collections.vllm_fleet.serving.plugins.module_utils.files import write_text_atomic

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

MANIFEST_VERSION = 1
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
BLOCK = 4 << 20
MODEL_DIR_NEEDS = (
    "a model directory needs config.json (a JSON object), weights (*.safetensors, *.bin or *.pt) "
    "and a tokenizer (tokenizer.json, tokenizer_config.json or tokenizer.model); a LoRA adapter's, "
    "adapter_config.json (peft_type LORA, its rank r) and adapter_model.safetensors or .bin"
)
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


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
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n", mode)


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


def read_adapter_config(root: str) -> dict[str, Any] | None:
    """A LoRA adapter directory's adapter_config.json (None: absent, unreadable, not an object)."""
    return read_json(os.path.join(root, ADAPTER_CONFIG))


def _adapter_problems(root: str, top: set[str]) -> list[str]:
    problems = []
    config = read_adapter_config(root)
    if config is None:
        problems.append(f"{ADAPTER_CONFIG} is not a valid JSON object")
    else:
        if config.get("peft_type") != "LORA":
            kind = config.get("peft_type")
            problems.append(f"{ADAPTER_CONFIG}: peft_type is {kind!r}; vLLM serves LORA adapters")
        rank = config.get("r")
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            problems.append(f"{ADAPTER_CONFIG}: its rank 'r' must be a positive integer, got {rank!r}")
    if not top & set(ADAPTER_WEIGHTS):
        problems.append(f"no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})")
    return problems


def check_model_dir(root: str) -> list[str]:
    """What keeps a directory from being a vLLM-ready model or LoRA adapter (empty: nothing)."""
    if not os.path.isdir(root):
        return [f"{root} is not a directory"]
    try:
        files = list_files(root)
    except ManifestError as err:
        return [str(err)]
    problems = []
    top = {f for f in files if "/" not in f}
    if ADAPTER_CONFIG in top and "config.json" not in top:
        return _adapter_problems(root, top)
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
