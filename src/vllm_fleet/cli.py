"""The `vllm-fleet` command line: runs the collection's playbooks and reports what they did.

It holds no deployment logic: playbooks and roles decide, this module runs and reports.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

from vllm_fleet import images, wheelhouse
from vllm_fleet.extras import MissingExtraError
from vllm_fleet.paths import CollectionNotFoundError, cache_dir, project_dir
from vllm_fleet.progress import summary_table
from vllm_fleet.runner import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_SETUP,
    EXIT_UNREACHABLE,
    RunOptions,
    RunResult,
    run_playbook,
)

SANDBOX_INVENTORY = "inventories/sandbox"
SANDBOX_ENDPOINT = "http://127.0.0.1:8080/v1"  # the gateway (roles/gateway) in front of the instance
# The sandbox's model and its LoRA adapter that answers in French, both through the gateway.
SANDBOX_MODELS = ("smollm2", "smollm2-fr")
DEMO_QUESTION = "What is the capital of France? Answer in one sentence."

EXIT_CODES_HELP = f"""exit codes:
  {EXIT_OK}    success
  {EXIT_SETUP}    the command could not start (no collection found, an extra not installed)
  {EXIT_FAILED}    a task failed on some host
  {EXIT_REFUSED}    the preflight refused the input (nothing changed on any host)
  {EXIT_UNREACHABLE}    some host could not be reached
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C cancels the run)"""


def _options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(
        inventory=args.inventory,
        limit=args.limit,
        extra_vars=args.extra_vars,
        check=args.check,
        diff=args.diff,
        verbosity=args.verbose,
        mitogen=args.mitogen,
    )


def _run(args: argparse.Namespace, playbook: str, extravars: dict[str, Any] | None = None) -> RunResult:
    return run_playbook(playbook, _options(args), extravars, view="none" if args.json else "auto")


def _document(result: RunResult, **extra: Any) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "exit_code": result.exit_code,
        "status": result.status,
        "hosts": {h: row.as_dict() for h, row in result.progress.hosts.items()},
        "failures": [vars(f) for f in result.progress.failures],
        "artifacts": str(result.artifacts),
        **extra,
    }


def _report(result: RunResult) -> int:
    print("\n" + summary_table(result.progress), file=sys.stderr)
    if result.interrupted:
        print("\ninterrupted: the run was cancelled", file=sys.stderr)
    elif not result.ok:
        print(f"\nrun {result.status}, exit code {result.exit_code}:", file=sys.stderr)
        for f in result.progress.failures:
            print(f"  {f.host}: {f.task}: {f.message}", file=sys.stderr)
        print(f"  (details: {result.artifacts})", file=sys.stderr)
    return result.exit_code


def cmd_up(args: argparse.Namespace) -> int:
    """Converge the fleet with site.yml: preflight, environments, models, services.

    Safe to run at any time: what serves nothing yet starts at once; changes that restart or stop
    running instances roll out --serial hosts at a time, drained at the gateways, gated with the
    golden prompts, and a host whose gate fails is put back as it was and stops the run.
    """
    result = _run(args, "site.yml", None if args.serial is None else {"upgrade_serial": args.serial})
    if args.json:
        print(json.dumps(_document(result), indent=2, sort_keys=True))
        return result.exit_code
    return _report(result)


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
    result = _run(args, "playbooks/plan.yml", {"vllm_server_plan_offline": args.offline})
    # One task plans the whole fleet (run_once): its fact holds every host's plan.
    plans = {h: p for f in result.progress.facts.values() for h, p in f.get("vllm_server_plans", {}).items()}
    refused = any(not p["ok"] for p in plans.values())
    code = EXIT_REFUSED if refused else result.exit_code
    if args.json:
        print(json.dumps(_document(result, offline=args.offline, plans=plans) | {"ok": code == 0}, indent=2))
        return code
    _print_plan(plans)
    _report(result)
    return code


def _figures(figures: dict[str, float | None]) -> str:
    """Prometheus' figures of an instance (roles/monitoring) on one line."""
    return "  ".join(f"{name}={'-' if value is None else f'{value:.4g}'}" for name, value in figures.items())


def cmd_status(args: argparse.Namespace) -> int:
    """Show every instance: unit state, model revision, environment, health, requests.

    With monitoring deployed (vllm_fleet_monitoring), also what Prometheus has: up, load, KV
    cache, tokens/s, p95 time to first token and latency, the liveness probe.
    """
    result = _run(args, "playbooks/status.yml")
    rows = {h: f["vllm_server_status"] for h, f in result.progress.facts.items() if "vllm_server_status" in f}
    if args.json:
        print(json.dumps(_document(result, instances=rows), indent=2, sort_keys=True))
        return result.exit_code
    for host, instances in sorted(rows.items()):
        print(host)
        for row in instances:
            load = f"running={row['requests_running']} waiting={row['requests_waiting']}"
            health = "healthy" if row["healthy"] else "NOT ANSWERING"
            state = f"{row['unit']}/{row['sub_state']}"
            print(f"  {row['instance']:<16} {state:<18} {health:<13} port {row['port']}  {load}")
            print(f"    model: {row['model']}")
            print(f"    env:   {row['environment']}")
            if row.get("prometheus"):
                print(f"    prometheus: {_figures(row['prometheus'])}")
    if not result.ok:
        return _report(result)
    return EXIT_OK


