"""The instance ports' firewall: settings, admitted sources, and a ruleset nft itself accepts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from ansible_collections.vllm_fleet.serving.plugins.module_utils import firewall

INVENTORY = {"gateways": ["gw-2", "gw-1"], "monitoring": ["mon"], "vllm_servers": ["a", "b"], "empty": []}


def test_default_groups_and_a_network_pass() -> None:
    assert firewall.errors(True, ["gateways", "monitoring"], ["10.0.0.0/8", "fd00::1"], INVENTORY) == []
    # Off, nothing is looked up: the default groups need not exist in a fleet without a gateway.
    assert firewall.errors(False, ["gateways", "monitoring"], [], {}) == []


@pytest.mark.parametrize(
    ("enabled", "groups", "allow", "expected"),
    [
        ("yes", [], [], "vllm_server_firewall must be true or false"),
        (True, "gateways", [], "vllm_server_firewall_groups must be a list of inventory group names"),
        (True, ["gatways"], [], "_groups: no inventory group 'gatways'; groups: empty, gateways"),
        (True, ["gateways"], "10.0.0.0/8", "vllm_server_firewall_allow must be a list"),
        (True, ["gateways"], ["10.0.0.0/33"], "_allow[0] '10.0.0.0/33' must be an IPv4 or IPv6"),
        (True, ["gateways"], ["gw-1"], "vllm_server_firewall_allow[0] 'gw-1'"),
        (True, ["empty"], [], "nobody would reach the instance ports"),
        (True, [], [], "nobody would reach the instance ports"),
    ],
)
def test_bad_settings_name_the_setting(enabled: object, groups: object, allow: object, expected: str) -> None:
    found = firewall.errors(enabled, groups, allow, INVENTORY)
    assert any(expected in error for error in found), found


def test_admitted_hosts_are_the_groups_hosts_once_sorted() -> None:
    admitted = firewall.admitted_hosts(["monitoring", "gateways", "monitoring"], INVENTORY)
    assert admitted == ["gw-1", "gw-2", "mon"]
    assert firewall.admitted_hosts(["missing"], INVENTORY) == []


def test_sources_are_every_address_of_the_facts_and_the_allow_list_collapsed() -> None:
    # The shape of ansible.builtin.setup's network facts, as a test host reports them.
    facts = [
        {
            "all_ipv4_addresses": ["172.18.0.3"],
            "all_ipv6_addresses": ["fe80::42:acff:fe12:3%eth0", "fd00::3"],
        },
        {"all_ipv4_addresses": ["172.18.0.2", "10.1.2.3"], "all_ipv6_addresses": []},
        {},  # a host whose facts were not read: admits nothing
    ]
    assert firewall.sources(facts, ["10.1.0.0/16", "172.18.0.2"]) == [
        "10.1.0.0/16",
        "172.18.0.2/31",
        "fd00::3/128",
    ]


def _ruleset_file(tmp_path: Path, ports: list[int], admitted: list[str]) -> Path:
    path = tmp_path / "firewall.nft"
    path.write_text(firewall.ruleset(ports, admitted))
    return path


def test_ruleset_rejects_only_the_instance_ports_of_strangers(tmp_path: Path) -> None:
    text = firewall.ruleset([8001, 8000, 8000], ["10.0.0.2/32", "fd00::/8"])
    assert "tcp dport { 8000, 8001 } jump instance_ports" in text
    assert "elements = { 10.0.0.2/32 }" in text and "elements = { fd00::/8 }" in text
    chain = text.split("chain instance_ports {", 1)[1].split("}", 1)[0].split()
    # Loopback and the admitted sources first; the reject is the chain's last word.
    assert " ".join(chain).endswith("reject with tcp reset")
    assert chain.index('"lo"') < chain.index("reject")
    # The table is replaced whole: created if absent, deleted, defined, in one transaction.
    assert text.index("delete table inet vllm_fleet") < text.index("table inet vllm_fleet {")


@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (scripts/setup installs nftables)")
@pytest.mark.parametrize(
    ("ports", "admitted"),
    [([8000, 8001], ["10.0.0.2/32", "fd00::/8"]), ([8000], []), ([], [])],
)
def test_nft_accepts_the_ruleset(tmp_path: Path, ports: list[int], admitted: list[str]) -> None:
    # nft -c parses and checks against the kernel without changing anything.
    checked = subprocess.run(
        ["nft", "-c", "-f", str(_ruleset_file(tmp_path, ports, admitted))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
