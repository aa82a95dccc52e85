"""The real vLLM, installed on the controller for the contract's property tests.

The property tests (tests/unit/test_contract_properties.py) hand every command line the spec
produces to vLLM's own argument parser. That parser needs vLLM importable: a virtual environment
made once per wheelhouse (the one ``vllm-fleet build`` fetched, content-keyed) with the uv binary
the wheelhouse carries, offline from its wheels; about 2.5 GB, some seconds to make.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ansible_collections.vllm_fleet.serving.plugins.module_utils.python_env import create_argv, install_argv

from vllm_fleet import wheelhouse

COMPLETE = ".complete"


def parser_env(cache: Path) -> Path:
    """The environment's directory (``<cache>/vllm-parser/<wheelhouse key>``), made if missing."""
    link = Path(cache) / "wheelhouses" / f"{wheelhouse.DEFAULT_PACKAGE}-{wheelhouse.DEFAULT_VERSION}"
    if not wheelhouse.is_complete(link):
        link = wheelhouse.build_wheelhouse(Path(cache) / "wheelhouses")
    source = link.resolve()
    dest = Path(cache) / "vllm-parser" / source.name
    if (dest / COMPLETE).is_file():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    uv = str(source / wheelhouse.UV_RELPATH)
    # As python_env makes a packed venv (relocatable: it is made beside its place and renamed
    # into it) and installs a wheelhouse into it: the lock, offline, without resolving.
    spec = {"backend": "venv", "installer": "uv", "python": "python3", "source": "packed"}
    subprocess.run(create_argv(spec, str(tmp), uv, ""), check=True)
    subprocess.run(install_argv({**spec, "source": "wheelhouse"}, str(tmp), uv, str(source)), check=True)
    (tmp / COMPLETE).write_text(source.name + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
    return dest
