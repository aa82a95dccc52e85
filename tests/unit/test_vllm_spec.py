"""The one place that turns an instance spec into vLLM flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from ansible_collections.vllm_fleet.serving.plugins.module_utils import vllm_spec

BASE = {"name": "chat", "model": "llama-3-8b", "revision": "r1", "port": 8000}
EVERY_FIELD = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "fixtures" / "every_field_spec.yml").read_text()
)


def test_minimal_cuda_spec_uses_vllm_serve():
    argv = vllm_spec.server_argv(BASE, "/inst", 20)
    assert argv == [
        "/inst/chat/env/bin/vllm", "serve", "/inst/chat/model",
        "--served-model-name", "llama-3-8b",
        "--host", "0.0.0.0",
        "--port", "8000",
        "--shutdown-timeout", "20",
    ]  # fmt: skip


def test_cpu_spec_uses_the_module_entrypoint():
    argv = vllm_spec.server_argv({**BASE, "device": "cpu"}, "/inst", 5)
    python, model = "/inst/chat/env/bin/python", "/inst/chat/model"
    assert argv[:5] == [python, "-m", vllm_spec.CPU_SERVER_MODULE, "--model", model]


def test_every_flag_field():
    spec = EVERY_FIELD
    assert vllm_spec.validate_instance(spec) == []
    argv = vllm_spec.server_argv(spec, "/inst", 30)
    joined = " ".join(argv)
    for fragment in (
        "--served-model-name chat-8b",
        "--host 127.0.0.1",
        "--tensor-parallel-size 2",
        "--pipeline-parallel-size 2",
        "--max-model-len 8192",
        "--gpu-memory-utilization 0.85",
        "--dtype bfloat16",
        "--quantization fp8",
        "--enforce-eager",
        "--shutdown-timeout 30",
        "--kv-cache-dtype fp8",
        "--max-num-seqs 64",
        "--max-num-batched-tokens 8192",
        "--enable-chunked-prefill",
        "--no-enable-prefix-caching",
        "--reasoning-parser qwen3",
        "--trust-remote-code",
    ):
        assert fragment in joined
    rope = argv[argv.index("--hf-overrides") + 1]
    assert json.loads(rope) == {"rope_scaling": spec["rope_scaling"]}
    kwargs = argv[argv.index("--default-chat-template-kwargs") + 1]
    assert json.loads(kwargs) == {"enable_thinking": False}
    assert argv[-2:] == ["--uvicorn-log-level", "warning"]
    assert vllm_spec.server_environment(spec) == {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}


def test_defaults_leave_vllm_defaults_alone():
    joined = " ".join(vllm_spec.server_argv(BASE, "/inst", 1))
    for flag in (
        "--dtype",
        "--max-model-len",
        "--gpu-memory-utilization",
        "--quantization",
        "--enforce-eager",
    ):
        assert flag not in joined


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        ({"port": 70000}, "'port'"),
        ({"port": "8000"}, "'port'"),
        ({"device": "tpu"}, "'device'"),
        ({"dtype": "bf16"}, "'dtype'"),
        ({"quantization": "int3"}, "'quantization'"),
        ({"tensor_parallel_size": 0}, "'tensor_parallel_size'"),
        ({"pipeline_parallel_size": True}, "'pipeline_parallel_size'"),
        ({"gpu_memory_utilization": 1.5}, "'gpu_memory_utilization'"),
        ({"max_model_len": -1}, "'max_model_len'"),
        ({"enforce_eager": "yes"}, "'enforce_eager'"),
        ({"gpus": [0, "1"]}, "'gpus'"),
        ({"device": "cpu", "gpus": [0]}, "'gpus'"),
        ({"extra_args": "--foo"}, "'extra_args'"),
        ({"extra_args": ["--port=9000"]}, "extra_args[0] '--port=9000' must not repeat"),
        ({"env": {"1BAD": "x"}}, "'env'"),
        ({"name": "Bad Name"}, "'name'"),
        ({"model": ""}, "'model'"),
        ({"modle": "typo"}, "unknown setting"),
        ({"kv_cache_dtype": "int3"}, "'kv_cache_dtype'"),
        ({"max_num_seqs": 0}, "'max_num_seqs'"),
        ({"max_num_batched_tokens": "lots"}, "'max_num_batched_tokens'"),
        ({"enable_chunked_prefill": "on"}, "'enable_chunked_prefill'"),
        ({"enable_prefix_caching": 1}, "'enable_prefix_caching'"),
        ({"rope_scaling": {"factor": 4}}, "'rope_scaling'"),
        ({"reasoning_parser": 3}, "'reasoning_parser'"),
        ({"default_chat_template_kwargs": "enable_thinking=false"}, "'default_chat_template_kwargs'"),
        ({"trust_remote_code": "yes"}, "'trust_remote_code'"),
        ({"extra_args": ["--max-num-seqs", "8"]}, "extra_args[0] '--max-num-seqs'"),
        # The owned flags in the other spellings vLLM's parser accepts.
        ({"extra_args": ["--tensor_parallel_size", "2"]}, "vLLM's --tensor-parallel-size"),
        ({"extra_args": ["--enforce-eager", "-tp", "2"]}, "extra_args[1] '-tp'"),
        ({"extra_args": ["--no-trust-remote-code"]}, "vLLM's --no-trust-remote-code"),
        ({"extra_args": ["--tensor-parallel", "2"]}, "vLLM's --tensor-parallel-size"),
        ({"extra_args": ["--hf-overrides.rope_scaling.factor=4"]}, "vLLM's --hf-overrides"),
        ({"extra_args": ["--api_key=abc"]}, "extra_args[0]: --api-key must not be given here"),
        ({"extra_args": ["--config", "/etc/vllm.yaml"]}, "--config reads settings from a file"),
        ({"extra_args": ["--log-level\nx"]}, "extra_args[0] must be one line"),
        ({"env": {"CUDA_VISIBLE_DEVICES": "0,1"}}, "env['CUDA_VISIBLE_DEVICES']: the role sets"),
        ({"env": {"VLLM_API_KEY": "k"}}, "env['VLLM_API_KEY']: the role sets"),
        ({"env": {"HF_TOKEN": "hf_x"}}, "env['HF_TOKEN']: looks like a secret"),
        ({"env": {"AWS_SECRET_ACCESS_KEY": "x"}}, "looks like a secret"),
        ({"env": {"VLLM_LOGGING_LEVEL": "INFO\nVLLM_API_KEY=x"}}, "must be one line"),
        ({"env": {"VLLM_LOGGING_LEVEL": None}}, "env['VLLM_LOGGING_LEVEL']: the value must be"),
        ({"env": ["A=1"]}, "'env' must map"),
        ({"model": "../../etc"}, "'model' '../../etc' must be a model_sync_models model"),
        ({"revision": "v1/../../x"}, "'revision'"),
        (
            {"environment": ["cuda-env"]},
            "'environment' must be the name of one of the host's python_env_environments",
        ),
        ({"environment": "Bad Name"}, "'environment'"),
        # Served names: what systemd would expand, empty or dot parts, spaces, over 256.
        ({"served_model_name": "has space"}, "'served_model_name' must be unset"),
        ({"served_model_name": "100%"}, "'served_model_name'"),
        ({"served_model_name": "$HOME"}, "'served_model_name'"),
        ({"served_model_name": "org//model"}, "'served_model_name'"),
        ({"served_model_name": "org/../model"}, "'served_model_name'"),
        ({"served_model_name": "model/"}, "'served_model_name'"),
        ({"served_model_name": "a" * 257}, "'served_model_name'"),
        ({"served_model_name": ""}, "'served_model_name'"),
        ({"served_model_name": []}, "'served_model_name'"),
        ({"served_model_name": ["a", "a"]}, "got a repeated name"),
        ({"served_model_name": ["a", 7]}, "got 7"),
        ({"served_model_name": ["a", "b c"]}, "got 'b c'"),
        ({"served_model_name": [f"m{i}" for i in range(17)]}, "got 17 names"),
        ({"served_model_name": {"a": 1}}, "'served_model_name'"),
    ],
)
def test_invalid_specs_name_the_setting(change, setting):
    errors = vllm_spec.validate_instance({**BASE, **change})
    assert errors, change
    assert any(setting in e for e in errors), errors


@pytest.mark.parametrize(
    "args", [["--api-key=sk-secret-1"], ["--api_key", "sk-secret-1"], ["--api-k=sk-secret-1"]]
)
def test_a_key_in_extra_args_is_refused_without_repeating_it(args):
    errors = vllm_spec.validate_instance({**BASE, "extra_args": args})
    assert errors and all("sk-secret-1" not in e for e in errors), errors


@pytest.mark.parametrize(
    "name", ["Qwen/Qwen2.5-7B-Instruct", "llama3:8b", "org/Model.v2@main", "gpt-4o+lora", "A" * 256]
)
def test_served_names_clients_use_pass(name):
    assert vllm_spec.validate_instance({**BASE, "served_model_name": name}) == []


def test_several_served_names_are_one_flag_the_first_primary():
    spec = {**BASE, "served_model_name": ["Qwen/Qwen2.5-7B-Instruct", "qwen", "qwen:7b"]}
    assert vllm_spec.validate_instance(spec) == []
    argv = vllm_spec.server_argv(spec, "/inst", 20)
    at = argv.index("--served-model-name")
    assert argv[at + 1 : at + 5] == ["Qwen/Qwen2.5-7B-Instruct", "qwen", "qwen:7b", "--host"]
    assert vllm_spec.served_names(spec)[0] == "Qwen/Qwen2.5-7B-Instruct"
    assert vllm_spec.served_names(BASE) == ["llama-3-8b"]


def test_flags_and_variables_the_spec_does_not_own_pass():
    spec = {
        **BASE,
        "extra_args": ["--distributed-executor-backend", "uni", "--max-log-len=100", "--seed", "7"],
        "env": {"TOKENIZERS_PARALLELISM": "false", "VLLM_CPU_KVCACHE_SPACE": 1, "OMP_NUM_THREADS": "2"},
    }
    assert vllm_spec.validate_instance(spec) == []


def test_environment_selects_by_name_and_leaves_the_flags_alone():
    spec = {**BASE, "environment": "vllm-next"}
    assert vllm_spec.validate_instance(spec) == []
    assert vllm_spec.with_defaults(BASE)["environment"] is None
    # The environment is reached through the instance's env link, never through a flag.
    assert vllm_spec.server_argv(spec, "/inst", 20) == vllm_spec.server_argv(BASE, "/inst", 20)


def test_names_and_ports_unique_per_host():
    errors = vllm_spec.validate_instances([BASE, {**BASE, "name": "other"}])
    assert any("'port' must be unique" in e for e in errors)
    errors = vllm_spec.validate_instances([BASE, {**BASE, "port": 8001}])
    assert any("'name' must be unique" in e for e in errors)


def test_instances_must_be_a_list():
    assert vllm_spec.validate_instances({"name": "x"})


def test_systemd_quoting():
    assert vllm_spec.systemd_quote(["/bin/x", "--a", "b c", "50%", "$HOME"]) == '/bin/x --a "b c" 50%% $$HOME'
    assert vllm_spec.systemd_quote(["KEY=a $b"], command=False) == '"KEY=a $b"'


LORA = {"name": "sql", "model": "llama-3-8b-sql-lora", "revision": "r3"}


def test_adapters_get_the_lora_flags_with_paths_in_the_model_store():
    spec = {**BASE, "adapters": [LORA, {**LORA, "name": "org/fr:v1"}], "max_lora_rank": 32}
    assert vllm_spec.validate_instance(spec) == []
    argv = vllm_spec.server_argv(spec, "/inst", 20, "/srv/models")
    at = argv.index("--enable-lora")
    assert argv[at:] == [
        "--enable-lora", "--max-loras", "1", "--max-lora-rank", "32", "--lora-modules",
        "sql=/srv/models/llama-3-8b-sql-lora/r3", "org/fr:v1=/srv/models/llama-3-8b-sql-lora/r3",
    ]  # fmt: skip
    assert vllm_spec.routable_names(spec) == ["llama-3-8b", "sql", "org/fr:v1"]
    # Without adapters, no LoRA flag at all (vLLM reserves memory for LoRA slots when enabled).
    assert "--enable-lora" not in vllm_spec.server_argv(BASE, "/inst", 20)


def test_store_needs_are_each_model_revision_and_adapter_with_the_file_that_shows_it_whole():
    other = {**BASE, "name": "other", "model": "qwen", "revision": "r2"}
    needs = vllm_spec.store_needs([{**BASE, "adapters": [LORA]}, other])
    assert needs == [
        {"instance": "chat", "what": "llama-3-8b@r1", "key": "llama-3-8b@r1",
         "path": "llama-3-8b/r1/config.json"},
        {"instance": "chat", "what": "adapter sql (llama-3-8b-sql-lora@r3)", "key": "llama-3-8b-sql-lora@r3",
         "path": "llama-3-8b-sql-lora/r3/adapter_config.json"},
        {"instance": "other", "what": "qwen@r2", "key": "qwen@r2", "path": "qwen/r2/config.json"},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        ({"adapters": {"sql": LORA}}, "'adapters' must be a list"),
        ({"adapters": [{"name": "sql", "model": "m"}]}, "adapters[0] must be a mapping of exactly name"),
        ({"adapters": [{**LORA, "path": "/x"}]}, "adapters[0] must be a mapping of exactly name"),
        ({"adapters": [{**LORA, "name": "has space"}]}, "adapters[0]: 'name'"),
        ({"adapters": [{**LORA, "model": "../etc"}]}, "adapters[0]: 'model'"),
        ({"adapters": [LORA, LORA]}, "'adapters' names must differ"),
        (
            {"adapters": [{**LORA, "name": "llama-3-8b"}]},
            "names must differ from each other and the served",
        ),
        ({"adapters": [LORA], "max_lora_rank": 12}, "'max_lora_rank' must be one of [1, 8, 16"),
        ({"adapters": [LORA], "max_loras": 0}, "'max_loras' must be a positive integer"),
        ({"max_lora_rank": 16}, "'max_lora_rank' and 'max_loras' need 'adapters'"),
        ({"extra_args": ["--lora-modules", "x=/tmp/x"]}, "must not repeat flags the spec sets"),
        ({"extra_args": ["--enable_lora"]}, "must not repeat flags the spec sets"),
    ],
)
def test_bad_adapters_name_the_setting(change, setting):
    errors = vllm_spec.validate_instance({**BASE, **change})
    assert any(setting in e for e in errors), errors


CONTAINER = {**BASE, "runtime": "container", "image": "vllm/vllm-openai:v0.32.0"}


def test_a_docker_instance_runs_its_image_in_the_foreground_with_the_same_vllm_flags():
    spec = {**CONTAINER, "gpus": [0, 1], "tensor_parallel_size": 2}
    assert vllm_spec.validate_instance(spec) == []
    argv = vllm_spec.server_argv(
        spec, "/inst", 20, "/srv/models", config_dir="/etc/vf", stop_timeout=40, env_names=["HF_HUB_OFFLINE"]
    )
    assert argv == [
        "/usr/bin/docker", "run", "--rm", "--name", "vllm-chat",
        "--network", "host", "--ipc", "host",
        "--stop-timeout", "40",
        "--env-file", "/etc/vf/chat.env",
        "--env", "HF_HUB_OFFLINE",
        "--volume", "/inst/chat:/inst/chat:ro",
        "--volume", "/srv/models:/srv/models:ro",
        "--gpus", '"device=0,1"',
        "--entrypoint", "vllm", "vllm/vllm-openai:v0.32.0", "serve", "/inst/chat/model",
        "--served-model-name", "llama-3-8b",
        "--host", "0.0.0.0",
        "--port", "8000",
        "--shutdown-timeout", "20",
        "--tensor-parallel-size", "2",
    ]  # fmt: skip
    # The GPUs are the engine's business: inside, the container sees exactly those.
    assert vllm_spec.server_environment(spec) == {}
    assert vllm_spec.server_environment({**spec, "runtime": "python", "image": None}) == {
        "CUDA_VISIBLE_DEVICES": "0,1"
    }


def test_podman_hands_gpus_by_cdi_name_and_cpu_instances_run_the_module_entrypoint():
    podman = {**CONTAINER, "engine": "podman", "gpus": [2, 3]}
    argv = vllm_spec.server_argv(podman, "/inst", 20)
    assert argv[0] == "/usr/bin/podman"
    assert argv[argv.index("--env-file") + 1] == "/etc/vllm-fleet/chat.env"
    assert argv[argv.index("--stop-timeout") + 1] == "20"  # no stop timeout given: vLLM's own
    at = argv.index("--entrypoint")
    assert argv[at - 6 : at] == [
        "--log-driver", "passthrough", "--device", "nvidia.com/gpu=2", "--device", "nvidia.com/gpu=3",
    ]  # fmt: skip
    assert vllm_spec.gpu_flags({**podman, "gpus": []}) == ["--device", "nvidia.com/gpu=all"]
    assert vllm_spec.gpu_flags({**CONTAINER, "engine": "docker", "gpus": []}) == ["--gpus", "all"]
    cpu = {**CONTAINER, "engine": "podman", "device": "cpu", "engine_args": ["--cgroups=disabled"]}
    argv = vllm_spec.server_argv(cpu, "/inst", 20)
    at = argv.index("--entrypoint")
    assert argv[at - 1] == "--cgroups=disabled"  # the spec's engine flags, last before the image
    assert argv[at : at + 7] == [
        "--entrypoint", "python3", CONTAINER["image"], "-m", vllm_spec.CPU_SERVER_MODULE,
        "--model", "/inst/chat/model",
    ]  # fmt: skip
    assert not any(a.startswith("nvidia.com/gpu") or a == "--gpus" for a in argv)
    assert vllm_spec.container_stop_argv(cpu, 40) == ["/usr/bin/podman", "stop", "--time", "40", "vllm-chat"]
    assert vllm_spec.container_remove_argv(cpu) == ["/usr/bin/podman", "rm", "--force", "vllm-chat"]


def test_the_container_flags_and_the_python_flags_agree_after_the_program():
    adapters = [{"name": "fr", "model": "fr", "revision": "r1"}]
    python = vllm_spec.server_argv({**BASE, "adapters": adapters}, "/inst", 20)
    container = vllm_spec.server_argv({**CONTAINER, "adapters": adapters}, "/inst", 20)
    assert container[-len(python) + 2 :] == python[2:]


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"runtime": "docker"}, "'runtime' must be one of ['python', 'container']"),
        ({"runtime": "container"}, "'image' is required with 'runtime: container'"),
        ({"runtime": "container", "image": "Vllm:Latest"}, "must be an image reference"),
        ({"runtime": "container", "image": "vllm@sha256:abc"}, "must be an image reference"),
        ({**CONTAINER, "engine": "containerd"}, "'engine' must be one of ['docker', 'podman']"),
        ({**CONTAINER, "engine_args": ["-e", "HF_TOKEN=x"]}, "engine_args[0] '-e': -e is set from the spec"),
        ({**CONTAINER, "engine_args": ["--env=HF_TOKEN=x"]}, "--env is set from the spec"),
        ({**CONTAINER, "engine_args": ["--gpus=all"]}, "--gpus is set from the spec"),
        ({**CONTAINER, "engine_args": "--privileged"}, "'engine_args' must be a list of one-line strings"),
        ({**CONTAINER, "environment": "vllm-new"}, "a container's is its 'image'"),
        ({"image": "vllm:1"}, "['image'] need 'runtime: container'"),
    ],
)
def test_runtime_errors_name_the_setting(change, fragment):
    errors = vllm_spec.validate_instance({**BASE, **change})
    assert any(fragment in e for e in errors), errors


@pytest.mark.parametrize(
    "image",
    [
        "vllm/vllm-openai:v0.32.0",
        "registry.example:5000/team/vllm-cpu:0.32.0",
        "localhost/vllm-fleet-cpu@sha256:" + "a" * 64,
        "vllm/vllm-openai:latest@sha256:" + "0f" * 32,
        "vllm",
    ],
)
def test_image_references_as_engines_take_them(image):
    assert vllm_spec.validate_instance({**CONTAINER, "image": image}) == []


def test_gpu_containers_need_the_engines_way_to_their_gpus():
    docker = {**CONTAINER, "gpus": [0]}
    podman = {**CONTAINER, "name": "p", "engine": "podman", "gpus": [0, 1]}
    cpu = {**CONTAINER, "name": "c", "engine": "podman", "device": "cpu"}
    offered = ["nvidia.com/gpu=0", "nvidia.com/gpu=1", "nvidia.com/gpu=all"]
    runtimes = ["io.containerd.runc.v2", "nvidia", "runc"]
    assert vllm_spec.engine_gpu_errors([docker, podman, cpu], offered, runtimes) == []
    errors = vllm_spec.engine_gpu_errors([docker, podman, cpu], ["nvidia.com/gpu=0"], ["runc"])
    assert len(errors) == 2, errors
    assert errors[0].startswith("instance chat: docker has no 'nvidia' runtime (its runtimes: ['runc'])")
    assert "instance p: the host's CDI spec does not offer ['nvidia.com/gpu=1']" in errors[1]
    # Where the tools could not run (no toolkit at all), the same errors.
    assert len(vllm_spec.engine_gpu_errors([docker, podman], None, None)) == 2


def test_a_hosts_instance_defaults_sit_under_each_spec():
    defaults = {"runtime": "container", "engine": "podman", "image": "localhost/vllm:1"}
    specs = [BASE, {**BASE, "name": "own", "port": 8001, "runtime": "python"}]
    merged = vllm_spec.with_host_defaults(specs, defaults)
    assert merged[0]["runtime"] == "container" and merged[0]["image"] == "localhost/vllm:1"
    assert merged[1]["runtime"] == "python"  # the spec's own value wins
    assert vllm_spec.validate_instance(merged[0]) == []
    assert vllm_spec.with_host_defaults(specs, {}) == specs
    assert vllm_spec.host_default_errors({"runtime": "container", "port": 1}) == [
        "vllm_server_instance_defaults: unknown setting(s) ['port']; allowed: "
        "['runtime', 'engine', 'image', 'engine_args']"
    ]
    assert vllm_spec.host_default_errors([]) == ["vllm_server_instance_defaults must be a mapping, got list"]
