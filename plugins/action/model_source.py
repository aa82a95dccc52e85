"""Action: the controller side of model_sync (see plugins/modules/model_source.py for the docs)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.vllm_fleet.serving.plugins.module_utils.model_files import (
    MODEL_DIR_NEEDS,
    ManifestError,
    cached_manifest,
    check_model_dir,
    read_json,
    write_json_atomic,
)
from ansible_collections.vllm_fleet.serving.plugins.module_utils.model_sources import (
    HUB_TYPES,
    current_revisions,
    entry_key,
    entry_type,
    gguf_dir,
    gguf_import_argv,
    hub_dir,
    hub_download_argv,
    hub_download_env,
    hub_revision,
    is_gguf,
    validate_models,
)

FETCH_MARKER_SUFFIX = ".fetched.json"
TAIL = 2000


@contextlib.contextmanager
def locked(work_dir: str, key: str) -> Iterator[None]:
    """One fork at a time per source: the first downloads or hashes, the others reuse its work."""
    locks = os.path.join(work_dir, "locks")
    os.makedirs(locks, mode=0o700, exist_ok=True)
    path = os.path.join(locks, hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock")
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_fetch(argv: list[str], env: Mapping[str, str], secret: str) -> str | None:
    """Run a download or import; None on success, else the (secret-free) end of its output."""
    try:
        proc = subprocess.run(
            argv,
            input=secret,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
    except OSError as err:
        return f"cannot run {argv[0]}: {err.strerror}"
    if proc.returncode == 0:
        return None
    output = proc.stdout[-TAIL:]
    if secret:
        output = output.replace(secret, "********")
    return f"exit status {proc.returncode}: {output.strip()}"


class ActionModule(ActionBase):
    """vllm_fleet.serving.model_source"""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(
        (
            "models",
            "work_dir",
            "fetch",
            "manifests",
            "hub_python",
            "gguf_python",
            "hf_token",
            "modelscope_token",
            "workers",
            "setting",
        )
    )

    def run(self, tmp: Any = None, task_vars: Any = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        args = self._task.args
        models = args.get("models", [])
        setting = str(args.get("setting", "model_sync_models"))
        errors = validate_models(models, setting)
        if errors:
            raise AnsibleActionFail("\n".join(errors))
        work_dir = os.path.abspath(os.path.expanduser(str(args.get("work_dir") or "")))
        if not args.get("work_dir"):
            raise AnsibleActionFail("model_source: work_dir (model_sync_controller_dir) is required")
        check_mode = bool(self._task.check_mode)
        fetch = bool(args.get("fetch", True)) and not check_mode
        want_manifests = bool(args.get("manifests", True))
        workers = int(args.get("workers", 0) or 0)
        tokens = {kind: self._token(args, task_vars or {}, kind) for kind in HUB_TYPES}
        out = []
        fetched = []
        for index, entry in enumerate(models):
            where = f"{setting}[{index}] ({entry_key(entry)})"
            kind = entry_type(entry)
            item: dict[str, Any] = {
                "key": entry_key(entry),
                "name": entry["name"],
                "revision": entry["revision"],
                "type": kind,
                "path": entry["source"],
                "manifest": None,
                "pending": False,
            }
            if kind == "nfs":
                # A path on the hosts: checked and hashed there (model_store action=inspect).
                out.append(item)
                continue
            if kind in ("directory", "gguf") and not os.path.exists(entry["source"]):
                what = "model directory" if kind == "directory" else ".gguf file"
                errors.append(
                    f"{where}: source {entry['source']} does not exist (a {what} on the controller)"
                )
                continue
            if kind == "directory":
                problems = check_model_dir(entry["source"])
            else:
                local = gguf_dir(work_dir, entry) if kind == "gguf" else hub_dir(work_dir, entry)
                item["path"] = local
                if kind == "gguf" and not is_gguf(entry["source"]):
                    errors.append(f"{where}: source {entry['source']} is not a GGUF file (no GGUF header)")
                    continue
                with locked(work_dir, f"fetch:{local}"):
                    ready = self._fetched(entry, local)
                    if not ready and fetch:
                        failure = self._fetch(entry, local, work_dir, args, tokens.get(kind, ""))
                        if failure:
                            errors.append(f"{where}: {failure}")
                            continue
                        fetched.append(item["key"])
                        ready = True
                if not ready:
                    item["pending"] = True
                    out.append(item)
                    continue
                problems = check_model_dir(local)
            if problems:
                errors.append(
                    f"{where}: {item['path']} is not a vLLM-ready model directory: {'; '.join(problems)}; "
                    f"{MODEL_DIR_NEEDS}"
                )
                continue
            if want_manifests:
                with locked(work_dir, f"manifest:{os.path.realpath(item['path'])}"):
                    try:
                        item["manifest"], item["computed"] = cached_manifest(
                            item["path"], os.path.join(work_dir, "manifests"), workers, write=not check_mode
                        )
                    except (OSError, ManifestError) as err:
                        errors.append(f"{where}: cannot read {item['path']}: {err}")
                        continue
            out.append(item)
        if errors:
            raise AnsibleActionFail("\n".join(errors))
        pending = [i["key"] for i in out if i["pending"]]
        result.update(
            changed=bool(fetched) or (check_mode and bool(pending)),
            models=out,
            fetched=fetched,
            pending=pending,
            current=current_revisions(models),
        )
        return result

    def _token(self, args: Mapping[str, Any], task_vars: Mapping[str, Any], kind: str) -> str:
        """A hub token: the argument if given, else the role's secret variable, read here so that
        it never appears in the task's arguments (which callbacks may record)."""
        arg, var = {
            "huggingface": ("hf_token", "model_sync_hf_token"),
            "modelscope": ("modelscope_token", "model_sync_modelscope_token"),
        }[kind]
        if args.get(arg):
            return str(args[arg])
        if var not in task_vars:
            return ""
        return str(self._templar.template(task_vars[var]) or "")

    def _signature(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        kind = entry_type(entry)
        if kind == "gguf":
            st = os.stat(entry["source"])
            return {"type": kind, "source": entry["source"], "stat": [st.st_size, st.st_mtime_ns, st.st_ino]}
        return {
            "type": kind,
            "source": entry["source"],
            "revision": hub_revision(entry),
            "include": list(entry.get("include") or []),
        }

    def _fetched(self, entry: Mapping[str, Any], local: str) -> bool:
        marker = read_json(local + FETCH_MARKER_SUFFIX)
        return (
            marker is not None and marker.get("signature") == self._signature(entry) and os.path.isdir(local)
        )

    def _fetch(
        self, entry: Mapping[str, Any], local: str, work_dir: str, args: Mapping[str, Any], token: str
    ) -> str | None:
        kind = entry_type(entry)
        os.makedirs(os.path.dirname(local), mode=0o755, exist_ok=True)
        if kind == "gguf":
            python = str(args.get("gguf_python") or "python3")
            argv = gguf_import_argv(python, entry["source"], local)
            env = dict(os.environ)
            what = f"importing {entry['source']} with {python} -m vllm_fleet.gguf_import failed"
        else:
            python = str(args.get("hub_python") or "python3")
            argv = hub_download_argv(entry, local, python)
            env = hub_download_env(kind, os.environ)
            what = (
                f"downloading {kind} {entry['source']} at {hub_revision(entry)} with {python} failed "
                f"(is {'huggingface_hub' if kind == 'huggingface' else 'modelscope'} installed for it? "
                "is the hub reachable? is the token right?)"
            )
        failure = run_fetch(argv, env, token)
        if failure:
            return f"{what}: {failure}"
        marker = {"signature": self._signature(entry), "fetched_at": time.time()}
        write_json_atomic(local + FETCH_MARKER_SUFFIX, marker, 0o644)
        return None