def _serial(value: str) -> int | str:
    """--serial: a number of hosts, or a percentage of them (the playbooks check the range)."""
    if re.fullmatch(r"[1-9][0-9]*", value):
        return int(value)
    if re.fullmatch(r"[1-9][0-9]*%", value):
        return value
    raise argparse.ArgumentTypeError(
        f"must be a whole number of hosts or a percentage such as 25%, not {value!r}"
    )


def _rolling(args: argparse.Namespace, playbook: str) -> int:
    result = _run(args, playbook, {"upgrade_serial": args.serial})
    if args.json:
        print(json.dumps(_document(result, serial=args.serial), indent=2, sort_keys=True))
        return result.exit_code
    return _report(result)


def cmd_upgrade(args: argparse.Namespace) -> int:
    """Roll the fleet onto the model revisions and environments the inventory names now.

    The same as `up` (playbooks/upgrade.yml is site.yml under the name of the habit). Edit the
    instances' `revision` (and model_sync_models) or the python_env settings in the inventory,
    or pass them with -e. The new revisions and
    environments are first placed beside the running ones on every host; then, --serial hosts at
    a time: drain at the gateway, wait for in-flight requests to finish, switch, restart, gate
    with the golden prompts, back into the gateway. A host whose gate fails is switched back and
    returned to service, and the run stops (exit code 2) naming host, instance, expected and got.
    Running it again resumes: hosts already on the target are skipped.
    """
    return _rolling(args, "playbooks/upgrade.yml")


def cmd_rollback(args: argparse.Namespace) -> int:
    """Roll every host back to the model revisions and environments it ran before the last upgrade.

    Rolling, with the same drain and gate as `upgrade`. Set the inventory back too, or the next
    `up` moves the fleet forward again.
    """
    return _rolling(args, "playbooks/rollback.yml")


def cmd_build(args: argparse.Namespace) -> int:
    """Build the controller-side artefacts the sandbox needs: its model, adapter and wheelhouse.

    The model (SmolLM2 imported from a GGUF file) and its LoRA adapter (trained here, answering in
    French) need the builders extra: pip install 'vllm_fleet[builders]' (torch, transformers,
    tokenizers, gguf, accelerate, peft).
    The test suite's own models are built by `python -m tests.builders` (scripts/test).
    """
    from vllm_fleet import smollm2, smollm2_lora

    cache = cache_dir()
    model = smollm2.build_smollm2(cache / "models" / smollm2.KIND, cache / "downloads")
    print(f"model {smollm2.KIND}: {model}")
    adapter = smollm2_lora.build_smollm2_lora(model, cache / "models" / smollm2_lora.KIND)
    print(f"adapter {smollm2_lora.KIND}: {adapter}")
    print(f"wheelhouse: {wheelhouse.build_wheelhouse(cache / 'wheelhouses')}")
    return EXIT_OK


def cmd_wheelhouse(args: argparse.Namespace) -> int:
    """Build a wheelhouse of a pinned vLLM for hosts (wheelhouse.DESCRIPTION says how)."""
    return wheelhouse.run(args)


