"""vllm_server in depth: two instances of two different models on one host, for real.

The tests run in file order and build on each other (one host, one pair of services):

1. both instances serve, each its own model, and the API key is nowhere it must not be;
2. ``kill -9`` of one instance's main process: systemd restarts it, the other keeps serving;
3. a second converge that changes one instance's settings restarts only that instance;
4. ``systemctl stop`` during in-flight streams lets every stream finish;
5. a converge back to the scenario's own settings starts the stopped instance again and still
   leaves the other alone; then a converge without it retires it (unit, secrets, links), but not
   a foreign vllm-* unit;
6. the API key is in no journal line and in no Ansible output.

Throughout, the other instance (``wide``) keeps its main process and answers every request.
The measured times are printed (``pytest -s`` or Molecule's verifier output).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from openai import OpenAI

from vllm_fleet.paths import cache_dir

HOST_VARS = Path(__file__).resolve().parents[1] / "host_vars" / "vllm-instances-1.yml"
SPECS: dict[str, dict[str, Any]] = {
    spec["name"]: spec for spec in yaml.safe_load(HOST_VARS.read_text())["vllm_server_instances"]
}
# The instance the tests kill, reconfigure and stop; the other one must not notice.
VICTIM = "tiny"
OTHER = "wide"
# Generous bounds: two CPU vLLM servers share two cores here.
READY_TIMEOUT = 300
# The victim's setting changed by the second converge: one sequence at a time, which also
# makes the engine queue the streams of the stop test (still unfinished when the stop begins).
CHANGED_MAX_NUM_SEQS = 1
# Streams sent just before the stop (the victim's max_model_len is 2048), queued one at a time:
# long enough that they still run when the stop lands (seconds after the first token), short
# enough that vLLM drains them all well inside its shutdown timeout (host_vars: 120 s). Measured
# here: about 200 tokens/s on a quiet machine, 65 on a loaded one (6 x 2000 then took 140 s).
STREAMS = 4
STREAM_TOKENS = 1000

_RESULTS: dict[str, Any] = {}


def _unit(name: str) -> str:
    return f"vllm-{name}.service"


def _journal(host, *names: str, lines: int = 80) -> str:
    units = " ".join(f"-u {_unit(n)}" for n in names or SPECS)
    return host.run(f"journalctl {units} --no-pager -n {lines}").stdout


def _show(host, name: str, prop: str) -> str:
    return host.run(f"systemctl show -p {prop} --value {_unit(name)}").stdout.strip()


def _main_pid(host, name: str) -> int:
    return int(_show(host, name, "MainPID") or 0)


def _descendants(host, pid: int) -> set[int]:
    """Every process below ``pid`` (engine core, workers, helpers)."""
    parents: dict[int, int] = {}
    for line in host.run("ps -eo pid=,ppid=").stdout.splitlines():
        child, parent = (int(field) for field in line.split())
        parents[child] = parent
    found: set[int] = set()
    grew = True
    while grew:
        new = {c for c, p in parents.items() if (p == pid or p in found) and c not in found}
        found |= new
        grew = bool(new)
    return found


def _cursor(host) -> str:
    """The journal's current position, to read only what is logged after it."""
    out = host.run("journalctl -n 0 --show-cursor --no-pager").stdout
    return out.split("-- cursor:", 1)[1].strip()


def _journal_after(host, name: str, cursor: str) -> str:
    return host.run(f"journalctl -u {_unit(name)} --no-pager --after-cursor='{cursor}'").stdout


@pytest.fixture(scope="module")
def api_key() -> str:
    return (cache_dir() / "sandbox" / "api-key").read_text().strip()


@pytest.fixture(scope="module")
def address(host) -> str:
    # The controller reaches the test host on the scenario's Docker network.
    return host.interface("eth0").addresses[0]


@pytest.fixture(scope="module")
def clients(address, api_key) -> dict[str, OpenAI]:
    return {
        name: OpenAI(
            base_url=f"http://{address}:{spec['port']}/v1", api_key=api_key, timeout=120, max_retries=0
        )
        for name, spec in SPECS.items()
    }


@pytest.fixture(scope="module")
def other_pid(host) -> int:
    """The other instance's main PID when the module starts: it must never change."""
    pid = _main_pid(host, OTHER)
    assert pid > 0, _journal(host, OTHER)
    return pid


def _complete(client: OpenAI, model: str, max_tokens: int = 1, prompt: str = "Hello") -> str:
    reply = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0)
    return reply.choices[0].text


def _wait_serving(client: OpenAI, model: str, timeout: float = READY_TIMEOUT) -> float:
    """Poll with a 1-token completion until one succeeds; the seconds it took."""
    start = time.monotonic()
    short = client.with_options(timeout=10)
    while True:
        try:
            _complete(short, model)
            return time.monotonic() - start
        except Exception:
            if time.monotonic() - start > timeout:
                raise
            time.sleep(0.25)


