"""The instance ports' firewall: who may reach them, and the nftables ruleset that says so.

vLLM answers /metrics, /docs, /openapi.json and /version without its API key, and the key it
does check is the one the gateway holds: an instance's port is for the gateways and the
monitoring host only. The ruleset is a table of its own (``inet vllm_fleet``) that rejects every
other source on the instance ports and decides nothing else, so it sits beside whatever
firewall the host already has (nftables.conf, firewalld, ufw all keep theirs); the host's
loopback stays open for the readiness gate and the probes, which ask on 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

TABLE = "vllm_fleet"
# Variables and the groups the role admits by default (its defaults/main.yml).
ENABLED_VAR = "vllm_server_firewall"
GROUPS_VAR = "vllm_server_firewall_groups"
ALLOW_VAR = "vllm_server_firewall_allow"


def errors(enabled: Any, groups: Any, allow: Any, inventory: Mapping[str, Iterable[str]]) -> list[str]:
    """Errors of the firewall's settings, each naming the setting and what is allowed.

    inventory: the inventory's groups and their hosts (the admitted groups must exist, and
    someone must be admitted: a firewall that admits nobody would cut the gateways off).
    """
    found = []
    if not isinstance(enabled, bool):
        found.append(f"{ENABLED_VAR} must be true or false, got {enabled!r}")
    groups_ok = isinstance(groups, list) and all(isinstance(g, str) and g for g in groups)
    if not groups_ok:
        found.append(f"{GROUPS_VAR} must be a list of inventory group names, got {groups!r}")
    allow_ok = isinstance(allow, list)
    if not allow_ok:
        found.append(f"{ALLOW_VAR} must be a list of addresses or networks (e.g. 10.0.0.0/8), got {allow!r}")
    else:
        for position, entry in enumerate(allow):
            try:
                ipaddress.ip_network(str(entry), strict=False)
            except ValueError:
                found.append(
                    f"{ALLOW_VAR}[{position}] {entry!r} must be an IPv4 or IPv6 address or network "
                    "(e.g. 10.0.0.5, 10.0.0.0/8, fd00::/8)"
                )
    if enabled is True and groups_ok and allow_ok:
        unknown = [g for g in groups if g not in inventory]
        if unknown:
            found.append(
                f"{GROUPS_VAR}: no inventory group {', '.join(map(repr, unknown))}; groups: "
                f"{', '.join(sorted(inventory))}"
            )
        elif not admitted_hosts(groups, inventory) and not allow:
            found.append(
                f"{ENABLED_VAR} is on but nobody would reach the instance ports: the groups of "
                f"{GROUPS_VAR} ({', '.join(groups) or 'none'}) have no hosts and {ALLOW_VAR} is empty"
            )
    return found


def admitted_hosts(groups: Iterable[str], inventory: Mapping[str, Iterable[str]]) -> list[str]:
    """The inventory hosts of the admitted groups, sorted, each once."""
    return sorted({host for group in groups for host in inventory.get(group, [])})


def sources(facts: Iterable[Mapping[str, Any]], allow: Iterable[str]) -> list[str]:
    """Networks admitted to the instance ports: every address the admitted hosts' facts list
    (all_ipv4_addresses, all_ipv6_addresses) and the allow list, collapsed, IPv4 first."""
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [
        ipaddress.ip_network(str(entry), strict=False) for entry in allow
    ]
    for host_facts in facts:
        for key in ("all_ipv4_addresses", "all_ipv6_addresses"):
            for address in host_facts.get(key) or []:
                parsed = ipaddress.ip_address(str(address).split("%", 1)[0])
                # Link-local addresses are on every interface: admitting one admits a neighbour.
                if not parsed.is_link_local:
                    networks.append(ipaddress.ip_network(parsed))
    v4 = ipaddress.collapse_addresses(n for n in networks if n.version == 4)
    v6 = ipaddress.collapse_addresses(n for n in networks if n.version == 6)
    return [str(n) for n in v4] + [str(n) for n in v6]


def ruleset(ports: Iterable[int], admitted: Iterable[str]) -> str:
    """The nftables script of the table: replaces it whole in one transaction (nft -f)."""
    networks = [ipaddress.ip_network(a, strict=False) for a in admitted]
    port_list = sorted({int(p) for p in ports})
    lines = [
        "# vllm-fleet: the vLLM instance ports, open to the gateways and the monitoring host only.",
        "# Written by vllm_fleet.serving.vllm_firewall; a table of its own beside the host's firewall.",
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
    ]
    for family, version in (("ipv4", 4), ("ipv6", 6)):
        elements = ", ".join(str(n) for n in networks if n.version == version)
        lines += [f"    set admitted_v{version} {{", f"        type {family}_addr", "        flags interval"]
        if elements:
            lines.append(f"        elements = {{ {elements} }}")
        lines.append("    }")
    lines += [
        "    chain input {",
        # Before the usual filter chains: a reject here is final, an accept leaves them theirs.
        "        type filter hook input priority filter - 10; policy accept;",
    ]
    if port_list:
        lines.append(f"        tcp dport {{ {', '.join(map(str, port_list))} }} jump instance_ports")
    lines += [
        "    }",
        "    chain instance_ports {",
        '        iifname "lo" accept',
        "        ip saddr @admitted_v4 accept",
        "        ip6 saddr @admitted_v6 accept",
        "        reject with tcp reset",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"
