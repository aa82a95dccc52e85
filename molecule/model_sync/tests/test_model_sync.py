"""model_sync on a real host: verified revisions side by side, switch, rollback, corruption caught.

The tests run in file order; from test_switch on, each one runs a phase (a playbook of this
scenario, as Molecule runs them) and asserts the host's state after it:

converged  seed0 and gen2 of tiny-llama and the NFS copy published; current -> gen2; the
           instance serves seed0
switch     the instance moves to gen2 (restarted, serving)
rollback   current -> seed0 and the instance back on seed0 (restarted, serving)
corrupt    gen3's staged copy gets a flipped byte: refused, nothing published, current and the
           serving instance untouched (same process)
heal       the next run copies the refused file again and publishes gen3
prune      keep_revisions 0: seed0 stays (the instance uses it), and gen2 too (its previous-model link:
           the way back site.yml recorded when it switched the instance back from gen2)
bad input  a model without tokenizer and an unknown type fail before any host change
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from openai import OpenAI

from vllm_fleet.paths import cache_dir

SCENARIO = Path(__file__).resolve().parents[1]
STORE = "/var/lib/vllm-fleet/models"
MODEL = f"{STORE}/tiny-llama"
INSTANCE_LINK = "/var/lib/vllm-fleet/instances/tiny/model"
UNIT = "vllm-tiny.service"
RECORD = ".vllm-fleet-manifest.json"
SOURCES = cache_dir() / "molecule" / "model_sync"
TINY = str(cache_dir() / "models" / "tiny-llama")

SEED0 = {"name": "tiny-llama", "revision": "seed0", "source": TINY}
GEN2 = {"name": "tiny-llama", "revision": "gen2", "source": str(SOURCES / "tiny-llama-gen2")}
GEN3 = {"name": "tiny-llama", "revision": "gen3", "source": str(SOURCES / "tiny-llama-gen3")}
# The instance as host_vars/ defines it.
HOST_VARS = yaml.safe_load((SCENARIO / "host_vars" / "vllm-model-sync-1.yml").read_text())
SPEC = HOST_VARS["vllm_server_instances"][0]
PORT = SPEC["port"]
NFS = {"name": "tiny-nfs", "revision": "seed0", "type": "nfs", "source": "/srv/nfs/tiny-llama"}


def instance(revision: str) -> dict:
    """The scenario's instance (host_vars/) on another revision."""
    return {**SPEC, "revision": revision}


def record(host, revision: str, model: str = MODEL) -> dict:
    return json.loads(host.file(f"{model}/{revision}/{RECORD}").content_string)


def revisions(host, model: str = MODEL) -> list[str]:
    out = host.run(f"ls -A {model}").stdout.split()
    return sorted(out)


def main_pid(host) -> str:
    return host.run(f"systemctl show -p MainPID --value {UNIT}").stdout.strip()


def journal(host) -> str:
    return host.run(f"journalctl -u {UNIT} --no-pager -n 40").stdout


def store_snapshot(host) -> str:
    return host.run(f"find {STORE} -printf '%p %i %s %T@ %l\\n' | sort").stdout


@pytest.fixture(scope="module")
def client(host) -> OpenAI:
    key = (cache_dir() / "sandbox" / "api-key").read_text().strip()
    address = host.interface("eth0").addresses[0]
    return OpenAI(base_url=f"http://{address}:{PORT}/v1", api_key=key, timeout=120)


def assert_serves(host, client: OpenAI) -> None:
    assert host.service(UNIT).is_running, journal(host)
    reply = client.completions.create(model="tiny", prompt="Hello", max_tokens=4, temperature=0)
    assert reply.choices and reply.usage is not None and reply.usage.completion_tokens > 0


# --- converged ----------------------------------------------------------------------------------


def test_revisions_published_side_by_side(host):
    assert revisions(host) == ["current", "gen2", "seed0"]
    assert host.file(f"{MODEL}/current").linked_to == f"{MODEL}/gen2"
    for revision in ("seed0", "gen2"):
        directory = host.file(f"{MODEL}/{revision}")
        assert directory.is_directory and directory.user == "root" and directory.mode == 0o755
        assert record(host, revision)["revision"] == revision
    assert revisions(host, f"{STORE}/tiny-nfs") == ["current", "seed0"]


def test_files_match_their_manifest(host):
    for model, revision in ((MODEL, "seed0"), (MODEL, "gen2"), (f"{STORE}/tiny-nfs", "seed0")):
        manifest = record(host, revision, model)["manifest"]
        assert manifest["files"], manifest
        listed = {f["path"] for f in manifest["files"]}
        listing = host.run(f"cd {model}/{revision} && find . -type f ! -name '.*' -printf '%P\\n'")
        on_disk = set(listing.stdout.split())
        assert listed == on_disk
        for entry in manifest["files"]:
            path = f"{model}/{revision}/{entry['path']}"
            assert host.file(path).sha256sum == entry["sha256"]
            assert host.file(path).size == entry["size"]
            assert host.file(path).mode == 0o644


def test_revisions_differ_in_one_file(host):
    files = {}
    for revision in ("seed0", "gen2"):
        manifest = record(host, revision)["manifest"]
        files[revision] = {f["path"]: f["sha256"] for f in manifest["files"]}
    differ = sorted(p for p in files["seed0"] if files["seed0"][p] != files["gen2"][p])
    assert differ == ["generation_config.json"]


