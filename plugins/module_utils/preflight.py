"""The preflight planner: every instance of a host checked against the host and the model.

Pure functions over plain data, so the planner runs the same in a playbook (through the
`fleet_plan` action, for the whole fleet at once), in unit tests and for `vllm-fleet plan`:

- the instance specs of one host (`vllm_server_instances`);
- the host's GPUs: the `vllm_fleet_gpus` fact of the gpu_facts module, or the hardware an
  inventory declares for fleets not built yet (`--offline`);
- the models: for each `name@revision`, its config.json and the size of its weight files, read
  on the controller from model_sync's source directories;
- the TCP listeners on the host and the systemd units holding them (online only);
- the model revisions and adapters already complete in the host's store (online only): what an
  instance serves must be there, or in model_sync_models (which brings it in the same run).

Each check ends as `pass`, `fail` or `not checked` (its input is missing: it never passes then).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from ansible_collections.vllm_fleet.serving.plugins.module_utils.firewall import errors as firewall_errors
from ansible_collections.vllm_fleet.serving.plugins.module_utils.golden import prompt_errors
from ansible_collections.vllm_fleet.serving.plugins.module_utils.model_files import read_adapter_config
from ansible_collections.vllm_fleet.serving.plugins.module_utils.vllm_spec import (
    DEFAULT_CONFIG_DIR,
    DEFAULT_MODEL_STORE,
    MAX_LORA_RANKS,
    VLLM_MAX_LORA_RANK,
    host_default_errors,
    key_errors,
    list_errors,
    server_argv,
    store_needs,
    validate_instance,
    with_defaults,
    with_host_defaults,
)

PASS = "pass"
FAIL = "fail"
NOT_CHECKED = "not checked"

# Keys under which model configs state their context length, most specific first.
_CONTEXT_KEYS = ("max_position_embeddings", "max_sequence_length", "seq_length", "n_positions", "max_seq_len")
_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}
# Quantization methods that read the same checkpoints (vLLM upgrades awq to awq_marlin, ...).
_QUANT_FAMILIES = {"awq_marlin": "awq", "auto_awq": "awq", "gptq_marlin": "gptq", "auto_gptq": "gptq"}
# The files a method reads the checkpoint's quantization settings from when config.json has none,
# as vLLM 0.32 names them (get_config_filenames; tests/unit/test_contract_properties.py checks
# this against it): with neither, vLLM exits at start ("Cannot find the config file for gptq").
# The methods not listed quantize at load (fp8, ...) or read config.json only.
QUANT_CONFIG_FILES = {
    **dict.fromkeys(("awq", "auto_awq", "awq_marlin"), ("quantize_config.json", "quant_config.json")),
    **dict.fromkeys(("gptq", "auto_gptq", "gptq_marlin", "moe_wna16"), ("quantize_config.json",)),
    **dict.fromkeys(
        ("modelopt", "modelopt_fp4", "modelopt_mxfp8", "modelopt_mixed"), ("hf_quant_config.json",)
    ),
    "inc": ("quantization_config.json",),
}
GIB = 1024**3
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def _check(name: str, status: str, detail: str) -> dict[str, str]:
    return {"check": name, "status": status, "detail": detail}


def expand_declared_gpus(declared: dict[str, Any] | None) -> dict[str, Any] | None:
    """Hardware an inventory declares, in the shape of the gpu_facts module's vllm_fleet_gpus.

    `{count: 8, name: H100, memory_total_mib: 81559, compute_capability: "9.0"}` stands for
    eight identical GPUs; a `devices` list is taken as it is.
    """
    if not declared:
        return None
    if "devices" in declared:
        return {"status": "declared", "count": len(declared["devices"]), **declared}
    count = int(declared.get("count", 0))
    device = {k: declared.get(k) for k in ("name", "memory_total_mib", "compute_capability")}
    devices = [{"index": i, **device} for i in range(count)]
    return {"status": "declared", "count": count, "devices": devices}


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's part of a config (multimodal configs nest it under text_config)."""
    nested = config.get("text_config")
    return nested if isinstance(nested, dict) else config


def _context_length(config: dict[str, Any]) -> int | None:
    for key in _CONTEXT_KEYS:
        if isinstance(config.get(key), int):
            return int(config[key])
    return None


