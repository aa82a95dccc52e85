"""execution-environment.yml renders a build context with `ansible-builder create` (no image is
built: that needs a container engine and the base image's registry), and the context holds what
the definition and the project's own pins say."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEFINITION = yaml.safe_load((ROOT / "execution-environment.yml").read_text())
GALAXY = yaml.safe_load((ROOT / "galaxy.yml").read_text())
TARBALL = f"{GALAXY['namespace']}-{GALAXY['name']}-{GALAXY['version']}.tar.gz"


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (the test extra brings it)")
    return path


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The definition beside a freshly built collection tarball, rendered by ansible-builder."""
    work = tmp_path_factory.mktemp("ee")
    shutil.copy(ROOT / "execution-environment.yml", work)
    subprocess.run(
        [_tool("ansible-galaxy"), "collection", "build", "--output-path", str(work / "dist"), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    proc = subprocess.run(
        [
            _tool("ansible-builder"),
            "create",
            "-f",
            "execution-environment.yml",
            "-c",
            "context",
            "--output-filename",
            "Containerfile",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work / "context"


def _pins() -> dict[str, str]:
    """pyproject's runtime requirements by name: `ansible-core>=2.19,<2.20` under ansible-core."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        name = dep.split(">", 1)[0].split("=", 1)[0].split("<", 1)[0].strip()
        out[name] = dep.replace(" ", "")
    return out


def test_containerfile_uses_the_base_image_and_the_pinned_ansible(context: Path) -> None:
    containerfile = (context / "Containerfile").read_text()
    base = DEFINITION["images"]["base_image"]["name"]
    assert f'ARG EE_BASE_IMAGE="{base}"' in containerfile
    pins = _pins()
    deps = DEFINITION["dependencies"]
    # ansible-core and ansible-runner as pyproject pins them, installed by the Containerfile.
    assert deps["ansible_core"]["package_pip"] == pins["ansible-core"]
    assert deps["ansible_runner"]["package_pip"] == pins["ansible-runner"]
    assert f'ARG ANSIBLE_INSTALL_REFS="{pins["ansible-core"]} {pins["ansible-runner"]}"' in containerfile
    assert 'ARG PKGMGR="/usr/bin/microdnf"' in containerfile


def test_python_and_system_requirements_are_the_definitions(context: Path) -> None:
    deps = DEFINITION["dependencies"]
    python = (context / "_build" / "requirements.txt").read_text().split()
    assert python == deps["python"]
    assert any(req.startswith("huggingface_hub") for req in python)
    system = [line for line in (context / "_build" / "bindep.txt").read_text().splitlines() if line]
    assert system == deps["system"]
    assert {line.split()[0] for line in system} >= {"rsync", "openssh-clients"}


def test_collections_are_galaxy_yml_dependencies_and_this_collection(context: Path) -> None:
    requirements = yaml.safe_load((context / "_build" / "requirements.yml").read_text())
    collections = requirements["collections"]
    pinned = {c["name"]: c["version"] for c in collections if c.get("type") != "file"}
    assert pinned == GALAXY["dependencies"]
    (own,) = [c for c in collections if c.get("type") == "file"]
    # The tarball is this collection, vllm_fleet.serving at galaxy.yml's version, copied into
    # the context where the Containerfile installs it (COPY _build /build; WORKDIR /build).
    assert own["name"] == f"collections/{TARBALL}"
    with tarfile.open(context / "_build" / own["name"]) as tar:
        member = tar.extractfile("MANIFEST.json")
        assert member is not None
        info = json.load(member)["collection_info"]
    assert (info["namespace"], info["name"]) == ("vllm_fleet", "serving")
    assert info["dependencies"] == GALAXY["dependencies"]
    containerfile = (context / "Containerfile").read_text()
    assert "COPY _build /build\nWORKDIR /build" in containerfile
    assert "ansible-galaxy collection install $ANSIBLE_GALAXY_CLI_COLLECTION_OPTS -r requirements.yml" in (
        containerfile
    )
