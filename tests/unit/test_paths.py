"""How the command line finds the collection it drives: checkout, VLLM_FLEET_PROJECT, or installed.

The installed case is laid out as ansible-galaxy lays it out (<base>/ansible_collections/
vllm_fleet/serving with a MANIFEST.json) and found through Ansible's own configuration reader,
so $ANSIBLE_COLLECTIONS_PATH here stands for any collections_path a user configures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from vllm_fleet import paths, runner

REPO = Path(__file__).resolve().parents[2]


def _installed(
    base: Path, namespace: str = "vllm_fleet", name: str = "serving", version: str = "0.1.0"
) -> Path:
    """A collection as `ansible-galaxy collection install` leaves it under ``base``."""
    root = base / "ansible_collections" / namespace / name
    (root / "playbooks").mkdir(parents=True)
    (root / "site.yml").write_text("---\n")
    (root / "ansible.cfg").write_text("[defaults]\n")
    info = {"namespace": namespace, "name": name, "version": version}
    (root / "MANIFEST.json").write_text(json.dumps({"collection_info": info}))
    return root


@pytest.fixture
def no_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """As if installed from a wheel: no checkout around the package, nothing configured."""
    monkeypatch.setattr(paths, "checkout_dir", lambda: None)
    monkeypatch.delenv("VLLM_FLEET_PROJECT", raising=False)
    monkeypatch.delenv("ANSIBLE_CONFIG", raising=False)
    monkeypatch.setenv("ANSIBLE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ANSIBLE_COLLECTIONS_SCAN_SYS_PATH", "false")
    monkeypatch.chdir(tmp_path)  # no ./ansible.cfg
    return tmp_path


def test_editable_checkout_is_the_repository() -> None:
    assert paths.checkout_dir() == REPO
    assert paths.is_collection_root(REPO)


def test_checkout_comes_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VLLM_FLEET_PROJECT", raising=False)
    monkeypatch.setenv("ANSIBLE_COLLECTIONS_PATH", str(tmp_path))
    _installed(tmp_path)
    assert paths.project_dir() == REPO


def test_override_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = _installed(tmp_path)
    monkeypatch.setenv("VLLM_FLEET_PROJECT", str(root))
    assert paths.project_dir() == root


def test_override_that_is_no_collection_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VLLM_FLEET_PROJECT", str(tmp_path))
    with pytest.raises(paths.CollectionNotFoundError, match=r"VLLM_FLEET_PROJECT=.* is not the collection"):
        paths.project_dir()


def test_galaxy_yml_must_name_this_collection(tmp_path: Path) -> None:
    (tmp_path / "galaxy.yml").write_text("---\nnamespace: other\nname: serving\nversion: 1.0.0\n")
    assert not paths.is_collection_root(tmp_path)
    (tmp_path / "galaxy.yml").write_text("---\nnamespace: vllm_fleet\nname: 'serving'\ntags:\n  - name\n")
    assert paths.is_collection_root(tmp_path)


def test_installed_collection_found_through_ansible_configuration(
    monkeypatch: pytest.MonkeyPatch, no_checkout: Path
) -> None:
    base = no_checkout / "collections"
    root = _installed(base)
    monkeypatch.setenv("ANSIBLE_COLLECTIONS_PATH", f"{no_checkout / 'empty'}:{base}")
    assert paths.ansible_collection_paths() == [no_checkout / "empty", base]
    assert paths.project_dir() == root


def test_default_collections_path_is_ansible_home(no_checkout: Path) -> None:
    root = _installed(no_checkout / "home" / "collections")
    assert paths.ansible_collection_paths()[0] == no_checkout / "home" / "collections"
    assert paths.project_dir() == root


def test_sys_path_is_searched_as_ansible_does(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ANSIBLE_COLLECTIONS_PATH", str(tmp_path / "none"))
    monkeypatch.setenv("ANSIBLE_COLLECTIONS_SCAN_SYS_PATH", "true")
    monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path / "site")])
    assert paths.ansible_collection_paths()[-1] == tmp_path / "site"
    assert paths.ansible_collection_paths(scan_sys_path=False) == [tmp_path / "none"]


def test_first_match_wins_and_other_collections_are_skipped(tmp_path: Path) -> None:
    _installed(tmp_path / "a", namespace="someone", name="serving")
    second = _installed(tmp_path / "b")
    third = _installed(tmp_path / "c")
    # collections_path may name the ansible_collections directory itself, as Ansible allows.
    search = [tmp_path / "missing", tmp_path / "a", tmp_path / "b" / "ansible_collections", tmp_path / "c"]
    assert paths.find_installed_collection(search) == second
    assert paths.find_installed_collection([tmp_path / "c"]) == third
    assert paths.find_installed_collection([tmp_path / "a", tmp_path / "missing"]) is None


def test_nothing_found_names_what_to_do(monkeypatch: pytest.MonkeyPatch, no_checkout: Path) -> None:
    monkeypatch.setenv("ANSIBLE_COLLECTIONS_PATH", str(no_checkout / "nowhere"))
    with pytest.raises(paths.CollectionNotFoundError) as caught:
        paths.project_dir()
    message = str(caught.value)
    assert "ansible-galaxy collection install vllm_fleet-serving-<version>.tar.gz" in message
    assert "VLLM_FLEET_PROJECT" in message
    assert str(no_checkout / "nowhere") in message


def test_a_build_without_the_playbooks_is_refused(monkeypatch: pytest.MonkeyPatch, no_checkout: Path) -> None:
    root = _installed(no_checkout / "collections")
    (root / "site.yml").unlink()
    (root / "playbooks").rmdir()
    monkeypatch.setenv("ANSIBLE_COLLECTIONS_PATH", str(no_checkout / "collections"))
    with pytest.raises(paths.CollectionNotFoundError, match=r"lacks site\.yml, playbooks"):
        paths.project_dir()


def test_installed_base(tmp_path: Path) -> None:
    assert paths.installed_base(_installed(tmp_path / "base")) == tmp_path / "base"
    assert paths.installed_base(REPO) is None


def test_checkout_runs_with_its_own_ansible_cfg() -> None:
    env = runner.ansible_env(REPO)
    assert env["ANSIBLE_CONFIG"] == str(REPO / "ansible.cfg")
    assert "ANSIBLE_COLLECTIONS_PATH" not in env
    assert "ANSIBLE_CACHE_PLUGIN_CONNECTION" not in env


def test_installed_collection_runs_from_its_collections_path(
    monkeypatch: pytest.MonkeyPatch, no_checkout: Path
) -> None:
    root = _installed(no_checkout / "base")
    monkeypatch.setenv("ANSIBLE_COLLECTIONS_PATH", f"{no_checkout / 'deps'}:{no_checkout / 'base'}")
    monkeypatch.setenv("VLLM_FLEET_CACHE", str(no_checkout / "cache"))
    env = runner.ansible_env(root)
    assert env["ANSIBLE_CONFIG"] == str(root / "ansible.cfg")
    # Its own collections path first, then what the user configured (dependencies), once each.
    assert env["ANSIBLE_COLLECTIONS_PATH"] == f"{no_checkout / 'base'}:{no_checkout / 'deps'}"
    assert env["ANSIBLE_CACHE_PLUGIN_CONNECTION"] == str(no_checkout / "cache" / "facts")
    runner.ensure_collection_link(root)
    assert not (root / "collections").exists()  # nothing written into an installed collection


def test_version_note_only_when_versions_differ(tmp_path: Path) -> None:
    from importlib.metadata import version

    mine = version("vllm_fleet")
    assert runner.version_note(_installed(tmp_path / "same", version=mine)) is None
    note = runner.version_note(_installed(tmp_path / "other", version="99.0.0"))
    assert note is not None and "99.0.0" in note and mine in note
    assert runner.version_note(REPO) is None
