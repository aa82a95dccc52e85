"""``python -m vllm_fleet.gguf_import GGUF_FILE DEST``: a GGUF file as a vLLM-ready directory.

The command the model_sync role runs on the controller for ``type: gguf`` sources (the
``model_source`` action), and the import itself: :func:`import_gguf` turns any GGUF file whose
architecture transformers can read into a directory that vLLM serves directly (bf16
safetensors, tokenizer and chat template from the GGUF metadata; a ``DEST`` already built from
the same file is reused, see :mod:`vllm_fleet.builds`). The command prints ``DEST``.
Building needs the ``builders`` extra in the Python that runs it (``model_sync_gguf_python``,
by default the controller's ansible-playbook Python): ``pip install 'vllm_fleet[builders]'``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vllm_fleet import extras
from vllm_fleet.builds import atomic_build, sha256_file, tidy_saved

__all__ = ["GGUF_IMPORT_NEEDS", "import_gguf", "import_gguf_into", "main"]

#: What the import needs (all of it in the ``builders`` extra).
GGUF_IMPORT_NEEDS = ("torch", "transformers", "gguf", "accelerate", "safetensors")
#: Bump when the import's output changes: directories imported before are imported again.
BUILDER_VERSION = 1


def import_gguf_into(gguf_file: Path, out: Path) -> None:
    """Import ``gguf_file`` into the (empty) directory ``out``: no caching, no marker."""
    extras.require(extras.BUILDERS, GGUF_IMPORT_NEEDS, f"importing the GGUF file {gguf_file.name}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils.quantization_config import GgufConfig

    folder, name = str(gguf_file.parent), gguf_file.name
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=name,
        quantization_config=GgufConfig(gguf_file=name, dequantize=True),
        dtype=torch.bfloat16,
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if getattr(model, "is_quantized", False):
        raise RuntimeError(f"{gguf_file.name} stayed quantized: transformers ignored dequantize")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    tidy_saved(out)


def import_gguf(gguf_file: Path, dest: Path) -> Path:
    """Turn a GGUF file into a vLLM-ready directory at ``dest`` and return ``dest``.

    The weights are dequantized to bf16 safetensors; the tokenizer and its chat template come
    from the GGUF metadata. A ``dest`` already built from a file with the same name, size and
    sha256 is reused as is; building one needs the ``builders`` extra (torch, transformers, gguf,
    accelerate), else :class:`vllm_fleet.extras.MissingExtraError`.
    """
    gguf_file = Path(gguf_file).absolute()
    if not gguf_file.is_file():
        raise FileNotFoundError(f"no GGUF file at {gguf_file}")
    source = {
        "gguf": gguf_file.name,
        "size": gguf_file.stat().st_size,
        "sha256": sha256_file(gguf_file),
    }
    return atomic_build(
        Path(dest), "gguf-import", lambda out: import_gguf_into(gguf_file, out), source, BUILDER_VERSION
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vllm_fleet.gguf_import",
        description="Import a GGUF file into a vLLM-ready model directory (bf16 safetensors).",
    )
    parser.add_argument("gguf_file", type=Path, help="the .gguf file")
    parser.add_argument("dest", type=Path, help="the model directory to create (or reuse)")
    args = parser.parse_args(argv)
    try:
        print(import_gguf(args.gguf_file, args.dest))
    except (FileNotFoundError, FileExistsError) as err:
        print(f"gguf_import: {err}", file=sys.stderr)
        return 2
    except extras.MissingExtraError as err:
        print(
            f"gguf_import: {err}. model_sync imports `type: gguf` model sources on the controller "
            "with model_sync_gguf_python (default: ansible-playbook's own Python): install the "
            "extra there, or point model_sync_gguf_python at a Python that has it",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