def shared_with(host, revision: str, others: tuple[str, ...]) -> list[str]:
    """Files of a revision that are hard links of another revision's verified file."""
    inodes = {}
    for rev in (revision, *others):
        out = host.run(f"cd {MODEL}/{rev} && find . -type f ! -name '.*' -printf '%P %i\\n'").stdout
        inodes[rev] = dict(line.split() for line in out.splitlines())
    return sorted(p for p, ino in inodes[revision].items() if any(inodes[o].get(p) == ino for o in others))


def test_instance_serves_seed0(host, client):
    assert host.file(INSTANCE_LINK).linked_to == f"{MODEL}/seed0"
    assert_serves(host, client)


# --- phases ---------------------------------------------------------------------------------------


def test_switch_instance_to_gen2(host, client, run_playbook):
    before = main_pid(host)
    done = run_playbook(SCENARIO / "converge.yml", {"vllm_server_instances": [instance("gen2")]})
    assert done.rc == 0, done.output[-8000:]
    assert host.file(INSTANCE_LINK).linked_to == f"{MODEL}/gen2"
    assert host.file(f"{MODEL}/current").linked_to == f"{MODEL}/gen2"
    assert main_pid(host) != before
    assert_serves(host, client)


def test_rollback_to_seed0(host, client, run_playbook):
    before = main_pid(host)
    models = [GEN2, dict(SEED0, current=True), NFS]
    extra = {"model_sync_models": models, "vllm_server_instances": [instance("seed0")]}
    done = run_playbook(SCENARIO / "converge.yml", extra)
    assert done.rc == 0, done.output[-8000:]
    assert host.file(f"{MODEL}/current").linked_to == f"{MODEL}/seed0"
    assert host.file(INSTANCE_LINK).linked_to == f"{MODEL}/seed0"
    assert main_pid(host) != before
    assert_serves(host, client)


def test_corrupted_copy_is_refused_and_serving_goes_on(host, client, run_playbook):
    before = main_pid(host)
    # corrupt.yml itself asserts that publishing failed on the flipped file.
    done = run_playbook(SCENARIO / "corrupt.yml", {})
    assert done.rc == 0, done.output[-8000:]
    assert "wrong sha256: tokenizer_config.json" in done.output
    assert not host.file(f"{MODEL}/gen3").exists
    # The refused file is gone from staging: the next run copies it again.
    assert host.file(f"{MODEL}/.partial-gen3").is_directory
    assert not host.file(f"{MODEL}/.partial-gen3/tokenizer_config.json").exists
    assert host.file(f"{MODEL}/current").linked_to == f"{MODEL}/seed0"
    assert host.file(INSTANCE_LINK).linked_to == f"{MODEL}/seed0"
    assert main_pid(host) == before
    assert_serves(host, client)


def test_next_run_heals_the_copy(host, client, run_playbook):
    before = main_pid(host)
    models = [SEED0, GEN2, GEN3, NFS]
    done = run_playbook(SCENARIO / "sync.yml", {"model_sync_models": models})
    assert done.rc == 0, done.output[-8000:]
    assert record(host, "gen3")["manifest"]["digest"] != record(host, "gen2")["manifest"]["digest"]
    # gen3 differs from seed0 in tokenizer_config.json only: the new revision's other files are
    # hard links of the verified files already published, so only that file was copied.
    files = [f["path"] for f in record(host, "gen3")["manifest"]["files"]]
    assert shared_with(host, "gen3", ("seed0", "gen2")) == sorted(set(files) - {"tokenizer_config.json"})
    assert not host.file(f"{MODEL}/.partial-gen3").exists
    assert host.file(f"{MODEL}/current").linked_to == f"{MODEL}/gen3"
    # The instance is vllm_server's: its link and process are untouched by model_sync.
    assert host.file(INSTANCE_LINK).linked_to == f"{MODEL}/seed0"
    assert main_pid(host) == before
    assert_serves(host, client)


def test_prune_keeps_what_is_used(host, run_playbook):
    done = run_playbook(
        SCENARIO / "sync.yml", {"model_sync_models": [GEN3, NFS], "model_sync_keep_revisions": 0}
    )
    assert done.rc == 0, done.output[-8000:]
    # seed0 is what the instance serves; gen2 is neither requested nor current, but it is the
    # instance's way back (site.yml's switch back from gen2 recorded it for rollback.yml).
    assert host.file(INSTANCE_LINK.replace("/model", "/previous-model")).linked_to == f"{MODEL}/gen2"
    assert revisions(host) == ["current", "gen2", "gen3", "seed0"]


def test_bad_input_fails_before_any_host_change(host, tmp_path, run_playbook):
    before = store_snapshot(host)
    broken = tmp_path / "no-tokenizer"
    broken.mkdir()
    for name in ("config.json", "model.safetensors"):
        (broken / name).write_bytes(Path(TINY, name).read_bytes())
    bad = {"name": "tiny-llama", "revision": "broken", "source": str(broken)}
    done = run_playbook(SCENARIO / "converge.yml", {"model_sync_models": [GEN3, NFS, bad]})
    assert done.rc != 0, done.output[-8000:]
    assert "model_sync_models[2] (tiny-llama@broken)" in done.output
    assert "no tokenizer" in done.output
    odd = {"name": "tiny-llama", "revision": "odd", "type": "ftp", "source": "/x"}
    done = run_playbook(SCENARIO / "sync.yml", {"model_sync_models": [GEN3, odd]})
    assert done.rc != 0, done.output[-8000:]
    # The role's argument spec refuses it first (the preflight would too, in the same words).
    assert "ftp" in done.output and "directory, nfs, huggingface, modelscope, gguf" in done.output
    assert store_snapshot(host) == before
