"""Golden prompts and the drain's in-flight count."""

from __future__ import annotations

import math

from ansible_collections.vllm_fleet.serving.plugins.module_utils import golden

PARIS = {"prompt": "What is the capital of France? Answer in one sentence.", "expect": "Paris"}


def test_valid_settings_pass() -> None:
    assert golden.prompt_errors({}) == []
    assert golden.prompt_errors({"chat": PARIS, "other": {**PARIS, "match": "exact", "max_tokens": 8}}) == []


def test_bad_settings_name_the_setting_and_what_is_allowed() -> None:
    assert "mapping" in golden.prompt_errors(["chat"])[0]
    found = golden.prompt_errors(
        {"chat": {"prompt": "", "expect": 3, "match": "regex", "max_tokens": 0, "temp": 1}, "x": "y"}
    )
    text = "\n".join(found)
    assert "vllm_server_golden_prompts['chat']: unknown keys temp" in text
    assert "['chat'].prompt must be a non-empty string" in text
    assert "['chat'].expect must be a non-empty string" in text
    assert "match is 'regex'; allowed: substring, exact" in text
    assert "max_tokens must be a positive integer" in text
    assert "vllm_server_golden_prompts['x'] must be a mapping" in text
    assert "max_tokens" in golden.prompt_errors({"c": {**PARIS, "max_tokens": True}})[0]


def test_substring_and_exact_matches() -> None:
    assert golden.passes(PARIS, "The capital of France is Paris.")
    assert not golden.passes(PARIS, "The capital of France is Lyon.")
    exact = {**PARIS, "expect": "The capital of France is Paris.", "match": "exact"}
    assert golden.passes(exact, "  The capital of France is Paris.\n")
    assert not golden.passes(exact, "The capital of France is Paris. Indeed.")
    assert not golden.passes(PARIS, None)


METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="smollm2"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="smollm2"} 1.0
vllm:num_requests_waiting{engine="1",model_name="smollm2"} 3.0
"""


def test_in_flight_sums_running_and_waiting_over_engines() -> None:
    assert golden.in_flight(METRICS) == 6.0
    idle = METRICS.replace(" 2.0", " 0.0").replace(" 1.0", " 0.0").replace(" 3.0", " 0.0")
    assert golden.in_flight(idle) == 0.0
    assert golden.in_flight("") is None
    assert golden.in_flight("# HELP vllm:num_requests_running x\n") is None
    assert not math.isnan(golden.in_flight(METRICS.splitlines()[2]) or 0)
