"""The flags vllm_spec makes are the flags the pinned vLLM accepts: parsed by vLLM's own parser.

vLLM's API-server argument parser (the `vllm_parser` fixture of tests/conftest.py: the
sandbox wheelhouse installed as python_env installs it on hosts) reads the argv of a spec that
sets every field.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ansible_collections.vllm_fleet.serving.plugins.module_utils import vllm_spec

# The spec of the unit tests that sets every field, on the CPU build's entrypoint.
EVERY_FIELD = {
    **yaml.safe_load((Path(__file__).resolve().parents[1] / "fixtures" / "every_field_spec.yml").read_text()),
    "device": "cpu",
    "gpus": [],
}


@pytest.mark.integration
def test_vllm_parses_every_spec_field(vllm_parser) -> None:
    argv = vllm_spec.server_argv(EVERY_FIELD, "/inst", 20)
    assert argv[1:3] == ["-m", vllm_spec.CPU_SERVER_MODULE]
    answer = vllm_parser({"argv": argv[3:]})
    assert answer["ok"], answer["error"]
    args = answer["args"]
    assert args["model"] == "/inst/chat/model"
    assert args["served_model_name"] == ["chat-8b", "org/Chat-8B:v1"]
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
    assert args["enable_lora"] is True
    assert args["max_loras"] == 2
    assert args["max_lora_rank"] == 32
    # vLLM's LoRAModulePath objects, as the parser's line server writes them (str()).
    assert [module.split(", base_model_name")[0] for module in args["lora_modules"]] == [
        "LoRAModulePath(name='chat-8b-sql', path='/var/lib/vllm-fleet/models/llama-3-8b-sql-lora/r3'",
        "LoRAModulePath(name='org/Chat-8B:fr', path='/var/lib/vllm-fleet/models/llama-3-8b-fr-lora/r1'",
    ]


@pytest.mark.integration
def test_vllm_parses_a_container_instances_flags(vllm_parser) -> None:
    spec = {**EVERY_FIELD, "runtime": "container", "engine": "podman", "image": "localhost/vllm-cpu:1"}
    argv = vllm_spec.server_argv(spec, "/inst", 20)
    after_image = argv[argv.index("localhost/vllm-cpu:1") + 1 :]
    assert after_image[:2] == ["-m", vllm_spec.CPU_SERVER_MODULE]
    answer = vllm_parser({"argv": after_image[2:]})
    assert answer["ok"], answer["error"]
    assert answer["args"]["model"] == "/inst/chat/model"
    assert answer["args"]["tensor_parallel_size"] == 2
