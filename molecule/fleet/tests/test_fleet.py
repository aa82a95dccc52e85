"""A fleet behind its gateway, changed with site.yml while clients keep asking: nobody may notice.

The tests run in file order and build on each other (three vLLM hosts, one nginx gateway):

1. the gateway asks for the API key on every path, also those vLLM leaves open;
2. site.yml with a second good revision under load, cut short after its first host and resumed by
   a second run: one host at a time, 0 failed requests, every host on it; a third run changes
   nothing (changed=0 on every host);
3. site.yml with a broken revision (it loads and answers /health, but wrongly) under load: the
   first host fails its golden prompt, goes back by itself and serves again, the run stops with
   a report naming host, instance, expected and got; the other hosts are not touched; 0 failed
   requests, and no client ever got a wrong answer;
4. site.yml with a flag that passes the preflight but that vLLM refuses at start: the same, the
   report quoting vLLM's own error;
5. playbooks/rollback.yml under load, two hosts per batch: the whole fleet back on the first
   revision, 0 failed; a second rollback changes nothing.

Before any of it, a batch size that would drain every host at once is refused, nothing changed.

The load generator (vllm_fleet.loadgen) uses the official OpenAI client through the gateway,
streaming and non-streaming, with the client's retries off; it asks the instance's golden prompt,
and a request fails on any error, on a stream cut short, and on an answer without the golden
text (the broken revision answers otherwise). Times and counts are printed (pytest -s).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from fleet_scenario import (
    GATEWAY,
    INSTANCE,
    UNIT,
    VLLM_HOSTS,
    address,
    golden_load,
    on_host,
    revision,
    target,
)
from scenario_hosts import recap_changed

from vllm_fleet.loadgen import LoadGenerator
from vllm_fleet.paths import cache_dir

MODEL = INSTANCE["served_model_name"]
FIRST = INSTANCE["revision"]
# Revisions `python -m tests.builders` derives from tiny-llama (tests/builders/models.py).
SECOND, BROKEN = "second", "broken"
SITE, ROLLBACK = "site.yml", "playbooks/rollback.yml"
# A flag vLLM 0.32 does not know: extra_args reach vLLM as they are, and its parser exits.
REFUSED_FLAG = "--no-such-flag"
# Steady traffic that still leaves the two cores room for a restarting instance: a fixed rate,
# since back-to-back clients turn every faster answer into more load (3 clients with 0.2 s
# pauses sent 2.8 requests/s in one run and 4.6 in another, whose rolling upgrade took 364 s
# against 233 s).
WORKERS = 3
RATE = 2.0


def _api_key() -> str:
    return (cache_dir() / "sandbox" / "api-key").read_text().strip()


def _gateway_url() -> str:
    return f"http://{address(GATEWAY)}"


def _main_pid(host: str) -> int:
    return int(on_host(host, "systemctl", "show", "-p", "MainPID", "--value", UNIT))


def _drained_lines() -> list[str]:
    upstreams = on_host(GATEWAY, "cat", "/etc/nginx/vllm-fleet/upstreams.conf")
    return [line for line in upstreams.splitlines() if " down;" in line]


def _started_at(host: str) -> float:
    """When the host's instance process started (seconds; the hosts share one kernel clock)."""
    started = on_host(host, "systemctl", "show", "-p", "ExecMainStartTimestampMonotonic", "--value", UNIT)
    return int(started) / 1e6


def _under_load(run: Any) -> tuple[Any, LoadGenerator]:
    """Call run() while the load generator sends requests through the gateway."""
    load = golden_load(_api_key(), WORKERS, rate=RATE)
    with load:
        assert load.wait_for(WORKERS * 2, timeout=120), (
            f"no load through the gateway: {load.report.failures[:3]}"
        )
        result = run()
        # A few more requests after the run: the fleet still serves as a whole.
        load.wait_for(load.report.total + WORKERS * 2, timeout=120)
    summary = load.report.summary()
    print(f"load: {json.dumps(summary)}")
    return result, load


def _failures(load: LoadGenerator) -> list[str]:
    return [f.error or "" for f in load.report.failures[:10]]


