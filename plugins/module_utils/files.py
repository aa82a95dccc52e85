"""Files the modules keep on the hosts: read if present, replaced whole (never half written)."""

from __future__ import annotations

import os
import tempfile


def read_text(path: str) -> str | None:
    """The file's text, or None when it does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def file_diff(path: str, before: str | None, after: str) -> dict[str, str]:
    """A module result's diff of one file's text (diff mode), an absent file shown empty."""
    return {"before_header": path, "after_header": path, "before": before or "", "after": after}


def write_text_atomic(path: str, content: str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``content``: a reader sees the old file or the new one, whole."""
    fd, temp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".vllm-fleet-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
