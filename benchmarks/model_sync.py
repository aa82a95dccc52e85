"""Benchmark of the model_sync role against plain rsync, on sandbox hosts of this machine.

    .venv/bin/python benchmarks/model_sync.py [--size-gib 2] [--shards 4] [--hosts 1] [--keep]

Makes a synthetic model (random shards plus config.json and tokenizer files, so the preflight
passes) in a temporary directory, creates its own systemd container(s) with
playbooks/sandbox.yml (named vllm-msync-bench-N on the network vllm-fleet-msync-bench; removed at
the end unless --keep), and measures, in one run:

1. plain `rsync -a` of the directory to each host (over SSH as the role's rsync, as root
   through sudo), the baseline;
2. the first sync by the role (a playbook with model_sync alone, cold manifest cache): wall
   time, and the time of its copy step, as ratios to the baseline;
3. an unchanged re-sync: wall time per host and bytes moved;
4. a new revision with one changed shard: bytes moved, against the shard's size.

Bytes moved are rsync's own "Total bytes sent" (the role's copies run with --stats here).
Prints the figures; --json FILE writes them too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_hosts import log, run_role, sandbox, ssh_config, task_seconds, write_inventory

NETWORK = "vllm-fleet-msync-bench"
MODEL = "bench-model"
CHUNK = 64 << 20

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_hidden_layers": 32,
    "max_position_embeddings": 8192,
    "torch_dtype": "bfloat16",
}


def write_random(path: Path, size: int) -> None:
    with path.open("wb") as handle:
        left = size
        while left:
            block = min(CHUNK, left)
            handle.write(os.urandom(block))
            left -= block


def make_model(root: Path, size: int, shards: int) -> list[Path]:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(CONFIG, indent=2))
    (root / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    (root / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    (root / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 8192}))
    paths = []
    weight_map = {}
    for index in range(shards):
        name = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        write_random(root / name, size // shards)
        weight_map[f"layer.{index}.weight"] = name
        paths.append(root / name)
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return paths


def plain_rsync(source: Path, hosts: list[str], dest: str) -> float:
    """rsync -a to every host at once; seconds until the last one finished."""
    start = time.monotonic()
    rsync = ["rsync", "-a", f"--rsh=ssh -F {ssh_config(NETWORK)}", "--rsync-path=sudo rsync"]
    procs = [subprocess.Popen([*rsync, f"{source}/", f"{host}:{dest}/"]) for host in hosts]
    codes = [p.wait() for p in procs]
    elapsed = time.monotonic() - start
    if any(codes):
        raise RuntimeError(f"plain rsync failed: {codes}")
    for host in hosts:
        subprocess.run(["docker", "exec", host, "rm", "-rf", dest], check=True)
    return elapsed


def step_seconds(result: dict[str, Any], name: str) -> float:
    for play in result["plays"]:
        for task in play["tasks"]:
            if name in task["task"]["name"]:
                return task_seconds(task)
    return 0.0


def bytes_sent(result: dict[str, Any]) -> int:
    total = 0
    for play in result["plays"]:
        for task in play["tasks"]:
            if "Copy each" not in task["task"]["name"]:
                continue
            for host_result in task["hosts"].values():
                for item in host_result.get("results", [host_result]):
                    for match in re.finditer(r"Total bytes sent: ([\d,]+)", str(item.get("msg", ""))):
                        total += int(match.group(1).replace(",", ""))
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--size-gib", type=float, default=2.0, help="model size in GiB (default 2)")
    parser.add_argument("--shards", type=int, default=4, help="weight shards (default 4)")
    parser.add_argument("--hosts", type=int, default=1, help="sandbox hosts to sync to at once (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the hosts (and reuse existing ones)")
    parser.add_argument("--tmp", type=Path, default=None, help="where to make the model (default: /var/tmp)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)

    hosts = [f"vllm-msync-bench-{i + 1}" for i in range(args.hosts)]
    size = int(args.size_gib * (1 << 30))
    figures: dict[str, Any] = {"hosts": len(hosts), "shards": args.shards}
    with tempfile.TemporaryDirectory(prefix="model-sync-bench-", dir=args.tmp or "/var/tmp") as tmp:
        work = Path(tmp)
        inventory = work / "inventory.yml"
        write_inventory(inventory, hosts, NETWORK)
        log(f"making a {args.size_gib} GiB model in {args.shards} shards")
        source = work / "r1"
        shards = make_model(source, size, args.shards)
        total = sum(p.stat().st_size for p in source.iterdir())
        figures["model_bytes"] = total
        log(f"creating {', '.join(hosts)}")
        sandbox(inventory, hosts, NETWORK, "present")
        try:
            for host in hosts:
                subprocess.run(
                    ["docker", "exec", host, "rm", "-rf", f"/var/lib/vllm-fleet/models/{MODEL}"], check=True
                )
            base = {
                "model_sync_controller_dir": str(work / "controller"),
                "model_sync_rsync_opts": ["--stats"],
                "model_sync_free_space_margin": 0,
            }
            r1 = {"name": MODEL, "revision": "r1", "source": str(source)}

            log("plain rsync (baseline)")
            plain = plain_rsync(source, hosts, "/var/tmp/bench-plain")

            log("first sync with the role")
            first, result = run_role("model_sync", work, inventory, dict(base, model_sync_models=[r1]))
            copy = step_seconds(result, "Copy each revision from the controller")
            figures["first_sync"] = {
                "plain_rsync_s": round(plain, 2),
                "role_wall_s": round(first, 2),
                "role_copy_step_s": round(copy, 2),
                "role_manifest_step_s": round(step_seconds(result, "Fetch, check and hash"), 2),
                "role_verify_publish_step_s": round(step_seconds(result, "Verify each copy"), 2),
                "plain_rsync_MBps": round(total * len(hosts) / plain / 1e6, 1),
                "role_MBps": round(total * len(hosts) / first / 1e6, 1),
                "throughput_ratio_wall": round(plain / first, 3),
                "throughput_ratio_copy_step": round(plain / copy, 3) if copy else None,
                "bytes_sent": bytes_sent(result),
            }
            log("plain rsync again (baseline, after)")
            plain_after = plain_rsync(source, hosts, "/var/tmp/bench-plain")
            # This machine is shared: the baseline is the mean of the runs before and after.
            mean = (plain + plain_after) / 2
            figures["first_sync"].update(
                plain_rsync_after_s=round(plain_after, 2),
                plain_rsync_mean_s=round(mean, 2),
                throughput_ratio_wall_vs_mean=round(mean / first, 3),
                throughput_ratio_copy_step_vs_mean=round(mean / copy, 3) if copy else None,
            )

            log("unchanged re-sync")
            again, result = run_role("model_sync", work, inventory, dict(base, model_sync_models=[r1]))
            figures["unchanged_resync"] = {
                "role_wall_s": round(again, 2),
                "role_wall_per_host_s": round(again / len(hosts), 2),
                "stage_step_s": round(step_seconds(result, "Stage each revision"), 2),
                "bytes_sent": bytes_sent(result),
                "changed": sum(s["changed"] for s in result["stats"].values()),
            }

            log("new revision with one changed shard")
            changed = work / "r2"
            changed.mkdir()
            for path in source.iterdir():
                os.link(path, changed / path.name)
            (changed / shards[-1].name).unlink()
            write_random(changed / shards[-1].name, shards[-1].stat().st_size)
            r2 = {"name": MODEL, "revision": "r2", "source": str(changed)}
            third, result = run_role("model_sync", work, inventory, dict(base, model_sync_models=[r1, r2]))
            figures["one_changed_shard"] = {
                "role_wall_s": round(third, 2),
                "shard_bytes": shards[-1].stat().st_size,
                "bytes_sent_per_host": bytes_sent(result) // len(hosts),
                "copy_step_s": round(step_seconds(result, "Copy each revision from the controller"), 2),
            }
            inodes = subprocess.run(
                [
                    "docker",
                    "exec",
                    hosts[0],
                    "sh",
                    "-c",
                    f"cd /var/lib/vllm-fleet/models/{MODEL} && stat -c '%i %n' r1/* r2/*",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split("\n")
            by_name: dict[str, set[str]] = {}
            for line in filter(None, inodes):
                inode, name = line.split(" ", 1)
                by_name.setdefault(name.split("/", 1)[1], set()).add(inode)
            figures["one_changed_shard"]["files_shared_with_r1"] = sum(len(v) == 1 for v in by_name.values())
            figures["one_changed_shard"]["files"] = len(by_name)
        finally:
            if not args.keep:
                log("removing the hosts")
                sandbox(inventory, hosts, NETWORK, "absent")
            shutil.rmtree(work / "controller", ignore_errors=True)

    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
