"""``python -m vllm_fleet.gguf_import GGUF_FILE DEST``: a GGUF file as a vLLM-ready directory.

The command the model_sync role runs on the controller for ``type: gguf`` sources. It calls
:func:`vllm_fleet.models.import_gguf` (bf16 safetensors, tokenizer and chat template from the
GGUF metadata; a ``DEST`` already built from the same file is reused) and prints ``DEST``.
Building needs the ``builders`` extra in the Python that runs it (``model_sync_gguf_python``,
by default the controller's ansible-playbook Python): ``pip install 'vllm_fleet[builders]'``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vllm_fleet.gguf_import",
        description="Import a GGUF file into a vLLM-ready model directory (bf16 safetensors).",
    )
    parser.add_argument("gguf_file", type=Path, help="the .gguf file")
    parser.add_argument("dest", type=Path, help="the model directory to create (or reuse)")
    args = parser.parse_args(argv)
    from vllm_fleet.extras import MissingExtraError
    from vllm_fleet.models import import_gguf

    try:
        print(import_gguf(args.gguf_file, args.dest))
    except (FileNotFoundError, FileExistsError) as err:
        print(f"gguf_import: {err}", file=sys.stderr)
        return 2
    except MissingExtraError as err:
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