@contextmanager
def _keeps_serving(client: OpenAI, model: str, interval: float = 1.0) -> Iterator[dict[str, Any]]:
    """Send 1-token completions in the background; the caller asserts on ``failures``."""
    record: dict[str, Any] = {"ok": 0, "failures": []}
    done = threading.Event()
    # A new connection per request: a kept-alive one can be closed by the server's keep-alive
    # timer just as the next request goes out on a starved machine, a client-side race that
    # would read as the instance failing. A refused or reset new connection is a real failure.
    fresh = client.with_options(default_headers={"Connection": "close"})

    def poll() -> None:
        while not done.is_set():
            try:
                _complete(fresh, model)
                record["ok"] += 1
            except Exception as err:
                record["failures"].append(f"{time.strftime('%H:%M:%S')} {err!r} caused by {err.__cause__!r}")
            done.wait(interval)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield record
    finally:
        done.set()
        thread.join(timeout=150)


def _assert_kept_serving(host, record: dict[str, Any]) -> None:
    """The other instance answered every request of ``_keeps_serving`` (its journal if not)."""
    assert record["failures"] == [] and record["ok"] > 0, f"{record}\n{_journal(host, OTHER, lines=40)}"


# --- 1. two instances, two models -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SPECS))
def test_instance_active_enabled_listening(host, name):
    service = host.service(_unit(name))
    assert service.is_running, _journal(host, name)
    assert service.is_enabled
    assert host.socket(f"tcp://0.0.0.0:{SPECS[name]['port']}").is_listening, _journal(host, name)
    assert host.process.get(pid=_main_pid(host, name)).user == "vllm"


def test_each_instance_serves_its_own_model(host, clients, other_pid):
    shapes = {}
    answers = {}
    for name, spec in SPECS.items():
        cards = clients[name].models.list().data
        assert [c.id for c in cards] == [spec["served_model_name"]], _journal(host, name)
        assert cards[0].model_extra["max_model_len"] == spec["max_model_len"]
        # The instance's model link points at that instance's own model revision.
        target = host.file(f"/var/lib/vllm-fleet/instances/{name}/model").linked_to
        assert target.endswith(f"/{spec['model']}/{spec['revision']}")
        shapes[name] = json.loads(host.file(f"{target}/config.json").content_string)["hidden_size"]
        # Deterministic at temperature 0, and a different model gives a different answer.
        first = _complete(clients[name], spec["served_model_name"], 12, "The capital of France is")
        assert first == _complete(clients[name], spec["served_model_name"], 12, "The capital of France is")
        answers[name] = first
    assert shapes == {"tiny": 128, "wide": 256}
    assert answers["tiny"] != answers["wide"]


def test_api_key_not_on_command_lines_or_in_units(host, api_key):
    cmdlines = host.run("cat /proc/[0-9]*/cmdline | tr '\\0' ' '").stdout
    assert "vllm.entrypoints.openai.api_server" in cmdlines
    assert api_key not in cmdlines
    for name in SPECS:
        unit = host.file(f"/etc/systemd/system/{_unit(name)}").content_string
        assert unit and api_key not in unit
        # What systemd itself holds for the unit (Environment=, ExecStart=, drop-ins).
        shown = host.run(f"systemctl show {_unit(name)}").stdout
        assert api_key not in shown
        assert api_key not in host.run(f"systemctl cat {_unit(name)}").stdout
        env_file = host.file(f"/etc/vllm-fleet/{name}.env")
        assert (env_file.user, env_file.group, env_file.mode) == ("root", "root", 0o600)
    config_dir = host.file("/etc/vllm-fleet")
    assert (config_dir.user, config_dir.mode) == ("root", 0o700)


# --- 2. kill -9 -------------------------------------------------------------------------------