def _model_dtype(config: dict[str, Any]) -> str | None:
    dtype = config.get("torch_dtype") or config.get("dtype")
    return dtype if isinstance(dtype, str) else None


def _head_dim(config: dict[str, Any]) -> int | None:
    if isinstance(config.get("head_dim"), int):
        return int(config["head_dim"])
    hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
    if isinstance(hidden, int) and isinstance(heads, int) and heads:
        return hidden // heads
    return None


def _cc(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def check_gpus(spec: dict[str, Any], gpus: dict[str, Any] | None) -> list[dict[str, str]]:
    """GPU count against TP x PP, the GPUs' existence, and the host's driver state."""
    s = with_defaults(spec)
    world = s["tensor_parallel_size"] * s["pipeline_parallel_size"]
    if s["device"] == "cpu":
        return [_check("gpus", PASS, "device cpu: the instance owns no GPU")]
    out = []
    owned = s["gpus"]
    if world != len(owned):
        out.append(
            _check(
                "gpus",
                FAIL,
                f"tensor_parallel_size x pipeline_parallel_size = {world} must equal the number of "
                f"GPUs in 'gpus' ({len(owned)}: {owned})",
            )
        )
    else:
        out.append(_check("gpus", PASS, f"TP x PP = {world} = GPUs owned {owned}"))
    if gpus is None:
        out.append(_check("gpus_present", NOT_CHECKED, "no GPU facts: neither gathered nor declared"))
        return out
    count = int(gpus.get("count") or 0)
    if count == 0:
        reason = gpus.get("reason") or gpus.get("status") or "none found"
        out.append(
            _check(
                "gpus_present",
                FAIL,
                f"device cuda needs NVIDIA GPUs, the host has none ({reason}); "
                "set device: cpu for the CPU build of vLLM, or fix the driver",
            )
        )
        return out
    missing = [g for g in owned if g >= count]
    if missing:
        out.append(
            _check("gpus_present", FAIL, f"'gpus' {missing} do not exist: the host has GPUs 0..{count - 1}")
        )
    else:
        out.append(_check("gpus_present", PASS, f"host has {count} GPUs"))
    return out


def check_dtype(
    spec: dict[str, Any], gpus: dict[str, Any] | None, config: dict[str, Any] | None
) -> list[dict[str, str]]:
    """bfloat16 needs compute capability 8.0 or newer; `auto` falls back to float16 below it."""
    s = with_defaults(spec)
    if s["device"] == "cpu":
        return [_check("dtype", PASS, f"device cpu: dtype {s['dtype']}")]
    devices = {d.get("index"): d for d in (gpus or {}).get("devices", [])}
    caps = [_cc(devices.get(g, {}).get("compute_capability")) for g in s["gpus"]]
    if not s["gpus"] or any(c is None for c in caps):
        return [_check("dtype", NOT_CHECKED, "compute capability of the owned GPUs unknown")]
    lowest = min(c for c in caps if c is not None)
    wants_bf16 = s["dtype"] == "bfloat16" or (
        s["dtype"] == "auto" and config is not None and _model_dtype(text_config(config)) == "bfloat16"
    )
    if not wants_bf16 or lowest >= 8.0:
        return [_check("dtype", PASS, f"dtype {s['dtype']} on compute capability {lowest}")]
    if s["dtype"] == "auto":
        return [
            _check(
                "dtype",
                PASS,
                f"the model is bfloat16 but compute capability {lowest} < 8.0: auto serves it as float16",
            )
        ]
    return [
        _check(
            "dtype",
            FAIL,
            f"dtype bfloat16 needs compute capability >= 8.0, GPUs {s['gpus']} have {lowest}; "
            "use dtype: half (or auto)",
        )
    ]


def check_model(spec: dict[str, Any], model: dict[str, Any] | None) -> list[dict[str, str]]:
    """Parallelism, context length and quantization against the model's config.json."""
    s = with_defaults(spec)
    names = ("tp_divides_heads", "pp_within_layers", "max_model_len", "quantization", "batching")
    if not model:
        why = f"no config.json at hand: {s['model']}@{s['revision']} is not in model_sync_models"
        return [_check(n, NOT_CHECKED, why) for n in names]
    if not isinstance(model.get("config"), dict):
        why = f"no config.json at hand: the source of {s['model']}@{s['revision']} on the controller has none"
        return [_check(n, NOT_CHECKED, why) for n in names]
    full = model["config"]
    config = text_config(full)
    out = []
    tp, pp = s["tensor_parallel_size"], s["pipeline_parallel_size"]
    heads = config.get("num_attention_heads")
    kv_heads = config.get("num_key_value_heads", heads)
    if not isinstance(heads, int) or not isinstance(kv_heads, int):
        out.append(_check(names[0], NOT_CHECKED, "config.json has no num_attention_heads"))
    elif heads % tp:
        out.append(
            _check(names[0], FAIL, f"tensor_parallel_size {tp} must divide the {heads} attention heads")
        )
    elif kv_heads % tp and tp % kv_heads:
        # vLLM splits KV heads over the ranks, or replicates them when there are fewer than TP.
        out.append(
            _check(
                names[0],
                FAIL,
                f"tensor_parallel_size {tp} and the {kv_heads} KV heads must divide one another",
            )
        )
    else:
        out.append(_check(names[0], PASS, f"{heads} attention heads, {kv_heads} KV heads, TP {tp}"))
    layers = config.get("num_hidden_layers")
    if not isinstance(layers, int):
        out.append(_check(names[1], NOT_CHECKED, "config.json has no num_hidden_layers"))
    elif pp > layers:
        out.append(
            _check(names[1], FAIL, f"pipeline_parallel_size {pp} must not exceed the model's {layers} layers")
        )
    else:
        out.append(_check(names[1], PASS, f"PP {pp} <= {layers} layers"))
    context = _context_length(config)
    wanted = s["max_model_len"]
    if wanted is None:
        out.append(_check(names[2], PASS, f"unset: vLLM uses the model's context ({context})"))
    elif context is None:
        out.append(_check(names[2], NOT_CHECKED, "config.json states no context length"))
    elif wanted > context and not s["rope_scaling"]:
        out.append(
            _check(
                names[2],
                FAIL,
                f"max_model_len {wanted} exceeds the model's context {context}; lower it or set rope_scaling",
            )
        )
    else:
        out.append(_check(names[2], PASS, f"max_model_len {wanted}, model context {context}"))
    # Where vLLM reads a checkpoint's own method: config.json, its text_config, or compression_config.
    own_config = (
        full.get("quantization_config") or config.get("quantization_config") or full.get("compression_config")
    )
    own = (own_config or {}).get("quant_method")
    wanted_q = s["quantization"]
    files = QUANT_CONFIG_FILES.get(wanted_q or "", ())
    if own and wanted_q and _QUANT_FAMILIES.get(wanted_q, wanted_q) != _QUANT_FAMILIES.get(own, own):
        out.append(
            _check(
                names[3],
                FAIL,
                f"quantization {wanted_q} contradicts the model's own {own}; leave it unset or use {own}",
            )
        )
    elif not own and files and "json_files" not in model:
        out.append(
            _check(names[3], NOT_CHECKED, f"quantization {wanted_q}: the model's file list is not at hand")
        )
    elif not own and files and not any(f.endswith(files) for f in model["json_files"]):
        out.append(
            _check(
                names[3],
                FAIL,
                f"quantization {wanted_q} needs a checkpoint quantized with it, but "
                f"{s['model']}@{s['revision']} has no quantization_config in config.json and no "
                f"{' or '.join(files)}: use its quantized revision, or a method that quantizes at load (fp8)",
            )
        )
    else:
        out.append(_check(names[3], PASS, f"model: {own or 'not quantized'}, spec: {wanted_q or 'unset'}"))
    out.append(_check_batching(s, wanted if wanted is not None else context))
    return out


def _check_batching(s: dict[str, Any], model_len: int | None) -> dict[str, str]:
    """vLLM's scheduler refuses to start when one step cannot hold a whole prompt of the context
    length and prefills are not chunked."""
    tokens = s["max_num_batched_tokens"]
    if tokens is None or s["enable_chunked_prefill"] is not False:
        return _check(
            "batching", PASS, "chunked prefill may split long prompts" if tokens else "vLLM's defaults"
        )
    if model_len is None:
        return _check("batching", NOT_CHECKED, "the context length is unknown")
    if tokens < model_len:
        return _check(
            "batching",
            FAIL,
            f"max_num_batched_tokens {tokens} is below the context length {model_len} with "
            "enable_chunked_prefill false: raise it, lower max_model_len or allow chunked prefill",
        )
    return _check("batching", PASS, f"max_num_batched_tokens {tokens} >= context {model_len}")


def check_memory(
    spec: dict[str, Any], gpus: dict[str, Any] | None, model: dict[str, Any] | None
) -> list[dict[str, str]]:
    """Estimate: weights plus one max_model_len sequence of KV cache per GPU vs the budget."""
    s = with_defaults(spec)
    name = "memory_estimate"
    if s["device"] == "cpu":
        return [
            _check(name, NOT_CHECKED, "device cpu: no GPU memory to plan (VLLM_CPU_KVCACHE_SPACE sets RAM)")
        ]
    if not model or not model.get("weights_bytes") or not isinstance(model.get("config"), dict):
        return [_check(name, NOT_CHECKED, "model weights or config.json not at hand")]
    devices = {d.get("index"): d for d in (gpus or {}).get("devices", [])}
    totals = [devices.get(g, {}).get("memory_total_mib") for g in s["gpus"]]
    if not s["gpus"] or any(not isinstance(t, int) for t in totals):
        return [_check(name, NOT_CHECKED, "memory of the owned GPUs unknown")]
    config = text_config(model["config"])
    world = s["tensor_parallel_size"] * s["pipeline_parallel_size"]
    weights = model["weights_bytes"] / world
    context = s["max_model_len"] or _context_length(config) or 0
    kv_bytes = 1 if s["kv_cache_dtype"].startswith("fp8") else _DTYPE_BYTES.get(_model_dtype(config) or "", 2)
    head_dim = _head_dim(config)
    layers, kv_heads = config.get("num_hidden_layers"), config.get("num_key_value_heads")
    kv_heads = kv_heads if isinstance(kv_heads, int) else config.get("num_attention_heads")
    if not (head_dim and isinstance(layers, int) and isinstance(kv_heads, int)):
        return [_check(name, NOT_CHECKED, "config.json lacks layers, heads or head size")]
    kv = 2 * layers * kv_heads * head_dim * kv_bytes * context / world
    utilization = s["gpu_memory_utilization"] or 0.9
    budget = utilization * min(t for t in totals if isinstance(t, int)) * 1024**2
    detail = (
        f"estimate per GPU: weights {weights / GIB:.1f} GiB + KV cache for one {context}-token "
        f"sequence {kv / GIB:.2f} GiB vs {utilization} x memory = {budget / GIB:.1f} GiB"
    )
    if weights + kv > budget:
        detail += (
            ": raise gpu_memory_utilization, lower max_model_len, or spread the model over more GPUs "
            "(tensor_parallel_size, pipeline_parallel_size)"
        )
    return [_check(name, FAIL if weights + kv > budget else PASS, detail)]


def check_port(spec: dict[str, Any], listeners: list[dict[str, Any]] | None) -> list[dict[str, str]]:
    """The port is free, or held by this very instance (its vllm-<name>.service)."""
    s = with_defaults(spec)
    if listeners is None:
        return [_check("port_free", NOT_CHECKED, "offline: the host's listeners are not known")]
    own = f"vllm-{s['name']}.service"
    holders = sorted({e.get("unit") or "an unknown process" for e in listeners if e.get("port") == s["port"]})
    if not holders:
        return [_check("port_free", PASS, f"port {s['port']} is free")]
    if holders == [own]:
        return [_check("port_free", PASS, f"port {s['port']} is held by this instance ({own})")]
    return [
        _check(
            "port_free",
            FAIL,
            f"port {s['port']} is in use on the host by {', '.join(h for h in holders if h != own)}; "
            "choose another 'port'",
        )
    ]


def check_adapters(spec: dict[str, Any], models: Mapping[str, dict[str, Any]]) -> list[dict[str, str]]:
    """Each LoRA adapter against its adapter_config.json: a LoRA, of a rank --max-lora-rank holds."""
    s = with_defaults(spec)
    if not s["adapters"]:
        return []
    limit = s["max_lora_rank"] or VLLM_MAX_LORA_RANK
    out = []
    for adapter in s["adapters"]:
        found = models.get(f"{adapter['model']}@{adapter['revision']}")
        where = f"adapter {adapter['name']} ({adapter['model']}@{adapter['revision']})"
        config = found.get("adapter") if found else None
        if not found:
            out.append(_check("adapter", NOT_CHECKED, f"{where} is not in model_sync_models"))
        elif not isinstance(config, dict):
            out.append(
                _check("adapter", FAIL, f"{where}: its source on the controller has no adapter_config.json")
            )
        elif config.get("peft_type") != "LORA":
            out.append(
                _check("adapter", FAIL, f"{where} is a {config.get('peft_type')!r} adapter; vLLM serves LORA")
            )
        else:
            ranks = [config.get("r"), *(config.get("rank_pattern") or {}).values()]
            rank = max((r for r in ranks if isinstance(r, int)), default=None)
            if rank is None:
                out.append(_check("adapter", NOT_CHECKED, f"{where}: adapter_config.json names no rank 'r'"))
            elif rank > limit:
                fit = next(r for r in (*MAX_LORA_RANKS, rank) if r >= rank)
                out.append(
                    _check(
                        "adapter",
                        FAIL,
                        f"{where} has rank {rank}, above max_lora_rank {limit}; set it to {fit}",
                    )
                )
            else:
                out.append(_check("adapter", PASS, f"{where}: LoRA of rank {rank} (max_lora_rank {limit})"))
    return out


def check_store(
    spec: dict[str, Any], synced: Collection[str], stored: Collection[str] | None, model_store: str
) -> list[dict[str, str]]:
    """What model_sync does not bring in this run must be in the host's store already: else the
    placement play would refuse it late, after other hosts had changed. Offline: no check."""
    out = []
    for need in store_needs([spec]):
        if stored is None or need["key"] in synced:
            continue
        what = need["what"]
        if need["path"] in stored:
            out.append(_check("store", PASS, f"{what}: in {model_store} on the host already"))
        else:
            out.append(
                _check(
                    "store",
                    FAIL,
                    f"{what} is neither in model_sync_models nor in {model_store} on the host: "
                    "add it to model_sync_models",
                )
            )
    return out


def parse_store_listing(rc: int, stdout: str, stderr: str) -> list[str] | None:
    """The `<model>/<revision>/<file>` paths that facts.yml's `find` listed under the store (an
    empty list where there is no store yet; None where it could not be read: not checked).
    Staging directories (.partial-*) are not revisions; find does not follow the `current` links."""
    if rc != 0:
        return [] if "No such file or directory" in stderr and not stdout.strip() else None
    paths = []
    for line in stdout.splitlines():
        parts = line.strip().split("/")[-3:]
        if len(parts) == 3 and not any(part.startswith(".") for part in parts):
            paths.append("/".join(parts))
    return paths


def plan_host(
    instances: Any,
    gpus: dict[str, Any] | None,
    models: dict[str, dict[str, Any]],
    listeners: list[dict[str, Any]] | None,
    instance_root: str,
    shutdown_timeout: int,
    model_store: str = DEFAULT_MODEL_STORE,
    synced: Collection[str] = (),
    stored: Collection[str] | None = None,
    container: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The plan of one host: each instance's command line and checks, and the host's errors.

    `synced`: the `name@revision` of the host's model_sync_models; `stored`: what its store holds
    (parse_store_listing), None when not read. `container`: what a container instance's command
    line takes from the host's settings besides (`config_dir`, `stop_timeout`, `env_names`)."""
    host_errors = list_errors(instances)
    plans: list[dict[str, Any]] = []
    owners: dict[int, list[str]] = {}
    for index, spec in enumerate(instances if isinstance(instances, list) else []):
        errors = validate_instance(spec, index)
        name = spec.get("name", "?") if isinstance(spec, dict) else "?"
        if errors:
            plans.append(
                {"instance": name, "command": None, "checks": [_check("spec", FAIL, e) for e in errors]}
            )
            continue
        s = with_defaults(spec)
        for g in s["gpus"]:
            owners.setdefault(g, []).append(s["name"])
        model = models.get(f"{s['model']}@{s['revision']}")
        config = model.get("config") if model else None
        checks = [_check("spec", PASS, "settings are valid")]
        checks += check_gpus(s, gpus)
        checks += check_dtype(s, gpus, config)
        checks += check_model(s, model)
        checks += check_memory(s, gpus, model)
        checks += check_port(s, listeners)
        checks += check_adapters(s, models)
        checks += check_store(s, synced, stored, model_store)
        argv = server_argv(s, instance_root, shutdown_timeout, model_store, **(container or {}))
        plans.append({"instance": s["name"], "command": shlex.join(argv), "argv": argv, "checks": checks})
    shared = {g: names for g, names in owners.items() if len(names) > 1}
    for gpu, names in sorted(shared.items()):
        host_errors.append(f"vllm_server_instances: GPU {gpu} is owned by several instances: {names}")
    failures = list(host_errors)
    for plan in plans:
        # The spec's own errors name the instance by its place already.
        failures += [
            c["detail"] if c["check"] == "spec" else f"instance {plan['instance']}: {c['detail']}"
            for c in plan["checks"]
            if c["status"] == FAIL
        ]
    return {"instances": plans, "host_errors": host_errors, "failures": failures, "ok": not failures}


def read_model_facts(source: str) -> dict[str, Any]:
    """What the planner needs of a model directory on the controller: its config.json (None when
    absent or unreadable), the total size of its weight files and the names of its JSON files."""
    root = Path(source)
    try:
        config = json.loads((root / "config.json").read_text())
    except (OSError, ValueError):
        config = None
    adapter = read_adapter_config(str(root))
    weights = sum(p.stat().st_size for p in root.glob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    # The JSON files beside it: some methods read their settings from one (QUANT_CONFIG_FILES).
    json_files = sorted(p.name for p in root.glob("*.json"))
    return {"config": config, "weights_bytes": weights, "json_files": json_files, "adapter": adapter}


def instance_names(instances: Any) -> set[str]:
    """The names in a host's `vllm_server_instances`, as far as its entries have one."""
    if not isinstance(instances, list):
        return set()
    return {
        spec["name"] for spec in instances if isinstance(spec, Mapping) and isinstance(spec.get("name"), str)
    }


# The host's timing settings (seconds) and the least each may be: a value vLLM, systemd or the
# readiness gate would only refuse once an instance restarts with it.
TIMINGS = {
    "vllm_server_shutdown_timeout": 0,
    "vllm_server_stop_margin": 0,
    "vllm_server_ready_timeout": 1,
    "vllm_server_ready_interval": 1,
    "vllm_server_drain_timeout": 0,
    "vllm_server_drain_interval": 1,
}


def _whole(value: Any) -> int:
    """A timing setting as seconds where it is a whole number (timing_errors refuses the rest)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def timing_errors(timings: Mapping[str, Any]) -> list[str]:
    """Errors of the timing settings (TIMINGS) given: whole seconds, no unit, at least the least.

    Digit strings count (``-e vllm_server_ready_timeout=900`` gives one)."""
    errors = []
    for name, least in TIMINGS.items():
        if name not in timings:
            continue
        value = timings[name]
        whole = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and value.strip().lstrip("-").isdigit()
        )
        if not whole or int(value) < least:
            errors.append(f"{name} must be a whole number of seconds >= {least} (no unit), got {value!r}")
    return errors


def reference_errors(golden_prompts: Any, api_keys: Any, fleet_instances: Collection[str]) -> list[str]:
    """Settings keyed by instance name that name no instance of the fleet: a typo there would
    leave the real instance without its key or its gate, silently. One group-wide setting
    covers every host, so a name only has to exist on some host."""
    known = ", ".join(sorted(fleet_instances)) or "none"
    found = []
    for setting, value in (
        ("vllm_server_golden_prompts", golden_prompts),
        ("vllm_server_api_keys", api_keys),
    ):
        if isinstance(value, Mapping):
            found += [
                f"{setting}[{name!r}] names no instance of the fleet (instances: {known})"
                for name in value
                if name not in fleet_instances
            ]
    return found


def plan_fleet(
    hosts: Mapping[str, Mapping[str, Any]],
    read_model: Callable[[str], dict[str, Any]] = read_model_facts,
    other_instances: Collection[str] = (),
    inventory: Mapping[str, Collection[str]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The plan of every host at once, each model directory read once for the whole fleet.

    Each host's inputs: `instances`, `gpus` (gpu_facts' vllm_fleet_gpus, or None), `declared_gpus`
    (used when `gpus` is None), `listeners` (parsed `ss` output, or None), `models` (its
    model_sync_models), `instance_root`, `model_store`, `shutdown_timeout`, `golden_prompts`, `api_key` and
    `api_keys` (unset: no key). `other_instances`: the instance names of the fleet's hosts that are
    not planned now (a run limited to some hosts), which the golden prompts and keys may name too.
    `firewall`, `firewall_groups`, `firewall_allow`: the instance ports' firewall, checked against
    `inventory` (group name: its hosts). `timings`: the host's TIMINGS settings by name.
    `stored`: parse_store_listing of the host's store (None or absent: not read).
    """
    fleet_instances = set(other_instances).union(
        *(instance_names(i.get("instances")) for i in hosts.values())
    )
    read: dict[str, dict[str, Any]] = {}
    plans = {}
    for host, inputs in hosts.items():
        models = {}
        synced = set()
        for model in inputs.get("models") or []:
            if isinstance(model, Mapping) and {"name", "revision"} <= set(model):
                synced.add(f"{model['name']}@{model['revision']}")
            if isinstance(model, Mapping) and {"name", "revision", "source"} <= set(model):
                source = str(model["source"])
                if source not in read:
                    read[source] = read_model(source)
                models[f"{model['name']}@{model['revision']}"] = read[source]
        gpus = inputs.get("gpus")
        timings = inputs.get("timings", {})
        defaults = inputs.get("instance_defaults") or {}
        plan = plan_host(
            with_host_defaults(inputs.get("instances"), defaults),
            gpus if gpus is not None else expand_declared_gpus(inputs.get("declared_gpus")),
            models,
            inputs.get("listeners"),
            inputs["instance_root"],
            inputs["shutdown_timeout"],
            inputs.get("model_store") or DEFAULT_MODEL_STORE,
            synced,
            inputs.get("stored"),
            {
                "config_dir": inputs.get("config_dir") or DEFAULT_CONFIG_DIR,
                "stop_timeout": _whole(inputs["shutdown_timeout"])
                + _whole(timings.get("vllm_server_stop_margin")),
                "env_names": list(inputs.get("environment") or {}),
            },
        )
        settings = host_default_errors(defaults)
        settings += prompt_errors(inputs.get("golden_prompts", {}))
        settings += timing_errors(timings)
        settings += key_errors(inputs.get("api_key", ""), inputs.get("api_keys", {}))
        settings += reference_errors(inputs.get("golden_prompts"), inputs.get("api_keys"), fleet_instances)
        settings += firewall_errors(
            inputs.get("firewall", False),
            inputs.get("firewall_groups", []),
            inputs.get("firewall_allow", []),
            inventory or {},
        )
        if settings:
            plan = {
                **plan,
                "host_errors": plan["host_errors"] + settings,
                "failures": plan["failures"] + settings,
            }
            plan["ok"] = False
        plans[host] = plan
    return plans


# The cgroup scope a container engine gives a container: docker-<id>.scope, libpod-<id>.scope.
CONTAINER_SCOPE = re.compile(r"^(?:docker|libpod)-(?P<id>[0-9a-f]{64})\.scope$")


def parse_listeners(ss_output: str, containers: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """TCP listeners from `ss -Hltne`: the port and the systemd unit whose cgroup holds it.

    The cgroup names the owner even where `ss -p` cannot (vLLM's sockets show no process). A
    listener in a container's scope belongs to the unit of that container's instance: `containers`
    maps the engines' container IDs to names (`<engine> ps --no-trunc`), vllm-<name> to its unit.
    """
    containers = containers or {}
    listeners = []
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) < 4 or not fields[3].rsplit(":", 1)[-1].isdigit():
            continue
        cgroup = next((f.split(":", 1)[1] for f in fields if f.startswith("cgroup:")), "")
        leaf = cgroup.rstrip("/").rsplit("/", 1)[-1]
        unit = leaf if leaf.endswith(".service") else None
        scope = CONTAINER_SCOPE.match(leaf)
        container = containers.get(scope.group("id"), "") if scope else ""
        if container.startswith("vllm-"):
            unit = f"{container}.service"
        listeners.append({"port": int(fields[3].rsplit(":", 1)[-1]), "unit": unit})
    return listeners


def parse_containers(stdout: str) -> dict[str, str]:
    """Container IDs to names from `<engine> ps --no-trunc --format '{{.ID}} {{.Names}}'` lines."""
    found = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            found[parts[0]] = parts[1]
    return found
