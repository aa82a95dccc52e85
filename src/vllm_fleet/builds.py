"""Atomic, cached, marked build directories: what every model builder of the project shares.

A build is written to a sibling directory, stamped with a marker file (:data:`MARKER`) written
last, and renamed into place. A directory whose marker matches the builder's kind, version and
source is returned as is. Files are made 0644 and directories 0755, so a service user other
than the builder can read them. Used by the GGUF import (:mod:`vllm_fleet.gguf_import`), the
SmolLM2 build of ``vllm-fleet build`` and the test models' builders under ``tests/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["MARKER", "atomic_build", "is_built", "read_marker", "sha256_file", "tidy_saved"]

#: Written last into every finished build; its presence means the build is complete.
MARKER = ".vllm-fleet-build.json"


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_marker(dest: Path) -> dict[str, Any] | None:
    """The marker of a finished build at ``dest``; None when there is none (or it is unreadable)."""
    try:
        data = json.loads((dest / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_built(dest: Path, kind: str, source: Mapping[str, Any] | None = None, version: int = 1) -> bool:
    """Whether ``dest`` holds a complete build of ``kind`` by builder ``version``.

    Complete means: the marker is there (it is written last), names this kind, version and
    source, and every file it lists still exists.
    """
    marker = read_marker(dest)
    if marker is None:
        return False
    if (
        marker.get("kind") != kind
        or marker.get("builder_version") != version
        or marker.get("source") != (dict(source) if source is not None else None)
    ):
        return False
    files = marker.get("files")
    return isinstance(files, dict) and all((dest / name).is_file() for name in files)


def _fix_modes(root: Path) -> None:
    """Make the tree readable by other users: directories 0755, files 0644.

    save_pretrained writes 0600 files, which a service user other than the builder cannot read.
    """
    root.chmod(0o755)
    for path in root.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


def _file_hashes(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): sha256_file(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != MARKER
    }


def _replaceable(dest: Path) -> bool:
    """An empty directory, or one of our builds (stale or not): never a user's own files."""
    return dest.is_dir() and ((dest / MARKER).is_file() or not any(dest.iterdir()))


@contextlib.contextmanager
def _lock(dest: Path) -> Iterator[None]:
    """Serialise concurrent builds of the same destination (a hidden lock file beside it, kept)."""
    lock_path = dest.with_name(f".{dest.name}.lock")
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def atomic_build(
    dest: Path,
    kind: str,
    build: Callable[[Path], None],
    source: Mapping[str, Any] | None = None,
    version: int = 1,
) -> Path:
    """Run ``build(tmp)`` in a sibling directory, stamp it, and rename it to ``dest``.

    Returns ``dest`` at once when it already holds a complete build of this kind, source and
    builder ``version`` (bump it when the builder's output changes). An older build (any
    directory with a marker) is replaced; anything else already at ``dest`` (a file, a directory
    with other contents) is left alone and raises FileExistsError.
    """
    dest = dest.absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _lock(dest):
        if is_built(dest, kind, source, version):
            return dest
        if dest.is_symlink() or (dest.exists() and not _replaceable(dest)):
            raise FileExistsError(f"{dest} exists and is not a vllm-fleet model build")
        tmp = dest.with_name(dest.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            build(tmp)
            marker = {
                "kind": kind,
                "builder_version": version,
                "source": dict(source) if source is not None else None,
                "files": _file_hashes(tmp),
            }
            (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
            _fix_modes(tmp)
            if dest.exists():
                old = dest.with_name(dest.name + ".old")
                if old.exists():
                    shutil.rmtree(old)
                dest.replace(old)
                tmp.replace(dest)
                shutil.rmtree(old)
            else:
                tmp.replace(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def _rewrite_json(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    # The layout transformers itself writes, so rewritten files look like untouched ones.
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def tidy_saved(out: Path) -> None:
    """Make a saved directory portable across the transformers versions vLLM builds pin.

    - config.json: no ``quantization_config`` (the weights are plain; vLLM would otherwise treat
      the directory as a GGUF checkpoint); the pre-5.x spellings ``rope_theta`` and
      ``torch_dtype`` beside ``rope_parameters`` and ``dtype``, so transformers 4.x (older vLLM
      builds) reads the same rope base and dtype instead of silently using defaults.
    - tokenizer_config.json: ``PreTrainedTokenizerFast`` (known to 4.x and 5.x) instead of 5.x's
      ``TokenizersBackend``, without load-time options that leak into the file, and with
      ``model_max_length`` bounded by the model's context.
    """
    config: dict[str, Any] = json.loads((out / "config.json").read_text(encoding="utf-8"))
    context = config.get("max_position_embeddings")

    def edit_config(data: dict[str, Any]) -> None:
        data.pop("quantization_config", None)
        rope = data.get("rope_parameters")
        if isinstance(rope, dict) and "rope_theta" in rope:
            data.setdefault("rope_theta", rope["rope_theta"])
        if "dtype" in data:
            data.setdefault("torch_dtype", data["dtype"])

    def edit_tokenizer(data: dict[str, Any]) -> None:
        for key in ("is_local", "local_files_only"):
            data.pop(key, None)
        if data.get("tokenizer_class") == "TokenizersBackend":
            data["tokenizer_class"] = "PreTrainedTokenizerFast"
        limit = data.get("model_max_length")
        if isinstance(context, int) and (not isinstance(limit, int) or limit > context):
            data["model_max_length"] = context

    _rewrite_json(out / "config.json", edit_config)
    if (out / "tokenizer_config.json").is_file():
        _rewrite_json(out / "tokenizer_config.json", edit_tokenizer)
