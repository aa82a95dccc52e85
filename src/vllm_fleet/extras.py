"""Optional parts of the package and the error that names the extra to install for them.

A controller that only deploys installs ``vllm_fleet`` alone. The model builders (SmolLM2 for
``vllm-fleet build``, the test models of ``python -m tests.builders``) and the GGUF import that
model_sync runs on the controller for ``type: gguf`` sources need torch, transformers and
friends: ``vllm_fleet[builders]``.
"""

from __future__ import annotations

import sys
from importlib.util import find_spec

BUILDERS = "builders"


class MissingExtraError(RuntimeError):
    """An optional dependency is not installed: the message names the extra and the command."""


def require(extra: str, modules: tuple[str, ...], purpose: str) -> None:
    """Raise MissingExtraError unless every module of ``modules`` can be imported here."""
    missing = [name for name in modules if find_spec(name) is None]
    if missing:
        raise MissingExtraError(
            f"{purpose} needs {', '.join(missing)}, not installed for {sys.executable}: install "
            f"the '{extra}' extra into that environment: "
            f"{sys.executable} -m pip install 'vllm_fleet[{extra}]'"
        )
