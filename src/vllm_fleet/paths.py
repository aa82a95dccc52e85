"""Where vllm-fleet finds its collection and keeps what it builds on the controller."""

from __future__ import annotations

import os
from pathlib import Path


def project_dir() -> Path:
    """The collection root (galaxy.yml, site.yml, playbooks/, roles/).

    The wrapper is installed from the repository (editable), so the collection sits two levels
    above this package. VLLM_FLEET_PROJECT points elsewhere, for a copy of the collection.
    """
    override = os.environ.get("VLLM_FLEET_PROJECT")
    root = Path(override) if override else Path(__file__).resolve().parents[2]
    if not (root / "galaxy.yml").is_file():
        raise RuntimeError(f"no galaxy.yml in {root}: set VLLM_FLEET_PROJECT to the collection root")
    return root


def cache_dir() -> Path:
    """Controller-side cache for built artefacts that must survive fresh clones.

    Models, wheelhouses and the test-host rootfs are slow to make and never committed:
    $VLLM_FLEET_CACHE, else ~/.cache/vllm-fleet. scripts/testhost-image and the sandbox
    inventory resolve the same location the same way.
    """
    override = os.environ.get("VLLM_FLEET_CACHE")
    return Path(override) if override else Path.home() / ".cache" / "vllm-fleet"
