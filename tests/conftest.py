"""Make the collection importable as ansible_collections.vllm_fleet.serving in tests."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLLECTIONS = ROOT / "collections"

link = COLLECTIONS / "ansible_collections" / "vllm_fleet" / "serving"
if not link.exists():
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(Path("../../.."))
sys.path.insert(0, str(COLLECTIONS))
# The test models' builders, as scripts/test runs them: `python -m tests.builders`.
sys.path.append(str(ROOT))
