"""model_sync's logic: manifests, model directory checks, entries, hub commands, the host's store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.vllm_fleet.serving.plugins.action import model_source
from ansible_collections.vllm_fleet.serving.plugins.module_utils import model_files as files
from ansible_collections.vllm_fleet.serving.plugins.module_utils import model_sources as sources
from ansible_collections.vllm_fleet.serving.plugins.module_utils import revision_store as revisions
from ansible_collections.vllm_fleet.serving.plugins.modules import model_store

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_model(root: Path, weights: bytes = b"w" * 1000, extra: dict[str, bytes] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(
        json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    )
    (root / "model.safetensors").write_bytes(weights)
    (root / "tokenizer.json").write_text("{}")
    for name, data in (extra or {}).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


# --- manifests ----------------------------------------------------------------------------------


def test_manifest_lists_every_file_with_size_and_sha256(tmp_path: Path) -> None:
    root = make_model(tmp_path / "m", extra={"sub/extra.bin": b"abc", ".cache/huggingface/x": b"hidden"})
    (root / ".gitattributes").write_text("hidden")
    manifest = files.build_manifest(str(root))
    paths = [f["path"] for f in manifest["files"]]
    assert paths == ["config.json", "model.safetensors", "sub/extra.bin", "tokenizer.json"]
    extra = next(f for f in manifest["files"] if f["path"] == "sub/extra.bin")
    assert extra == {
        "path": "sub/extra.bin",
        "size": 3,
        "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    }
    assert manifest["total_bytes"] == sum(f["size"] for f in manifest["files"])
    assert manifest["digest"] == files.manifest_digest(manifest["files"])
    assert files.check_manifest_shape(manifest) == []


def test_manifest_digest_follows_content_not_order(tmp_path: Path) -> None:
    a = files.build_manifest(str(make_model(tmp_path / "a")))
    b = files.build_manifest(str(make_model(tmp_path / "b")))
    c = files.build_manifest(str(make_model(tmp_path / "c", weights=b"x" * 1000)))
    assert a["digest"] == b["digest"] != c["digest"]
    assert files.manifest_digest(list(reversed(a["files"]))) == a["digest"]


def test_symlinks_are_followed_and_broken_ones_refused(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"w" * 1000)
    root = make_model(tmp_path / "m")
    (root / "model.safetensors").unlink()
    (root / "model.safetensors").symlink_to(blob)
    assert files.build_manifest(str(root)) == files.build_manifest(str(make_model(tmp_path / "plain")))
    (root / "gone.bin").symlink_to(tmp_path / "nowhere")
    with pytest.raises(files.ManifestError, match=r"gone\.bin"):
        files.build_manifest(str(root))


def test_cached_manifest_is_reused_until_a_file_changes(tmp_path: Path) -> None:
    root = make_model(tmp_path / "m")
    cache = str(tmp_path / "cache")
    first, computed = files.cached_manifest(str(root), cache)
    assert computed
    again, computed = files.cached_manifest(str(root), cache)
    assert (again, computed) == (first, False)
    (root / "model.safetensors").write_bytes(b"v" * 1000)  # same size, new content
    changed, computed = files.cached_manifest(str(root), cache)
    assert computed and changed["digest"] != first["digest"]
    (root / "new.bin").write_bytes(b"n")
    assert files.cached_manifest(str(root), cache)[1]


def test_cached_manifest_writes_nothing_when_asked(tmp_path: Path) -> None:
    root = make_model(tmp_path / "m")
    files.cached_manifest(str(root), str(tmp_path / "cache"), write=False)
    assert not (tmp_path / "cache").exists()


def test_verify_tree_reports_every_kind_of_difference(tmp_path: Path) -> None:
    source = make_model(tmp_path / "src", extra={"a.bin": b"aaaa", "b.bin": b"bbbb"})
    manifest = files.build_manifest(str(source))
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    assert files.verify_tree(str(copy), manifest) == {"missing": [], "size": [], "sha256": [], "extra": []}
    (copy / "a.bin").write_bytes(b"aaaX")
    (copy / "b.bin").write_bytes(b"bb")
    (copy / "tokenizer.json").unlink()
    (copy / "stray.txt").write_text("?")
    (copy / ".rsync-tmp").write_text("hidden entries do not count")
    assert files.verify_tree(str(copy), manifest) == {
        "missing": ["tokenizer.json"],
        "size": ["b.bin"],
        "sha256": ["a.bin"],
        "extra": ["stray.txt"],
    }


@pytest.mark.parametrize(
    ("manifest", "problem"),
    [
        ({"files": [{"path": "../etc/passwd", "size": 1, "sha256": "0" * 64}]}, "not a plain relative path"),
        ({"files": [{"path": "/abs", "size": 1, "sha256": "0" * 64}]}, "not a plain relative path"),
        ({"files": [{"path": ".hidden", "size": 1, "sha256": "0" * 64}]}, "not a plain relative path"),
        ({"files": [{"path": "a", "size": "1", "sha256": "0" * 64}]}, "integer size"),
        ({"files": [{"path": "a", "size": 1, "sha256": "0" * 64}], "digest": "x"}, "digest does not match"),
        ({"nofiles": []}, "list of files"),
    ],
)
def test_manifest_shape_is_checked_on_the_host(manifest: dict[str, Any], problem: str) -> None:
    assert problem in " ".join(files.check_manifest_shape(manifest))


# --- model directories --------------------------------------------------------------------------


def test_a_complete_model_directory_passes(tmp_path: Path) -> None:
    assert files.check_model_dir(str(make_model(tmp_path / "m"))) == []


def test_the_built_tiny_model_passes() -> None:
    from vllm_fleet.paths import cache_dir

    tiny = cache_dir() / "models" / "tiny-llama"
    if not tiny.is_dir():
        pytest.skip("the tiny model is not built (python -m tests.builders)")
    assert files.check_model_dir(str(tiny)) == []


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda r: (r / "config.json").unlink(), "no config.json"),
        (lambda r: (r / "config.json").write_text("{not json"), "config.json is not valid JSON"),
        (lambda r: (r / "config.json").write_text("[1, 2]"), "config.json is not a JSON object"),
        (lambda r: (r / "config.json").write_text("{}"), "names neither model_type nor architectures"),
        (lambda r: (r / "model.safetensors").unlink(), "no weights"),
        (lambda r: (r / "tokenizer.json").unlink(), "no tokenizer"),
        (
            lambda r: (r / "model.safetensors.index.json").write_text(
                json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}})
            ),
            "names shards that are missing: model-00001-of-00002.safetensors",
        ),
    ],
)
def test_incomplete_model_directories_are_named(tmp_path: Path, damage: Any, problem: str) -> None:
    root = make_model(tmp_path / "m")
    damage(root)
    assert any(problem in p for p in files.check_model_dir(str(root))), files.check_model_dir(str(root))


def test_a_missing_directory_is_not_a_model(tmp_path: Path) -> None:
    assert files.check_model_dir(str(tmp_path / "nope")) == [f"{tmp_path / 'nope'} is not a directory"]


# --- entries ------------------------------------------------------------------------------------

GOOD = [
    {"name": "llama", "revision": "2024-12-06", "source": "/srv/models/llama"},
    {"name": "llama", "revision": "nfs1", "type": "nfs", "source": "/mnt/models/llama"},
    {
        "name": "qwen",
        "revision": "r1",
        "type": "huggingface",
        "source": "Qwen/Qwen3-8B",
        "hub_revision": COMMIT,
    },
    {
        "name": "qwen",
        "revision": COMMIT,
        "type": "huggingface",
        "source": "Qwen/Qwen3-8B",
        "include": ["*.json"],
    },
    {
        "name": "qwen-ms",
        "revision": "v1.0.0",
        "type": "modelscope",
        "source": "Qwen/Qwen3-8B",
        "current": True,
    },
    {"name": "smol", "revision": "q4", "type": "gguf", "source": "/srv/gguf/smol.gguf"},
]


def test_good_entries_pass() -> None:
    assert sources.validate_models(GOOD) == []


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"name": "a", "revision": "r", "source": "/x", "type": "ftp"},
            "type 'ftp' is unknown; allowed: directory, nfs",
        ),
        ({"name": "a", "revision": "r"}, "source is required (a model directory on the controller)"),
        ({"name": "a", "revision": "r", "source": "relative/dir"}, "must be an absolute path"),
        ({"name": "a/b", "revision": "r", "source": "/x"}, "name 'a/b' must be 1-128 characters"),
        ({"name": "a", "revision": ".hidden", "source": "/x"}, "revision '.hidden' must be"),
        ({"name": "a", "revision": "current", "source": "/x"}, "revision 'current' is reserved"),
        ({"name": "a", "revision": "r", "source": "/x", "sorce": "/y"}, "unknown keys sorce"),
        (
            {"name": "a", "revision": "r", "source": "Org/M", "type": "huggingface"},
            "full 40-character commit",
        ),
        (
            {"name": "a", "revision": "r", "source": "Org/M", "type": "huggingface", "hub_revision": "main"},
            "full 40-character commit",
        ),
        (
            {"name": "a", "revision": "master", "source": "Org/M", "type": "modelscope"},
            "not the moving master",
        ),
        ({"name": "a", "revision": "r", "source": "not a repo", "type": "modelscope"}, "repository id"),
        ({"name": "a", "revision": "r", "source": "/x", "hub_revision": COMMIT}, "hub_revision only applies"),
        ({"name": "a", "revision": "r", "source": "/x", "include": ["*"]}, "include must be a list"),
        ({"name": "a", "revision": "r", "source": "/x", "current": "yes"}, "current must be true or false"),
    ],
)
def test_bad_entries_name_the_setting_and_what_is_allowed(entry: dict[str, Any], message: str) -> None:
    errors = sources.validate_models([entry])
    assert errors and errors[0].startswith("model_sync_models[0]")
    assert message in " ".join(errors), errors


def test_conflicting_entries_are_refused() -> None:
    twice = [
        {"name": "a", "revision": "r", "source": "/x"},
        {"name": "a", "revision": "r", "source": "/y"},
    ]
    assert "listed twice with different sources" in " ".join(sources.validate_models(twice))
    marks = [
        {"name": "a", "revision": "r1", "source": "/x", "current": True},
        {"name": "a", "revision": "r2", "source": "/y", "current": True},
    ]
    assert "model a has 2 entries with current: true" in " ".join(sources.validate_models(marks))
    assert sources.validate_models("nope")[0].startswith("model_sync_models must be a list")


def test_current_is_the_marked_revision_else_the_last_listed() -> None:
    models = [
        {"name": "a", "revision": "r1"},
        {"name": "a", "revision": "r2"},
        {"name": "b", "revision": "r1", "current": True},
        {"name": "b", "revision": "r2"},
    ]
    assert sources.current_revisions(models) == {"a": "r2", "b": "r1"}


# --- hub downloads and GGUF imports ---------------------------------------------------------------


def test_hub_commands_pin_the_revision_and_keep_the_token_off_the_command_line() -> None:
    hf = {"name": "q", "revision": "r1", "type": "huggingface", "source": "Qwen/Q", "hub_revision": COMMIT}
    argv = sources.hub_download_argv(dict(hf, include=["*.json", "*.safetensors"]), "/dl", "/venv/bin/python")
    assert argv[:2] == ["/venv/bin/python", "-c"]
    assert "snapshot_download" in argv[2] and "sys.stdin.read()" in argv[2]
    assert argv[3:] == ["Qwen/Q", COMMIT, "/dl", "*.json", "*.safetensors"]
    ms = {"name": "q", "revision": "v1", "type": "modelscope", "source": "Qwen/Q"}
    argv = sources.hub_download_argv(ms, "/dl", "python3")
    assert "modelscope" in argv[2] and "HubApi().login(token)" in argv[2]
    assert argv[3:] == ["Qwen/Q", "v1", "/dl"]
    env = sources.hub_download_env("huggingface", {"HF_TOKEN": "t", "HF_HUB_OFFLINE": "1", "PATH": "/bin"})
    assert env == {"PATH": "/bin", "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}
    assert sources.hub_dir("/w", hf) == f"/w/hub/huggingface/Qwen--Q/{COMMIT}"
    assert sources.gguf_import_argv("py", "/f.gguf", "/d") == [
        "py",
        "-m",
        "vllm_fleet.gguf_import",
        "/f.gguf",
        "/d",
    ]


STUB_HF = """
import json, os
def snapshot_download(**kwargs):
    with open(os.environ["STUB_RECORD"], "w") as f:
        json.dump(kwargs, f)