def test_kill_9_is_restarted_by_systemd(host, clients, other_pid):
    victim = SPECS[VICTIM]["served_model_name"]
    other = SPECS[OTHER]["served_model_name"]
    pid = _main_pid(host, VICTIM)
    restarts = int(_show(host, VICTIM, "NRestarts"))
    children = _descendants(host, pid)
    assert children, "the API server has no engine process?"
    with _keeps_serving(clients[OTHER], other) as other_record:
        assert host.run(f"kill -9 {pid}").rc == 0
        start = time.monotonic()
        try:
            _wait_serving(clients[VICTIM], victim)
        except Exception:
            pytest.fail(f"{VICTIM} did not serve again after kill -9:\n{_journal(host, VICTIM)}")
        recovered = time.monotonic() - start
    _RESULTS["kill9_to_serving_s"] = recovered
    print(f"\nkill -9 of {VICTIM}'s main process -> serving again: {recovered:.1f} s")
    new_pid = _main_pid(host, VICTIM)
    assert new_pid not in (0, pid)
    assert int(_show(host, VICTIM, "NRestarts")) == restarts + 1
    # KillMode=mixed: no orphaned engine or worker of the killed server is left behind.
    alive = sorted(children & (_descendants(host, 1) - _descendants(host, new_pid) - {new_pid}))
    assert alive == [], host.run("ps -eo pid,ppid,user,args").stdout
    assert _main_pid(host, OTHER) == other_pid
    _assert_kept_serving(host, other_record)
    assert recovered < READY_TIMEOUT


# --- 3. a settings change restarts only that instance ------------------------------------------


def test_changed_settings_restart_only_that_instance(host, clients, other_pid, api_key, run_playbook):
    before = _main_pid(host, VICTIM)
    specs = [
        dict(spec, max_num_seqs=CHANGED_MAX_NUM_SEQS) if name == VICTIM else spec
        for name, spec in SPECS.items()
    ]
    with _keeps_serving(clients[OTHER], SPECS[OTHER]["served_model_name"]) as other_record:
        rc, output, _seconds = run_playbook("site.yml", {"vllm_server_instances": specs}, "-v", "--diff")
    assert rc == 0, output[-8000:]
    assert api_key not in output
    after = _main_pid(host, VICTIM)
    assert after not in (0, before), _journal(host, VICTIM)
    assert (
        f"--max-num-seqs {CHANGED_MAX_NUM_SEQS}"
        in host.file(f"/etc/systemd/system/{_unit(VICTIM)}").content_string
    )
    assert f"--max-num-seqs {CHANGED_MAX_NUM_SEQS}" in host.file(
        f"/proc/{after}/cmdline"
    ).content_string.replace("\0", " ")
    assert _main_pid(host, OTHER) == other_pid
    _assert_kept_serving(host, other_record)
    # The readiness gate ran: the restarted instance answers at once.
    assert _complete(clients[VICTIM], SPECS[VICTIM]["served_model_name"])


# --- 4. stop during in-flight streams ----------------------------------------------------------


def test_stop_lets_in_flight_streams_finish(host, clients, other_pid):
    """``systemctl stop`` while streams are running or queued: every stream gets all its tokens.

    The victim runs with max_num_seqs 1 since the previous test, so the engine works through
    the streams one at a time and some are certainly unfinished when the stop begins. The stop
    is sent once vLLM has begun the response of every stream (accepted) and tokens flow.
    """
    victim = SPECS[VICTIM]["served_model_name"]
    results: list[dict[str, Any]] = [{"chunks_at": []} for _stream in range(STREAMS)]

    def stream(i: int) -> None:
        record = results[i]
        try:
            chunks = clients[VICTIM].chat.completions.create(
                model=victim,
                messages=[{"role": "user", "content": f"Tell story number {i}."}],
                max_tokens=STREAM_TOKENS,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},  # random weights: no early end
            )
            # The response has begun (200): vLLM took the request into its engine.
            record["accepted"] = True
            for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    record["chunks_at"].append(time.monotonic())
                if chunk.choices and chunk.choices[0].finish_reason:
                    record["finish_reason"] = chunk.choices[0].finish_reason
                if chunk.usage is not None:
                    record["completion_tokens"] = chunk.usage.completion_tokens
        except Exception as err:
            record["error"] = repr(err)

    threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(STREAMS)]
    # Nothing slow between the streams' acceptance and the stop (one SSH command): everything
    # else is read before the streams start.
    cursor = _cursor(host)
    with _keeps_serving(clients[OTHER], SPECS[OTHER]["served_model_name"]) as other_record:
        for thread in threads:
            thread.start()
        # Stop once tokens flow and vLLM has begun the response of every stream: a request that
        # reaches vLLM after SIGTERM is refused (500), which is the gateway's drain to prevent,
        # not what this test measures. On a loaded CI machine a client thread can be seconds
        # late, so the first token alone is not enough; on a quiet one the streams finish within
        # seconds, so nothing slower (a metrics scrape) may stand between acceptance and stop.
        deadline = time.monotonic() + 120
        while not (any(r["chunks_at"] for r in results) and all(r.get("accepted") for r in results)):
            assert time.monotonic() < deadline, f"vLLM never began every stream: {results}"
            assert not any("error" in r for r in results), results
            time.sleep(0.05)
        start = time.monotonic()
        host.run_expect([0], "systemctl stop --no-block %s", _unit(VICTIM))
        # The stop is under way (SIGTERM sent) once systemd reports the unit deactivating.
        while (state := _show(host, VICTIM, "ActiveState")) == "active":
            time.sleep(0.05)
        stopping_seen = time.monotonic()
        while (state := _show(host, VICTIM, "ActiveState")) not in ("inactive", "failed"):
            assert time.monotonic() - start < 300, f"{VICTIM} still {state}"
            time.sleep(0.1)
        stopped = time.monotonic() - start
        for thread in threads:
            thread.join(timeout=300)
    _RESULTS["stop_with_streams_s"] = stopped
    stop_log = _journal_after(host, VICTIM, cursor)
    drained = re.search(r"draining in-flight requests count=(\d+)", stop_log)
    late = [sum(t > stopping_seen for t in r["chunks_at"]) for r in results]
    print(
        f"\nsystemctl stop of {VICTIM} with {STREAMS} streams accepted: {stopped:.1f} s; "
        f"vLLM drained {drained.group(1) if drained else 0} unfinished requests; "
        f"chunks received after the stop began, per stream: {late}"
    )
    assert state == "inactive", _journal(host, VICTIM)
    for record in results:
        assert "error" not in record, f"{record.get('error')}\n{stop_log}"
        assert record.get("completion_tokens") == STREAM_TOKENS, record.get("completion_tokens")
        assert record.get("finish_reason") == "length"
    # The streams were really in flight: chunks still reached their clients after systemd had
    # begun the stop (vLLM's own drain log line is printed only on some of its paths).
    assert any(n > 0 for n in late), f"no chunk arrived after the stop began: {late}\n{stop_log}"
    # vLLM drained (--shutdown-timeout) and exited by itself before TimeoutStopSec.
    assert "mode=drain" in stop_log, stop_log
    assert "Deactivated successfully" in stop_log, stop_log
    assert "timed out" not in stop_log, stop_log
    assert _main_pid(host, OTHER) == other_pid
    _assert_kept_serving(host, other_record)


