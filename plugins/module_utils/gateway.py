"""The gateway's view of the fleet: upstreams per served model, keys, and drained hosts.

The gateway role renders nginx's configuration from what these functions return; the drain
and undrain tasks toggle one marker per upstream server line (`down`) that
:func:`server_line` writes and :func:`drained_hosts` reads back. The drained state therefore
lives in the running configuration itself: a converge of the gateway keeps a host drained that a
rolling upgrade took out, and nothing else has to remember it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ansible_collections.vllm_fleet.serving.plugins.module_utils.vllm_spec import (
    API_KEY_PATTERN,
    with_defaults,
)

# Served names become path prefixes (/<name>/v1/...) and parts of nginx identifiers: no
# spaces, quotes, braces, semicolons or anything else nginx or a URL would read differently.
SERVED_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
# Marks the line of one backend host in the generated upstream blocks.
HOST_MARKER = "# vllm-fleet host="
_SERVER_LINE = re.compile(
    r"^\s*server\s+[^;#]*?(?P<down>\s+down)?;\s*" + re.escape(HOST_MARKER) + r"(?P<host>\S+)\s*$"
)


def backends(hosts: Iterable[str], hostvars: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What the gateway needs of each backend host, read from the inventory's hostvars.

    address: ``gateway_backend_address`` of the host, else ``ansible_host``, else its name.
    """
    result = []
    for host in hosts:
        hv = hostvars[host]
        result.append(
            {
                "host": host,
                "address": str(hv.get("gateway_backend_address") or hv.get("ansible_host") or host),
                "instances": [with_defaults(dict(spec)) for spec in hv.get("vllm_server_instances") or []],
                "api_key": str(hv.get("vllm_server_api_key") or ""),
                "api_keys": dict(hv.get("vllm_server_api_keys") or {}),
            }
        )
    return result


def _identifier(name: str, taken: set[str]) -> str:
    base = "vllm_" + re.sub(r"\W", "_", name)
    ident, n = base, 2
    while ident in taken:
        ident, n = f"{base}_{n}", n + 1
    taken.add(ident)
    return ident


def upstreams(backend_list: list[dict[str, Any]], default_model: str = "") -> list[dict[str, Any]]:
    """One upstream per served model name, sorted by name.

    Each: ``model`` (served name), ``upstream`` (nginx identifier), ``servers`` (host, address,
    port, instance), ``default`` (served at /v1 without a prefix: ``default_model``, else the
    first name), ``keyed`` (whether clients need a key for it).
    """
    by_model: dict[str, list[dict[str, Any]]] = {}
    keyed: dict[str, bool] = {}
    for backend in backend_list:
        for spec in backend["instances"]:
            model = str(spec["served_model_name"])
            by_model.setdefault(model, []).append(
                {
                    "host": backend["host"],
                    "address": backend["address"],
                    "port": int(spec["port"]),
                    "instance": spec["name"],
                }
            )
            keyed[model] = keyed.get(model, False) or bool(_instance_key(backend, spec["name"]))
    names = sorted(by_model)
    default = default_model or (names[0] if names else "")
    taken: set[str] = set()
    return [
        {
            "model": name,
            "upstream": _identifier(name, taken),
            "servers": sorted(by_model[name], key=lambda s: (s["host"], s["port"])),
            "default": name == default,
            "keyed": keyed[name],
        }
        for name in names
    ]


def _instance_key(backend: Mapping[str, Any], instance: str) -> str:
    return str(backend["api_keys"].get(instance) or backend["api_key"] or "")


def api_keys(backend_list: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The keys that open each served model: those its instances require (secrets)."""
    keys: dict[str, set[str]] = {}
    for backend in backend_list:
        for spec in backend["instances"]:
            key = _instance_key(backend, spec["name"])
            if key:
                keys.setdefault(str(spec["served_model_name"]), set()).add(key)
    return {model: sorted(found) for model, found in sorted(keys.items())}


def errors(backend_list: list[dict[str, Any]], default_model: str = "") -> list[str]:
    """Why the fleet cannot be put behind the gateway (empty: it can). Never shows a key."""
    found = []
    served = set()
    for backend in backend_list:
        for spec in backend["instances"]:
            name = str(spec["served_model_name"])
            served.add(name)
            if not SERVED_NAME_PATTERN.match(name):
                found.append(
                    f"{backend['host']}: instance {spec['name']}: served_model_name {name!r} cannot be a "
                    "gateway path: use letters, digits, '.', '_', '-' and '/' between parts"
                )
            key = _instance_key(backend, spec["name"])
            if key and not API_KEY_PATTERN.match(key):
                found.append(
                    f"{backend['host']}: instance {spec['name']}: its API key (vllm_server_api_key or "
                    "vllm_server_api_keys) has characters other than letters, digits and ._~+/=-"
                )
    if default_model and default_model not in served:
        found.append(
            f"gateway_default_model {default_model!r} is served by no instance; served: "
            f"{', '.join(sorted(served)) or 'none'}"
        )
    return found


def server_line(server: Mapping[str, Any], max_fails: int, fail_timeout: int, down: bool) -> str:
    """One upstream server line, marked with its host so that drains can find it."""
    flags = f"max_fails={int(max_fails)} fail_timeout={int(fail_timeout)}s" + (" down" if down else "")
    return f"server {server['address']}:{int(server['port'])} {flags}; {HOST_MARKER}{server['host']}"


def drained_hosts(config: str) -> list[str]:
    """Hosts whose server lines are marked down in a configuration :func:`server_line` wrote."""
    hosts = set()
    for line in config.splitlines():
        match = _SERVER_LINE.match(line)
        if match and match.group("down"):
            hosts.add(match.group("host"))
    return sorted(hosts)


def drain_pattern(host: str) -> str:
    """The regular expression (for Ansible's replace module) of ``host``'s server lines.

    Groups: 1 the line up to the flags' end, 2 `` down`` if present, 3 the marker comment.
    """
    return r"^(\s*server\s+[^;#]*?)(\s+down)?;(\s*" + re.escape(HOST_MARKER + host) + r")$"
