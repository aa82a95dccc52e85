"""The instance contract against vLLM's own argument parser (the real vLLM 0.32 of the wheelhouse).

Property: a spec with random mutations is either refused with messages that each name a setting,
or accepted; then vLLM's parser takes its command line and reads back what the spec says. Never
a traceback. The parser runs in a real vLLM environment (the `vllm_parser` fixture of
tests/conftest.py).
"""

from __future__ import annotations

import sys

import pytest
from ansible_collections.vllm_fleet.serving.plugins.module_utils import preflight, vllm_spec
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

CPU = {"name": "chat", "model": "smollm2", "revision": "r1", "port": 8000, "device": "cpu"}
CUDA = {
    "name": "big",
    "model": "llama",
    "revision": "r1",
    "port": 8001,
    "gpus": [0, 1],
    "tensor_parallel_size": 2,
}
# What the planner knows of the model (Llama-3-8B's shape) and of the host (8 GPUs).
MODELS = {
    f"{m}@r1": {
        "config": {"num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32,
                   "max_position_embeddings": 8192, "hidden_size": 4096, "torch_dtype": "bfloat16"},
        "weights_bytes": 16 * 1024**3,
    }
    for m in ("smollm2", "llama")
}  # fmt: skip
GPUS = preflight.expand_declared_gpus(
    {"count": 8, "name": "GPU", "memory_total_mib": 81559, "compute_capability": "9.0"}
)
# Whole extra_args groups: flags the spec does not own, with their values, and the owned flags
# in vLLM's other spellings.
EXTRA_ARGS = [
    ["--seed", "7"], ["--max-log-len=100"], ["--distributed-executor-backend", "uni"],
    ["--disable-log-stats"], ["--enable-log-requests"], ["--tokenizer-mode", "auto"],
    ["-tp", "2"], ["--tensor_parallel_size=2"], ["--tensor-parallel", "4"], ["--no-enforce-eager"],
    ["--api-key=x"], ["--config", "/etc/v.yaml"], ["--hf-token", "hf_x"], ["-q", "fp8"],
    ["--served_model_name", "other"], ["--hf-overrides.rope_scaling.factor=2"], ["--port=1"],
]  # fmt: skip
ENV_NAMES = ["VLLM_CPU_KVCACHE_SPACE", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "HF_TOKEN", "HOME", "1X"]
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 70000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.sampled_from(
        ["auto", "bfloat16", "bf16", "fp8", "awq", "cpu", "cuda", "chat", "../etc", "a b", "qwen3", "0.0.0.0"]
    ),
    st.lists(st.integers(-1, 9), max_size=4),
    st.lists(st.sampled_from(EXTRA_ARGS), max_size=3).map(lambda groups: [a for g in groups for a in g]),
    st.dictionaries(st.sampled_from(ENV_NAMES), st.one_of(st.text(max_size=6), st.integers(), st.none())),
    st.fixed_dictionaries({"rope_type": st.sampled_from(["yarn", "dynamic"]), "factor": st.floats(0.5, 8)}),
)
# Values a user would plausibly write, per setting: most of these specs pass, so vLLM parses them.
PLAUSIBLE = {
    "port": st.integers(1, 65535),
    "host": st.sampled_from(["0.0.0.0", "127.0.0.1", "::"]),
    "served_model_name": st.sampled_from(["chat", "org/model-v2", "Llama-3.1-8B-Instruct", "m.1_x"]),
    "tensor_parallel_size": st.sampled_from([1, 2, 4]),
    "pipeline_parallel_size": st.sampled_from([1, 2]),
    "max_model_len": st.none() | st.integers(16, 8192),
    "gpu_memory_utilization": st.none() | st.floats(0.05, 1.0),
    "dtype": st.sampled_from(vllm_spec.DTYPES),
    "quantization": st.sampled_from(vllm_spec.QUANTIZATIONS),
    "kv_cache_dtype": st.sampled_from(vllm_spec.KV_CACHE_DTYPES),
    "enforce_eager": st.booleans(),
    "trust_remote_code": st.booleans(),
    "enable_chunked_prefill": st.none() | st.booleans(),
    "enable_prefix_caching": st.none() | st.booleans(),
    "max_num_seqs": st.none() | st.integers(1, 512),
    "max_num_batched_tokens": st.none() | st.integers(1, 16384),
    "reasoning_parser": st.sampled_from([None, "qwen3", "deepseek_r1"]),
    "default_chat_template_kwargs": st.none() | st.fixed_dictionaries({"enable_thinking": st.booleans()}),
    "rope_scaling": st.none()
    | st.fixed_dictionaries({"rope_type": st.just("yarn"), "factor": st.floats(1, 4)}),
    "extra_args": st.lists(st.sampled_from(EXTRA_ARGS[:6]), max_size=3).map(
        lambda g: [a for x in g for a in x]
    ),
    "env": st.dictionaries(st.sampled_from(ENV_NAMES[:2]), st.integers(1, 8).map(str)),
    "adapters": st.lists(
        st.fixed_dictionaries(
            {
                "name": st.sampled_from(["sql", "org/fr:v1"]),
                "model": st.just("lora"),
                "revision": st.just("r1"),
            }
        ),
        max_size=2,
        unique_by=lambda adapter: adapter["name"],
    ),
    "max_lora_rank": st.sampled_from([None, 8, 64]),
    "max_loras": st.sampled_from([None, 1, 4]),
}
MUTATIONS = st.dictionaries(
    st.sampled_from([*sorted(vllm_spec.INSTANCE_DEFAULTS), "tensor_paralel_size"]),
    VALUES,
    min_size=1,
    max_size=3,
) | st.fixed_dictionaries({}, optional=PLAUSIBLE)
# What a refusal names: a setting of the spec (quoted), an item of one, or an unknown key.
SETTING_MARKS = [f"'{key}'" for key in vllm_spec.INSTANCE_DEFAULTS] + [
    "extra_args[",
    "env[",
    "adapters[",
    "unknown setting",
]