"""

STUB_MS_API = """
import os
class HubApi:
    def login(self, token):
        with open(os.environ["STUB_RECORD"] + ".login", "w") as f:
            f.write(token)
"""

STUB_MS_SNAPSHOT = """
import json, os
def snapshot_download(model_id, **kwargs):
    with open(os.environ["STUB_RECORD"], "w") as f:
        json.dump(dict(kwargs, model_id=model_id), f)
"""


def _stub_packages(root: Path) -> None:
    (root / "huggingface_hub").mkdir(parents=True)
    (root / "huggingface_hub" / "__init__.py").write_text(STUB_HF)
    (root / "modelscope" / "hub").mkdir(parents=True)
    (root / "modelscope" / "__init__.py").write_text("")
    (root / "modelscope" / "hub" / "__init__.py").write_text("")
    (root / "modelscope" / "hub" / "api.py").write_text(STUB_MS_API)
    (root / "modelscope" / "hub" / "snapshot_download.py").write_text(STUB_MS_SNAPSHOT)


def test_hub_downloads_call_the_libraries_with_pinned_revision_and_token(tmp_path: Path) -> None:
    """The commands really run, against stand-ins of the hub libraries (no hub is reachable here)."""
    _stub_packages(tmp_path / "stubs")
    record = tmp_path / "record.json"
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(tmp_path / "stubs"), "STUB_RECORD": str(record)}
    hf = {"name": "q", "revision": COMMIT, "type": "huggingface", "source": "Org/M", "include": ["*.json"]}
    assert (
        model_source.run_fetch(sources.hub_download_argv(hf, "/dl", sys.executable), env, "hf_secret") is None
    )
    assert json.loads(record.read_text()) == {
        "repo_id": "Org/M",
        "revision": COMMIT,
        "local_dir": "/dl",
        "token": "hf_secret",
        "allow_patterns": ["*.json"],
    }
    assert model_source.run_fetch(sources.hub_download_argv(hf, "/dl", sys.executable), env, "") is None
    assert json.loads(record.read_text())["token"] is None
    ms = {"name": "q", "revision": "v2", "type": "modelscope", "source": "Org/M"}
    assert (
        model_source.run_fetch(sources.hub_download_argv(ms, "/dl", sys.executable), env, "ms_secret") is None
    )
    assert json.loads(record.read_text()) == {
        "model_id": "Org/M",
        "revision": "v2",
        "local_dir": "/dl",
        "allow_patterns": None,
    }
    assert Path(f"{record}.login").read_text() == "ms_secret"


def test_a_failed_fetch_reports_its_output_without_the_token(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('denied for', sys.stdin.read()); sys.exit(3)"]
    failure = model_source.run_fetch(argv, dict(os.environ), "s3cr3t")
    assert failure is not None and failure.startswith("exit status 3")
    assert "s3cr3t" not in failure and "********" in failure
    assert "cannot run" in str(model_source.run_fetch([str(tmp_path / "nope")], {}, ""))


def test_gguf_import_command_calls_import_gguf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from vllm_fleet import gguf_import

    calls = []
    monkeypatch.setattr(gguf_import, "import_gguf", lambda f, d: calls.append((f, d)) or d)
    assert gguf_import.main([str(tmp_path / "m.gguf"), str(tmp_path / "out")]) == 0
    assert calls == [(tmp_path / "m.gguf", tmp_path / "out")]
    missing = subprocess.run(
        [sys.executable, "-m", "vllm_fleet.gguf_import", str(tmp_path / "none.gguf"), str(tmp_path / "o")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 2 and "no GGUF file" in missing.stderr


def test_gguf_files_are_told_by_their_header(tmp_path: Path) -> None:
    (tmp_path / "a.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    (tmp_path / "b.gguf").write_bytes(b"<html>")
    assert sources.is_gguf(str(tmp_path / "a.gguf")) and not sources.is_gguf(str(tmp_path / "b.gguf"))
    assert not sources.is_gguf(str(tmp_path / "none.gguf"))


# --- the host's store (the model_store module) -----------------------------------------------------


def store_call(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: dict[str, Any]
) -> dict[str, Any]:
    with patch_module_args(args), pytest.raises(SystemExit):
        model_store.main()
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def copy_staging(source: Path, staging: str, linked: list[str]) -> None:
    """What rsync does in the role: copy every file not already hard-linked into staging."""
    for path in source.rglob("*"):
        rel = path.relative_to(source).as_posix()
        if path.is_file() and rel not in linked:
            target = Path(staging, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def sync(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    store: Path,
    source: Path,
    revision: str,
    **extra: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    manifest = files.build_manifest(str(source))
    base = {"store": str(store), "name": "m", "revision": revision, "manifest": manifest}
    staged = store_call(monkeypatch, capsys, dict(base, action="stage", **extra))
    if staged.get("failed") or staged["published"]:
        return staged, {}
    copy_staging(source, staged["staging"], staged["linked"])
    return staged, store_call(monkeypatch, capsys, dict(base, action="publish"))


def test_stage_copy_publish_then_nothing_to_do(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = make_model(tmp_path / "src")
    store = tmp_path / "store"
    staged, published = sync(monkeypatch, capsys, store, source, "r1")
    assert (
        staged["changed"]
        and not staged["published"]
        and staged["needed_bytes"] == files.build_manifest(str(source))["total_bytes"]
    )
    assert published["changed"] and published["published"]
    assert not (store / "m" / ".partial-r1").exists()
    assert (
        revisions.read_record(str(store / "m" / "r1"))["manifest"]["digest"]
        == files.build_manifest(str(source))["digest"]
    )
    assert oct((store / "m" / "r1" / "model.safetensors").stat().st_mode & 0o777) == "0o644"
    again, _published = sync(monkeypatch, capsys, store, source, "r1")
    assert again["published"] and not again["changed"]


def test_a_new_revision_links_the_files_it_shares(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    sync(monkeypatch, capsys, store, make_model(tmp_path / "r1", extra={"shard2.bin": b"2" * 500}), "r1")
    r2 = make_model(tmp_path / "r2", extra={"shard2.bin": b"X" * 500})
    staged, published = sync(monkeypatch, capsys, store, r2, "r2")
    assert staged["linked"] == ["config.json", "model.safetensors", "tokenizer.json"]
    assert staged["needed_bytes"] == 500
    assert published["published"]
    first, second = store / "m" / "r1", store / "m" / "r2"
    assert (first / "model.safetensors").stat().st_ino == (second / "model.safetensors").stat().st_ino
    assert (first / "shard2.bin").stat().st_ino != (second / "shard2.bin").stat().st_ino


def test_a_corrupt_copy_is_never_published(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = make_model(tmp_path / "src", extra={"extra.bin": b"e" * 100})
    store = tmp_path / "store"
    manifest = files.build_manifest(str(source))
    base = {"store": str(store), "name": "m", "revision": "r1", "manifest": manifest}
    staged = store_call(monkeypatch, capsys, dict(base, action="stage"))
    copy_staging(source, staged["staging"], [])
    corrupt = Path(staged["staging"], "model.safetensors")
    corrupt.write_bytes(b"W" + corrupt.read_bytes()[1:])
    Path(staged["staging"], "extra.bin").unlink()
    result = store_call(monkeypatch, capsys, dict(base, action="publish"))
    assert result["failed"]
    assert "missing: extra.bin" in result["msg"] and "wrong sha256: model.safetensors" in result["msg"]
    assert not (store / "m" / "r1").exists()
    assert not corrupt.exists()  # removed: the next run copies it again
    copy_staging(source, staged["staging"], ["config.json", "tokenizer.json"])
    assert store_call(monkeypatch, capsys, dict(base, action="publish"))["published"]


def test_check_mode_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = make_model(tmp_path / "src")
    store = tmp_path / "store"
    base = {"store": str(store), "name": "m", "revision": "r1", "manifest": files.build_manifest(str(source))}
    for action in ("stage", "publish", "prune"):
        result = store_call(monkeypatch, capsys, dict(base, action=action, _ansible_check_mode=True))
        assert not result.get("failed"), result
    assert not store.exists()


def test_free_space_is_checked_before_copying(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = make_model(tmp_path / "src")
    store = tmp_path / "store"
    huge = 1 << 60
    staged, _published = sync(monkeypatch, capsys, store, source, "r1", free_space_margin=huge)
    assert staged["failed"]
    assert "not enough free space" in staged["msg"]
    assert "model_sync_store" in staged["msg"] and "model_sync_free_space_margin" in staged["msg"]
    assert not store.exists()


def test_a_revision_never_changes_content(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    sync(monkeypatch, capsys, store, make_model(tmp_path / "a"), "r1")
    staged, _published = sync(monkeypatch, capsys, store, make_model(tmp_path / "b", weights=b"other"), "r1")
    assert staged["failed"] and "Revisions are immutable" in staged["msg"]
    (store / "m" / "r1" / "tokenizer.json").unlink()
    staged, _published = sync(monkeypatch, capsys, store, tmp_path / "a", "r1")
    assert (
        staged["failed"]
        and "altered on the host" in staged["msg"]
        and "tokenizer.json is missing" in staged["msg"]
    )


def test_a_matching_directory_without_record_is_adopted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = make_model(tmp_path / "src")
    store = tmp_path / "store"
    shutil.copytree(source, store / "m" / "r1")  # what the role's earlier version left
    staged, _published = sync(monkeypatch, capsys, store, source, "r1")
    assert staged["adopted"] and staged["changed"] and revisions.read_record(str(store / "m" / "r1"))
    shutil.copytree(source, store / "m" / "r2")
    (store / "m" / "r2" / "config.json").write_text('{"model_type": "other"}')
    staged, _published = sync(monkeypatch, capsys, store, source, "r2")
    assert staged["failed"] and "without a model_sync record and differs" in staged["msg"]


def test_prune_keeps_requested_current_used_and_the_newest_others(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    for index, revision in enumerate(["r1", "r2", "r3", "r4", "r5", "r6"]):
        sync(
            monkeypatch,
            capsys,
            store,
            make_model(tmp_path / revision, weights=revision.encode() * 10),
            revision,
        )
        record = revisions.read_record(str(store / "m" / revision))
        assert record is not None
        files.write_json_atomic(
            str(store / "m" / revision / revisions.RECORD_NAME), dict(record, published_at=index)
        )
    (store / "m" / "current").symlink_to("r2")
    instances = tmp_path / "instances"
    (instances / "chat").mkdir(parents=True)
    (instances / "chat" / "model").symlink_to(store / "m" / "r1")
    (store / "m" / ".partial-old").mkdir()
    args = {
        "action": "prune",
        "store": str(store),
        "name": "m",
        "keep": 1,
        "requested": ["r6"],
        "protected": ["r3"],
        "instance_dir": str(instances),
    }
    dry = store_call(monkeypatch, capsys, dict(args, _ansible_check_mode=True))
    assert dry["changed"] and (store / "m" / "r4").exists()
    result = store_call(monkeypatch, capsys, args)
    # r6 requested, r2 current, r1 used by an instance, r3 protected, r5 the newest other.
    assert sorted(os.listdir(store / "m")) == ["current", "r1", "r2", "r3", "r5", "r6"]
    assert sorted(Path(p).name for p in result["removed"]) == [".partial-old", "r4"]
    assert not store_call(monkeypatch, capsys, args)["changed"]


def test_inspect_checks_and_hashes_a_host_directory(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = make_model(tmp_path / "nfs")
    args = {
        "action": "inspect",
        "store": str(tmp_path / "store"),
        "path": str(source),
        "name": "m",
        "revision": "r1",
    }
    checked = store_call(monkeypatch, capsys, args)
    assert (checked["changed"], checked["problems"], "manifest" in checked) == (False, [], False)
    result = store_call(monkeypatch, capsys, dict(args, hash=True))
    assert result["model"]["manifest"] == files.build_manifest(str(source))
    assert result["model"]["type"] == "nfs" and result["model"]["key"] == "m@r1"
    (source / "tokenizer.json").unlink()
    assert store_call(monkeypatch, capsys, args)["problems"] == [
        "no tokenizer (tokenizer.json, tokenizer_config.json or tokenizer.model)"
    ]


def test_link_plan_and_revisions_in_use(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    (model_dir / "r1").mkdir(parents=True)
    (model_dir / "r1" / "a").write_bytes(b"aa")
    published = {"r1": {"manifest": {"files": [{"path": "a", "size": 2, "sha256": "h1"}]}}}
    manifest = {"files": [{"path": "b", "size": 2, "sha256": "h1"}, {"path": "c", "size": 5, "sha256": "h2"}]}
    plan = revisions.link_plan(manifest, str(model_dir / ".partial-r2"), published, str(model_dir))
    assert plan == {"links": {"b": str(model_dir / "r1" / "a")}, "linked": [], "needed_bytes": 5}
    instances = tmp_path / "instances"
    (instances / "x").mkdir(parents=True)
    (instances / "x" / "model").symlink_to(model_dir / "r1")
    (instances / "y").mkdir()
    (instances / "y" / "model").symlink_to(tmp_path / "other" / "r9")
    assert revisions.revisions_in_use(str(instances), str(model_dir)) == ["r1"]
    assert revisions.revisions_in_use(str(tmp_path / "none"), str(model_dir)) == []


def test_files_hashed_before_are_not_hashed_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    first = make_model(tmp_path / "r1", extra={"shard2.bin": b"2" * 500})
    cache = str(tmp_path / "cache")
    r1, _reused = files.cached_manifest(str(first), cache)
    second = tmp_path / "r2"
    second.mkdir()
    for path in first.iterdir():
        os.link(path, second / path.name)
    (second / "shard2.bin").unlink()
    (second / "shard2.bin").write_bytes(b"X" * 500)
    hashed: list[str] = []
    real_sha = files.sha256_file
    monkeypatch.setattr(files, "sha256_file", lambda p: hashed.append(Path(p).name) or real_sha(p))
    r2, computed = files.cached_manifest(str(second), cache)
    assert computed and hashed == ["shard2.bin"]
    assert r2 == files.build_manifest(str(second)) and r2["digest"] != r1["digest"]


def test_publishing_hashes_only_what_was_copied(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    sync(monkeypatch, capsys, store, make_model(tmp_path / "r1", extra={"shard2.bin": b"2" * 500}), "r1")
    hashed: list[str] = []
    real_sha = files.sha256_file
    monkeypatch.setattr(files, "sha256_file", lambda p: hashed.append(Path(p).name) or real_sha(p))
    _staged, published = sync(
        monkeypatch, capsys, store, make_model(tmp_path / "r2", extra={"shard2.bin": b"X" * 500}), "r2"
    )
    assert published["published"]
    # build_manifest in sync() hashes the source (5 files); publishing hashed only shard2.bin.
    assert sorted(hashed[4:]) == ["shard2.bin"] and len(hashed) == 5


def test_current_link_switches_atomically_to_published_revisions_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    sync(monkeypatch, capsys, store, make_model(tmp_path / "r1"), "r1")
    sync(monkeypatch, capsys, store, make_model(tmp_path / "r2", weights=b"2" * 10), "r2")
    args = {"action": "prune", "store": str(store), "name": "m", "requested": ["r1", "r2"]}
    result = store_call(monkeypatch, capsys, dict(args, current="r2"))
    assert result["changed"] and result["current_switched"]
    assert os.readlink(store / "m" / "current") == "r2"
    assert result["diff"] == {"before": "current -> None\n", "after": "current -> r2\n"}
    assert not store_call(monkeypatch, capsys, dict(args, current="r2"))["changed"]
    dry = store_call(monkeypatch, capsys, dict(args, current="r1", _ansible_check_mode=True))
    assert dry["changed"] and os.readlink(store / "m" / "current") == "r2"
    assert store_call(monkeypatch, capsys, dict(args, current="r1"))["changed"]
    assert os.readlink(store / "m" / "current") == "r1"
    refused = store_call(monkeypatch, capsys, dict(args, current="r9"))
    assert refused["failed"] and "not published" in refused["msg"]
    assert os.readlink(store / "m" / "current") == "r1"
    # keep 0 and only r2 requested: r1 stays while it is current, goes once current moves on.
    store_call(monkeypatch, capsys, dict(args, requested=["r2"], keep=0))
    assert (store / "m" / "r1").is_dir()
    store_call(monkeypatch, capsys, dict(args, requested=["r2"], keep=0, current="r2"))
    assert sorted(os.listdir(store / "m")) == ["current", "r2"]


def test_the_built_lora_adapter_passes_and_a_damaged_one_is_named(tmp_path: Path) -> None:
    from vllm_fleet.paths import cache_dir

    adapter = cache_dir() / "models" / "tiny-llama-lora"
    if not adapter.is_dir():
        pytest.skip("the test adapter is not built (python -m tests.builders)")
    assert files.check_model_dir(str(adapter)) == []
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"]) == ("LORA", 8)
    damaged = tmp_path / "lora"
    damaged.mkdir()
    (damaged / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "IA3", "r": 0}))
    assert files.check_model_dir(str(damaged)) == [
        "adapter_config.json: peft_type is 'IA3'; vLLM serves LORA adapters",
        "adapter_config.json: its rank 'r' must be a positive integer, got 0",
        "no adapter weights (adapter_model.safetensors or adapter_model.bin)",
    ]
