"""vLLM's own argument parser as a line server, run by the real vLLM's Python (the environment
of tests/builders/vllm_parser.py) for the `vllm_parser` fixture of tests/conftest.py.

One JSON request per line on stdin, one JSON answer per line on stdout:
  {"argv": [...]}     -> {"ok": true, "args": {dest: value}} or {"ok": false, "error": "..."},
                         as `python -m vllm.entrypoints.openai.api_server ARGV` parses and checks them
  {"options": true}   -> {"options": {option string: dest}} of every flag the parser knows
  {"quantization": true}
                      -> {"methods": [...], "deprecated": [...], "online": [...],
                          "config_files": {method: [...]}}: the methods vLLM accepts, the files
                         each reads its checkpoint settings from when config.json has no
                         quantization_config, and those that quantize at load without such a file
"""

import contextlib
import io
import json
import os
import sys

# vLLM logs to stdout: answers go to the real stdout, everything else to stderr.
answers = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)

from vllm.entrypoints.launchers.cli_args import (  # noqa: E402
    make_arg_parser,
    validate_parsed_serve_args,
)
from vllm.utils.argparse_utils import FlexibleArgumentParser  # noqa: E402


def parser():
    return make_arg_parser(FlexibleArgumentParser(prog="api_server"))


def quantization():
    from vllm.config.quantization import _ONLINE_SHORTHANDS
    from vllm.model_executor.layers import quantization as methods

    files = {}
    for method in methods.QUANTIZATION_METHODS:
        try:
            files[method] = list(methods.get_quantization_config(method).get_config_filenames())
        except Exception:  # a method whose backend is not importable on this platform
            files[method] = None
    return {
        "methods": list(methods.QUANTIZATION_METHODS),
        "deprecated": list(methods.DEPRECATED_QUANTIZATION_METHODS),
        # Without a config file these quantize at load instead (weight_utils.get_quant_config).
        "online": sorted(_ONLINE_SHORTHANDS),
        "config_files": files,
    }


def answer(request):
    if request.get("quantization"):
        return quantization()
    if request.get("options"):
        return {"options": {o: a.dest for a in parser()._actions for o in a.option_strings}}
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = parser().parse_args(request["argv"])
            validate_parsed_serve_args(args)
    except SystemExit:
        return {"ok": False, "error": errors.getvalue().strip().splitlines()[-1:]}
    except Exception as error:  # what vLLM raises for a value its checks refuse
        return {"ok": False, "error": [f"{type(error).__name__}: {error}"]}
    return {"ok": True, "args": json.loads(json.dumps(vars(args), default=str))}


for line in sys.stdin:
    answers.write(json.dumps(answer(json.loads(line))) + "\n")
    answers.flush()
