"""Where vllm-fleet finds its collection and keeps what it builds on the controller.

The command line drives the Ansible collection ``vllm_fleet.serving`` (its site.yml, playbooks/,
ansible.cfg and example inventories). It looks for it, first found wins:

1. ``$VLLM_FLEET_PROJECT``: a collection root chosen by hand (a checkout or a copy of one, or an
   installed collection);
2. the checkout this package was installed from in editable mode (``pip install -e .``): the
   repository root two levels above ``src/vllm_fleet``;
3. the collection installed where Ansible looks for collections (``ansible-galaxy collection
   install vllm_fleet-serving-<version>.tar.gz``): the ``collections_path`` of the Ansible
   configuration in effect (``$ANSIBLE_COLLECTIONS_PATH``, ansible.cfg, ``~/.ansible/collections``
   by default), then Python's ``sys.path`` when Ansible scans it, as ansible-playbook itself does.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

NAMESPACE = "vllm_fleet"
NAME = "serving"
#: What the command line runs from the collection; an installed collection without them (built
#: with them in build_ignore) cannot be driven.
REQUIRED = ("ansible.cfg", "site.yml", "playbooks")


class CollectionNotFoundError(RuntimeError):
    """No usable vllm_fleet.serving collection: the message says where it looked and what to do."""


def _manifest_names(root: Path) -> tuple[str, str] | None:
    """(namespace, name) of a collection root: galaxy.yml in a checkout, MANIFEST.json installed."""
    manifest = root / "MANIFEST.json"
    if manifest.is_file():
        try:
            info = json.loads(manifest.read_text(encoding="utf-8"))["collection_info"]
            return str(info["namespace"]), str(info["name"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    if (root / "galaxy.yml").is_file():
        # The checkout's galaxy.yml: read two plain keys without needing a YAML parser here.
        names = dict.fromkeys(("namespace", "name"), "")
        for line in (root / "galaxy.yml").read_text(encoding="utf-8").splitlines():
            key, sep, value = line.partition(":")
            if sep and key in names:
                names[key] = value.strip().strip("'\"")
        return names["namespace"], names["name"]
    return None


def is_collection_root(root: Path) -> bool:
    """Whether ``root`` holds vllm_fleet.serving (galaxy.yml or MANIFEST.json say so)."""
    return _manifest_names(root) == (NAMESPACE, NAME)


def checkout_dir() -> Path | None:
    """The repository this package runs from in an editable install, else None."""
    here = Path(__file__).resolve()
    root = here.parents[2]
    if (root / "src" / "vllm_fleet" / here.name).resolve() == here and is_collection_root(root):
        return root
    return None


def ansible_collection_paths(scan_sys_path: bool = True) -> list[Path]:
    """Where Ansible, as configured for this user and directory, looks for collections.

    The configured collections_path, then (when Ansible scans it and ``scan_sys_path``) the
    entries of Python's sys.path, which ansible-playbook searches by itself.
    """
    from ansible.config.manager import ConfigManager

    config = ConfigManager()  # reads $ANSIBLE_CONFIG, ./ansible.cfg, ~/.ansible.cfg, /etc/ansible
    # The default ('{{ ANSIBLE_HOME ~ "/collections:..." }}') is a template, as in ansible.constants.
    home = {"ANSIBLE_HOME": config.get_config_value("ANSIBLE_HOME")}
    found = [Path(p) for p in config.get_config_value("COLLECTIONS_PATHS", variables=home) or []]
    if scan_sys_path and config.get_config_value("COLLECTIONS_SCAN_SYS_PATH"):
        found += [Path(p) for p in sys.path if p]
    return found


def find_installed_collection(search_paths: Iterable[Path]) -> Path | None:
    """The first vllm_fleet.serving under ``search_paths`` (entries as in collections_path:
    the directory holding ``ansible_collections``, or that directory itself)."""
    for base in search_paths:
        top = base if base.name == "ansible_collections" else base / "ansible_collections"
        candidate = top / NAMESPACE / NAME
        if candidate.is_dir() and is_collection_root(candidate):
            return candidate
    return None


def installed_base(root: Path) -> Path | None:
    """For a collection at ``<base>/ansible_collections/vllm_fleet/serving``, that ``<base>``
    (what collections_path must name); None for a checkout or a copy of one."""
    if root.parts[-3:] == ("ansible_collections", NAMESPACE, NAME):
        return root.parents[2]
    return None


def _missing(root: Path) -> list[str]:
    return [name for name in REQUIRED if not (root / name).exists()]


def _not_found(searched: list[Path]) -> str:
    configured = [str(p) for p in searched if str(p) not in sys.path]
    where = ", ".join(configured) or "none configured"
    return (
        f"cannot find the Ansible collection {NAMESPACE}.{NAME}. Install it where Ansible looks for "
        f"collections: `ansible-galaxy collection install {NAMESPACE}-{NAME}-<version>.tar.gz` (the "
        "tarball `ansible-galaxy collection build` makes in a checkout), or set VLLM_FLEET_PROJECT to "
        f"a collection root. Searched collections_path ({where}) and Python's sys.path"
    )


def project_dir() -> Path:
    """The collection root the command line runs: site.yml, playbooks/, ansible.cfg, roles/.

    See the module documentation for the order of the search. Raises CollectionNotFoundError,
    whose message names what to do.
    """
    override = os.environ.get("VLLM_FLEET_PROJECT")
    if override:
        root = Path(override)
        if not is_collection_root(root):
            raise CollectionNotFoundError(
                f"VLLM_FLEET_PROJECT={override} is not the collection {NAMESPACE}.{NAME} "
                "(no galaxy.yml or MANIFEST.json naming it): point it at the collection root"
            )
    else:
        checkout = checkout_dir()
        if checkout is not None:
            return checkout
        searched = ansible_collection_paths()
        found = find_installed_collection(searched)
        if found is None:
            raise CollectionNotFoundError(_not_found(searched))
        root = found
    missing = _missing(root)
    if missing:
        raise CollectionNotFoundError(
            f"the collection at {root} lacks {', '.join(missing)}, which vllm-fleet runs: install a "
            "build that keeps them (galaxy.yml's build_ignore must not list them)"
        )
    return root


def collection_version(root: Path) -> str | None:
    """The version an installed collection's MANIFEST.json records (None for a checkout)."""
    try:
        info = json.loads((root / "MANIFEST.json").read_text(encoding="utf-8"))["collection_info"]
        return str(info["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cache_dir() -> Path:
    """Controller-side cache for built artefacts that must survive fresh clones.

    Models, wheelhouses and the test-host rootfs are slow to make and never committed:
    $VLLM_FLEET_CACHE, else ~/.cache/vllm-fleet. scripts/testhost-image and the sandbox
    inventory resolve the same location the same way.
    """
    override = os.environ.get("VLLM_FLEET_CACHE")
    return Path(override) if override else Path.home() / ".cache" / "vllm-fleet"