def _get(url: str, key: str | None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def test_the_fleet_starts_on_the_firstrevision() -> None:
    assert [revision(h) for h in VLLM_HOSTS] == [FIRST] * len(VLLM_HOSTS)
    assert _drained_lines() == []


@pytest.mark.parametrize("path", ["/metrics", "/tokenize", "/health", "/version", "/v1/models"])
@pytest.mark.parametrize("prefix", ["", f"/{MODEL}"])
def test_the_gateway_asks_for_the_key_on_every_path(prefix: str, path: str) -> None:
    url = f"{_gateway_url()}{prefix}{path}"
    assert _get(url, None) == 401
    assert _get(url, "not-the-key") == 401
    if path != "/tokenize":  # a POST endpoint: with the key, GET reaches vLLM (405)
        assert _get(url, _api_key()) == 200


@pytest.mark.parametrize("serial", ["3", "two", "100%"])
def test_a_batch_of_every_host_is_refused_before_anything_changes(run_playbook, serial: str) -> None:
    pids = [_main_pid(h) for h in VLLM_HOSTS]
    rc, output, _seconds = run_playbook(SITE, target(SECOND), "-e", f"upgrade_serial={serial}")
    assert rc != 0, output[-3000:]
    allowed = "upgrade_serial must be a whole number of hosts from 1 to 2, or a percentage"
    assert allowed in output, output[-3000:]
    assert f"got '{serial}'" in output, output[-3000:]
    assert [revision(h) for h in VLLM_HOSTS] == [FIRST] * len(VLLM_HOSTS)
    assert [_main_pid(h) for h in VLLM_HOSTS] == pids
    assert _drained_lines() == []


def test_site_yml_rolls_a_new_revision_one_host_at_a_time_drops_nothing_and_resumes(run_playbook) -> None:
    pids: dict[str, int] = {}

    def cut_short_then_resumed() -> tuple[Any, Any]:
        # The first run ends after its first host (as if it had been stopped there); the next
        # run finds that host on the target and switches the others.
        first = run_playbook(SITE, target(SECOND), "--limit", VLLM_HOSTS[0])
        pids.update({h: _main_pid(h) for h in VLLM_HOSTS})
        return first, run_playbook(SITE, target(SECOND))

    (first, resumed), load = _under_load(cut_short_then_resumed)
    assert first.rc == 0, first.output[-6000:]
    assert resumed.rc == 0, resumed.output[-6000:]
    assert load.report.failed == 0, _failures(load)
    assert [revision(h) for h in VLLM_HOSTS] == [SECOND] * len(VLLM_HOSTS)
    assert _main_pid(VLLM_HOSTS[0]) == pids[VLLM_HOSTS[0]]
    assert all(_main_pid(h) != pids[h] for h in VLLM_HOSTS[1:])
    # One host at a time: the third started only after the second had loaded and passed its gate.
    second, third = (_started_at(h) for h in VLLM_HOSTS[1:])
    assert third - second > 10, f"hosts 2 and 3 started {third - second:.1f} s apart"
    assert _drained_lines() == []
    # Both kinds of request went through the whole run.
    assert 0 < load.report.summary()["streams"] < load.report.total
    print(f"site.yml over {len(VLLM_HOSTS)} hosts in two runs: {first.seconds + resumed.seconds:.1f} s")


def test_a_second_converge_changes_nothing(run_playbook) -> None:
    pids = [_main_pid(h) for h in VLLM_HOSTS]
    rc, output, seconds = run_playbook(SITE, target(SECOND))
    assert rc == 0, output[-6000:]
    assert [_main_pid(h) for h in VLLM_HOSTS] == pids
    changed = recap_changed(output)
    assert set(changed) == {*VLLM_HOSTS, GATEWAY} and set(changed.values()) == {0}, changed
    print(f"unchanged converge of the fleet: {seconds:.1f} s")


def _stops_at_the_first_host_and_puts_it_back(run_playbook, extra: dict[str, Any]) -> str:
    """site.yml with `extra` under load: the first host fails, is put back; the rest untouched."""
    untouched = {h: _main_pid(h) for h in VLLM_HOSTS[1:]}
    units = [on_host(h, "cat", f"/etc/systemd/system/{UNIT}") for h in VLLM_HOSTS]
    (rc, output, _seconds), load = _under_load(lambda: run_playbook(SITE, extra, flat=True))
    assert rc != 0, output[-6000:]
    assert f"UPGRADE STOPPED at {VLLM_HOSTS[0]}" in output, output[-6000:]
    assert f"{VLLM_HOSTS[0]} was switched back" in output, output[-6000:]
    # No client ever saw an error or the broken revision's answer (the gate comes first).
    assert load.report.failed == 0, _failures(load)
    assert [revision(h) for h in VLLM_HOSTS] == [SECOND] * len(VLLM_HOSTS)
    assert [on_host(h, "cat", f"/etc/systemd/system/{UNIT}") for h in VLLM_HOSTS] == units
    assert {h: _main_pid(h) for h in VLLM_HOSTS[1:]} == untouched
    assert _drained_lines() == []
    return output


def test_broken_revision_rolls_back_by_itself_and_stops_the_run(run_playbook) -> None:
    output = _stops_at_the_first_host_and_puts_it_back(run_playbook, target(BROKEN))
    assert f"golden prompt of instance {INSTANCE['name']}: expected (substring)" in output, output[-6000:]
    assert "got" in output


def test_a_flag_vllm_refuses_at_start_rolls_back_by_itself(run_playbook) -> None:
    extra = target(SECOND)
    spec = extra["vllm_server_instances"][0]
    spec["extra_args"] = [*spec.get("extra_args", []), REFUSED_FLAG]
    output = _stops_at_the_first_host_and_puts_it_back(run_playbook, extra)
    assert f"instance {INSTANCE['name']}: {UNIT} exited" in output, output[-6000:]
    assert f"unrecognized arguments: {REFUSED_FLAG}" in output, output[-6000:]


def test_rollback_in_batches_of_two_takes_the_whole_fleet_back(run_playbook) -> None:
    # Two hosts drained at once (their gateway edits must not overwrite each other), one serving.
    (rc, output, elapsed), load = _under_load(lambda: run_playbook(ROLLBACK, None, "-e", "upgrade_serial=2"))
    assert rc == 0, output[-6000:]
    assert load.report.failed == 0, _failures(load)
    assert [revision(h) for h in VLLM_HOSTS] == [FIRST] * len(VLLM_HOSTS)
    print(f"rollback of {len(VLLM_HOSTS)} hosts: {elapsed:.1f} s")
    # Rolling back again changes nothing.
    pids = [_main_pid(h) for h in VLLM_HOSTS]
    rc, output, _seconds = run_playbook(ROLLBACK)
    assert rc == 0, output[-6000:]
    assert [_main_pid(h) for h in VLLM_HOSTS] == pids