def cmd_image(args: argparse.Namespace) -> int:
    """Build (or reuse) a container image of the wheelhouse's vLLM and save it as an archive.

    Offline, with no registry: a debootstrap'd Debian base (needs debootstrap, and the Docker
    engine on this controller), vLLM installed from the wheelhouse. Prints the image's name and the
    archive to list in vllm_server_container_images ({image, archive}).
    """
    logging.basicConfig(level=logging.INFO, format="[image] %(message)s", stream=sys.stderr)
    source = (
        Path(args.wheelhouse)
        if args.wheelhouse
        else cache_dir() / "wheelhouses" / (f"{wheelhouse.DEFAULT_PACKAGE}-{wheelhouse.DEFAULT_VERSION}")
    )
    if not wheelhouse.is_complete(source):
        print(f"vllm-fleet image: no complete wheelhouse at {source}: run vllm-fleet build", file=sys.stderr)
        return EXIT_SETUP
    try:
        image, archive = images.build_image(source, cache_dir(), args.tag)
    except images.ImageBuildError as err:
        print(f"vllm-fleet image: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(f"image: {image}")
    print(f"archive: {archive}")
    return EXIT_OK


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
    args.inventory = project_dir() / SANDBOX_INVENTORY
    if args.down:
        return _report(_run(args, "playbooks/sandbox.yml", {"sandbox_state": "absent"}))
    if cmd_build(args) != EXIT_OK:
        return EXIT_FAILED
    for playbook in ("playbooks/sandbox.yml", "site.yml"):
        code = _report(_run(args, playbook))
        if code != EXIT_OK:
            return code
    key_file = cache_dir() / "sandbox" / "api-key"
    key = key_file.read_text().strip()
    answers = {model: ask(SANDBOX_ENDPOINT, key, model, DEMO_QUESTION) for model in SANDBOX_MODELS}
    width = max(len(model) for model in SANDBOX_MODELS) + 2
    print(
        f"\nThe sandbox fleet serves {SANDBOX_MODELS[0]} and an adapter of it, {SANDBOX_MODELS[1]}, "
        "behind one base URL.\n"
        f"  endpoint: {SANDBOX_ENDPOINT} (OpenAI-compatible; the model is the request's 'model')\n"
        f"  API key:  in {key_file} (send it as 'Authorization: Bearer <key>')\n"
        f"  asked:    {DEMO_QUESTION}\n"
        + "".join(f"  {model + ':':{width}}{answer}\n" for model, answer in answers.items())
        + "Remove the sandbox with: vllm-fleet demo --down"
    )
    return EXIT_OK


def _add_run_options(parser: argparse.ArgumentParser, inventory: bool = True) -> None:
    if inventory:
        parser.add_argument(
            "-i", "--inventory", type=Path, required=True, help="inventory file or directory of the fleet"
        )
    parser.add_argument("--limit", help="only these hosts or groups (an Ansible host pattern)")
    parser.add_argument(
        "-e",
        "--extra-vars",
        action="append",
        default=[],
        metavar="VARS",
        help="extra variables as for ansible-playbook (key=value, JSON or @file; repeatable). "
        "They are recorded in the run's artifacts: keep secrets in Vault or files",
    )
    parser.add_argument("--check", action="store_true", help="dry run: report what would change")
    parser.add_argument("--diff", action="store_true", help="show the differences in changed files")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more Ansible output (-vvv)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of progress")
    parser.add_argument(
        "--mitogen",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the plays with Mitogen's strategy: fewer round trips per task over SSH "
        "(the default; --no-mitogen: stock Ansible's linear strategy)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vllm-fleet",
        description="Deploy and operate vLLM serving fleets with the vllm_fleet.serving collection. "
        "Start with `vllm-fleet demo` (a local sandbox fleet), then point -i at your inventory.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Any, help_text: str, inventory: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_text,
            description=func.__doc__,
            epilog=EXIT_CODES_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        _add_run_options(p, inventory)
        return p

    demo = add("demo", cmd_demo, "local sandbox fleet: serve SmolLM2 and ask it a question", inventory=False)
    demo.add_argument("--down", action="store_true", help="remove the sandbox fleet instead")
    up = add(
        "up", cmd_up, "converge a fleet with site.yml (changes to running instances roll, drained and gated)"
    )
    up.add_argument(
        "--serial",
        type=_serial,
        default=None,
        metavar="N",
        help="hosts switched at a time, or N%% of them (default: 1)",
    )
    plan = add("plan", cmd_plan, "check the instances and print their vLLM command lines (changes nothing)")
    plan.add_argument(
        "--offline",
        action="store_true",
        help="contact no host: plan from the hardware the inventory declares",
    )
    for name, func, help_text in (
        ("upgrade", cmd_upgrade, "rolling change of model revisions or vLLM environments"),
        ("rollback", cmd_rollback, "rolling return to what each host ran before the last upgrade"),
    ):
        rolling = add(name, func, help_text)
        rolling.add_argument(
            "--serial",
            type=_serial,
            default=1,
            metavar="N",
            help="hosts switched at a time, or N%% of them (default: 1)",
        )
    add("status", cmd_status, "per host and instance: unit, model revision, environment, health, load")
    build = sub.add_parser(
        "build",
        help="build the sandbox's models and the CPU vLLM wheelhouse on this controller",
        description=cmd_build.__doc__,
    )
    build.set_defaults(func=cmd_build)
    image = sub.add_parser(
        "image",
        help="build (or reuse) a container image of vLLM from the wheelhouse, saved as an archive for hosts",
        description=cmd_image.__doc__,
    )
    image.add_argument("--wheelhouse", help="the wheelhouse (default: the CPU build's in the cache)")
    image.add_argument(
        "--tag", action="append", default=[], metavar="NAME:TAG", help="a further name (repeatable)"
    )
    image.set_defaults(func=cmd_image)
    wheels = sub.add_parser(
        "wheelhouse",
        help="build (or reuse) an offline wheelhouse of a pinned vLLM for python_env_wheelhouse",
        description=wheelhouse.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    wheelhouse.add_arguments(wheels)
    wheels.set_defaults(func=cmd_wheelhouse)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (CollectionNotFoundError, MissingExtraError) as err:
        print(f"vllm-fleet: {err}", file=sys.stderr)
        return EXIT_SETUP
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