def parser_argv(argv: list[str]) -> list[str]:
    """The unit's command line as the API server module's parser reads it (`vllm serve M` is `--model M`)."""
    if argv[1] == "-m":
        return argv[3:]
    return ["--model", argv[2], *argv[3:]]


def test_every_spelling_of_an_owned_flag_is_refused_and_no_other_flag(vllm_parser):
    options: dict[str, str] = vllm_parser({"options": True})["options"]
    owned = vllm_spec.OWNED_FLAGS + vllm_spec.HIDDEN_SETTING_FLAGS + vllm_spec.SECRET_FLAGS
    missing = [flag for flag in owned if flag not in options]
    assert not missing, f"flags the spec owns that vLLM 0.32 does not know: {missing}"
    owned_dests = {options[flag] for flag in owned}
    # argparse also takes a unique prefix of a flag; vLLM reads '_' for '-' in a flag's name.
    spellings = set(options)
    for option in options:
        if option.startswith("--"):
            spellings |= {option.replace("-", "_").replace("__", "--", 1)}
            for end in range(4, len(option)):
                prefix = option[:end]
                if [o for o in options if o.startswith(prefix)] == [option]:
                    spellings.add(prefix)
    wrong = []
    for spelling in sorted(spellings):
        dest = options.get(spelling.replace("_", "-")) or next(
            options[o] for o in options if o.startswith(spelling.replace("_", "-"))
        )
        errors = vllm_spec.validate_instance({**CPU, "extra_args": [spelling, "1"]})
        refused = any(
            why in e
            for e in errors
            for why in ("must not repeat", "must not be given", "reads settings", "puts a secret")
        )
        if refused != (dest in owned_dests):
            wrong.append((spelling, dest, "refused" if refused else "accepted"))
    assert not wrong, wrong


def test_the_quantization_lists_are_vllms(vllm_parser):
    """vllm_spec.QUANTIZATIONS and preflight.QUANTIZATION_CONFIG_FILES as vLLM 0.32 itself has them."""
    real = vllm_parser({"quantization": True})
    allowed = [q for q in vllm_spec.QUANTIZATIONS if q]
    assert not set(allowed) - set(real["methods"]), "methods vLLM 0.32 does not know"
    assert not set(allowed) & set(real["deprecated"]), "methods vLLM 0.32 refuses without a flag"
    files = {
        m: tuple(real["config_files"][m])
        for m in allowed
        if real["config_files"][m] and m not in real["online"]
    }
    assert files == preflight.QUANT_CONFIG_FILES


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from([CPU, CUDA]), mutation=MUTATIONS)
def test_a_mutated_spec_is_refused_by_name_or_accepted_by_vllm(vllm_parser, base, mutation):
    spec = {**base, **mutation}
    errors = vllm_spec.validate_instance(spec)
    plan = preflight.plan_host([spec], GPUS, MODELS, [], "/inst", 20)
    if errors:
        unnamed = [e for e in errors if not any(mark in e for mark in SETTING_MARKS)]
        assert not unnamed, unnamed
        assert not plan["ok"]
        event("refused by the spec's checks")
        return
    if not plan["ok"]:
        # Refused against the host or the model: each failure names the settings it is about.
        keys = [k for k in vllm_spec.INSTANCE_DEFAULTS if k not in ("name", "model", "host", "env")]
        unnamed = [f for f in plan["failures"] if not any(k in f for k in keys)]
        assert not unnamed, unnamed
        event("refused by the planner")
    event("accepted: parsed by vLLM")
    argv = vllm_spec.server_argv(spec, "/inst", 20)
    vllm_spec.systemd_quote(argv)
    vllm_spec.systemd_quote([f"{k}={v}" for k, v in vllm_spec.server_environment(spec).items()], False)
    answer = vllm_parser({"argv": parser_argv(argv)})
    assert answer["ok"], (spec, answer["error"])
    s = vllm_spec.with_defaults(spec)
    args = answer["args"]
    assert args["port"] == s["port"]
    assert args["served_model_name"] == [s["served_model_name"]]
    assert args["tensor_parallel_size"] == s["tensor_parallel_size"]
    assert args["pipeline_parallel_size"] == s["pipeline_parallel_size"]
    assert args["max_model_len"] == s["max_model_len"]
    assert args["dtype"] == s["dtype"]
    assert args["quantization"] == s["quantization"]
    assert args["kv_cache_dtype"] == s["kv_cache_dtype"]
    assert args["enforce_eager"] == s["enforce_eager"]
    assert args["trust_remote_code"] == s["trust_remote_code"]
    assert args["max_num_seqs"] == s["max_num_seqs"]
    assert args["api_key"] is None


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