# --- 5. converge back --------------------------------------------------------------------------


def test_converge_back_starts_it_with_its_own_settings(host, clients, other_pid, api_key, run_playbook):
    rc, output, _seconds = run_playbook("site.yml", None, "-v", "--diff")
    assert rc == 0, output[-8000:]
    assert api_key not in output
    pid = _main_pid(host, VICTIM)
    assert pid > 0, _journal(host, VICTIM)
    assert "--max-num-seqs" not in host.file(f"/etc/systemd/system/{_unit(VICTIM)}").content_string
    assert "--max-num-seqs" not in host.file(f"/proc/{pid}/cmdline").content_string
    assert _complete(clients[VICTIM], SPECS[VICTIM]["served_model_name"])
    assert _main_pid(host, OTHER) == other_pid


def test_instance_removed_from_the_inventory_is_retired(host, clients, other_pid, api_key, run_playbook):
    # A unit of the same name pattern that this role did not write must survive the retirement.
    foreign = "/etc/systemd/system/vllm-notours.service"
    host.run(f"printf '[Unit]\\nDescription=not a vllm-fleet instance\\n' > {foreign}")
    with _keeps_serving(clients[OTHER], SPECS[OTHER]["served_model_name"]) as other_record:
        rc, output, _seconds = run_playbook(
            "site.yml", {"vllm_server_instances": [SPECS[OTHER]]}, "-v", "--diff"
        )
    assert rc == 0, output[-8000:]
    assert api_key not in output
    assert not host.service(_unit(VICTIM)).is_running
    for path in (
        f"/etc/systemd/system/{_unit(VICTIM)}",
        f"/etc/vllm-fleet/{VICTIM}.env",
        f"/var/lib/vllm-fleet/instances/{VICTIM}",
    ):
        assert not host.file(path).exists, path
    assert not host.socket(f"tcp://0.0.0.0:{SPECS[VICTIM]['port']}").is_listening
    assert host.file(foreign).exists
    assert _main_pid(host, OTHER) == other_pid
    _assert_kept_serving(host, other_record)


# --- 6. the key in logs ------------------------------------------------------------------------


def test_api_key_in_no_journal_line(host, api_key):
    # Every journal line of the host: the services' own logs and Ansible's module invocations.
    journal = host.run("journalctl --no-pager -o cat").stdout
    for name in SPECS:
        assert f"vLLM instance {name}" in journal
    assert "Application startup complete" in journal
    assert api_key not in journal


def test_other_instance_was_never_restarted(host, other_pid):
    assert _main_pid(host, OTHER) == other_pid
    assert _show(host, OTHER, "NRestarts") == "0"
    print(f"\nmeasured: {json.dumps({k: round(v, 1) for k, v in _RESULTS.items()})}")
