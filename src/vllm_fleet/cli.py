"""The `vllm-fleet` command line: runs the collection's playbooks and reports what they did.

It holds no deployment logic: playbooks and roles decide, this module runs and reports.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from vllm_fleet.paths import cache_dir, project_dir
from vllm_fleet.runner import RunResult, run_playbook

SANDBOX_INVENTORY = "inventories/sandbox"
SANDBOX_ENDPOINT = "http://127.0.0.1:8000/v1"
SANDBOX_MODEL = "smollm2"
DEMO_QUESTION = "What is the capital of France? Answer in one sentence."

EXIT_OK = 0
EXIT_FAILED = 2
EXIT_REFUSED = 3  # preflight refused the input: nothing was changed


def _report(result: RunResult) -> int:
    width = max((len(h) for h in result.hosts), default=4)
    print(f"\n{'host':<{width}}  ok  changed  failed  unreachable  skipped", file=sys.stderr)
    for host, t in sorted(result.hosts.items()):
        print(
            f"{host:<{width}}  {t.ok:>2}  {t.changed:>7}  {t.failed:>6}  {t.unreachable:>11}  {t.skipped:>7}",
            file=sys.stderr,
        )
    if not result.ok:
        print(f"\nrun {result.status} (rc={result.rc})", file=sys.stderr)
        for line in result.failures:
            print(f"  {line}", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_FAILED


def _print_plan(plans: dict[str, dict[str, Any]]) -> None:
    marks = {"pass": "ok  ", "fail": "FAIL", "not checked": "--  "}
    for host, plan in sorted(plans.items()):
        print(f"{host}")
        for error in plan.get("host_errors", []):
            print(f"  FAIL {error}")
        for instance in plan.get("instances", []):
            print(f"  instance {instance['instance']}")
            if instance.get("command"):
                print(f"    $ {instance['command']}")
            for check in instance["checks"]:
                print(
                    f"    {marks.get(check['status'], check['status'])} {check['check']}: {check['detail']}"
                )
        print()


def cmd_plan(args: argparse.Namespace) -> int:
    """Check every instance against its host and model and print the vLLM command lines.

    Nothing changes on any host. With --offline no host is contacted: the hardware comes from
    vllm_server_declared_gpus in the inventory, and checks that need the hosts say "not checked".
    """
    result = run_playbook(
        "playbooks/plan.yml",
        args.inventory,
        {"vllm_server_plan_offline": args.offline},
        limit=args.limit,
        quiet=args.json,
    )
    plans = {h: f["vllm_server_plan"] for h, f in result.facts.items() if "vllm_server_plan" in f}
    refused = any(not p["ok"] for p in plans.values())
    if args.json:
        doc = {
            "ok": result.ok and not refused,
            "offline": args.offline,
            "hosts": plans,
            "errors": result.failures,
        }
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        _print_plan(plans)
        _report(result)
    if refused:
        return EXIT_REFUSED
    return EXIT_OK if result.ok else EXIT_FAILED


def cmd_build(args: argparse.Namespace) -> int:
    """Build the controller-side artefacts the sandbox needs: models and the wheelhouse."""
    from vllm_fleet import models, wheelhouse

    cache = cache_dir()
    for name, path in models.build_all(cache).items():
        print(f"model {name}: {path}")
    print(f"wheelhouse: {wheelhouse.build_wheelhouse(cache / 'wheelhouses')}")
    return EXIT_OK


def cmd_up(args: argparse.Namespace) -> int:
    """Converge the fleet with site.yml."""
    return _report(run_playbook("site.yml", args.inventory, limit=args.limit))


def ask(endpoint: str, api_key: str, model: str, question: str) -> str:
    """One chat completion at temperature 0, through the official OpenAI client."""
    from openai import OpenAI

    client = OpenAI(base_url=endpoint, api_key=api_key, timeout=120)
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=64,
    )
    return (reply.choices[0].message.content or "").strip()


def cmd_demo(args: argparse.Namespace) -> int:
    """Create the sandbox fleet, serve SmolLM2 on it and ask it a question (or remove it)."""
    inventory = project_dir() / SANDBOX_INVENTORY
    if args.down:
        return _report(run_playbook("playbooks/sandbox.yml", inventory, {"sandbox_state": "absent"}))
    if cmd_build(args) != EXIT_OK:
        return EXIT_FAILED
    for playbook in ("playbooks/sandbox.yml", "site.yml"):
        code = _report(run_playbook(playbook, inventory))
        if code != EXIT_OK:
            return code
    key_file = cache_dir() / "sandbox" / "api-key"
    answer = ask(SANDBOX_ENDPOINT, key_file.read_text().strip(), SANDBOX_MODEL, DEMO_QUESTION)
    print(
        f"\nThe sandbox fleet serves {SANDBOX_MODEL}.\n"
        f"  endpoint: {SANDBOX_ENDPOINT} (OpenAI-compatible)\n"
        f"  API key:  in {key_file} (send it as 'Authorization: Bearer <key>')\n"
        f"  asked:    {DEMO_QUESTION}\n"
        f"  answer:   {answer}\n"
        f"Remove the sandbox with: vllm-fleet demo --down"
    )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vllm-fleet",
        description="Deploy and operate vLLM serving fleets with the vllm_fleet.serving collection.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="create the local sandbox fleet, serve SmolLM2 on it and ask it a question",
        description="Create systemd containers on the local Docker engine, converge them with "
        "site.yml (a real CPU vLLM serving SmolLM2-135M-Instruct) and print the model's answer.",
    )
    demo.add_argument("--down", action="store_true", help="remove the sandbox fleet instead")
    demo.set_defaults(func=cmd_demo)

    up = sub.add_parser("up", help="converge a fleet with site.yml", description=cmd_up.__doc__)
    up.add_argument("-i", "--inventory", type=Path, required=True, help="inventory file or directory")
    up.add_argument("--limit", help="only these hosts or groups (Ansible pattern)")
    up.set_defaults(func=cmd_up)

    plan = sub.add_parser(
        "plan",
        help="check the inventory's instances and print their vLLM command lines (changes nothing)",
        description=cmd_plan.__doc__,
    )
    plan.add_argument("-i", "--inventory", type=Path, required=True, help="inventory file or directory")
    plan.add_argument("--limit", help="only these hosts or groups (Ansible pattern)")
    plan.add_argument(
        "--offline",
        action="store_true",
        help="contact no host: plan from the hardware the inventory declares",
    )
    plan.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    plan.set_defaults(func=cmd_plan)

    build = sub.add_parser(
        "build",
        help="build the sandbox's models and the CPU vLLM wheelhouse on this controller",
        description=cmd_build.__doc__,
    )
    build.set_defaults(func=cmd_build)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
