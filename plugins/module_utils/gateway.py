"""The gateway's view of the fleet: upstreams per served model, keys, and drained hosts.

The gateway role renders nginx's main configuration from what these functions return; the
upstream blocks are rendered by the gateway_upstreams module on the gateway host from a state
file (:func:`new_state`): the upstreams the inventory asks for, and the hosts that rolling
changes drained. Drain and undrain change that state and render the blocks again; a converge of
the gateway keeps a drained host drained.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ansible_collections.vllm_fleet.serving.plugins.module_utils.vllm_spec import (
    API_KEY_PATTERN,
    routable_names,
    served_names,
    with_defaults,
)

# A served name like v1/chat would take OpenAI's own paths (/v1/chat/...): routed by body only.
PREFIX_SHADOWS_OPENAI = re.compile(r"^v[0-9]+(/|$)")
# Names the backend host of each upstream server line (for people reading the file).
HOST_MARKER = "# vllm-fleet host="
# Named client keys (gateway_clients): a name for logs and limits, nginx's request rates.
CLIENT_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
RATE_PATTERN = re.compile(r"^[1-9][0-9]{0,5}r/[sm]$")
CLIENT_KEYS = frozenset(("name", "keys", "models", "rate", "burst"))


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


def upstreams(
    backend_list: list[dict[str, Any]], default_model: str = "", clients: bool = False
) -> list[dict[str, Any]]:
    """One upstream per served model name and adapter name, sorted by name.

    Each: ``model`` (served name), ``upstream`` (nginx identifier), ``servers`` (host, address,
    port, instance), ``prefix`` (its path prefix, '' for names that would shadow OpenAI's
    paths), ``default`` (where a request that names no model goes: ``default_model``,
    else the only served name, adapters aside; none when several are served), ``keyed`` (whether clients need
    a key for it: always with named client keys, ``clients``).
    """
    by_model: dict[str, list[dict[str, Any]]] = {}
    keyed: dict[str, bool] = {}
    bases: set[str] = set()
    for backend in backend_list:
        for spec in backend["instances"]:
            bases.update(served_names(spec))
            for model in routable_names(spec):
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
    # Adapters aside: one base model is the default, whatever adapters it carries.
    default = default_model or (next(iter(bases)) if len(bases) == 1 else "")
    taken: set[str] = set()
    return [
        {
            "model": name,
            "upstream": _identifier(name, taken),
            "servers": sorted(by_model[name], key=lambda s: (s["host"], s["port"])),
            "default": name == default,
            "keyed": keyed[name] or clients,
            "prefix": "" if PREFIX_SHADOWS_OPENAI.match(name) else f"/{name}/",
        }
        for name in names
    ]


def routes(upstream_list: list[dict[str, Any]]) -> dict[str, Any]:
    """The gateway's routing table (rendered into routes.js for its njs router): each served name's
    upstream and whether it needs a key, and the default model ('' if none)."""
    return {
        "models": {u["model"]: {"upstream": u["upstream"], "keyed": u["keyed"]} for u in upstream_list},
        "default": next((u["model"] for u in upstream_list if u["default"]), ""),
    }


def _instance_key(backend: Mapping[str, Any], instance: str) -> str:
    return str(backend["api_keys"].get(instance) or backend["api_key"] or "")


def api_keys(backend_list: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The keys that open each served model: those its instances require (secrets)."""
    keys: dict[str, set[str]] = {}
    for backend in backend_list:
        for spec in backend["instances"]:
            key = _instance_key(backend, spec["name"])
            for model in routable_names(spec) if key else []:
                keys.setdefault(model, set()).add(key)
    return {model: sorted(found) for model, found in sorted(keys.items())}


def errors(backend_list: list[dict[str, Any]], default_model: str = "") -> list[str]:
    """Why the fleet cannot be put behind the gateway (empty: it can). Never shows a key."""
    found = []
    served = set()
    # Served names are the instance spec's to check (vllm_spec, in the plan).
    for backend in backend_list:
        for spec in backend["instances"]:
            served.update(routable_names(spec))
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


def client_errors(
    clients: Any, upstream_list: list[dict[str, Any]], backend_list: list[dict[str, Any]]
) -> list[str]:
    """Errors of gateway_clients (empty: none, or all valid), each naming the setting. Never shows a key.

    With named clients the gateway sends each model's servers one internal key of their own, so
    a model's instances must share one key (or have none), and no client may hold one of them.
    """
    if not isinstance(clients, list):
        return [
            "gateway_clients must be a list of clients ({name, keys, models, rate, burst}), "
            f"got {type(clients).__name__}"
        ]
    found = []
    routable = {u["model"] for u in upstream_list}
    internal_keys = api_keys(backend_list)
    internal = {key for keys in internal_keys.values() for key in keys}
    seen_names: set[str] = set()
    seen_keys: set[str] = set()
    for position, client in enumerate(clients):
        where = f"gateway_clients[{position}]"
        if not isinstance(client, dict) or not {"name", "keys"} <= set(client) or set(client) - CLIENT_KEYS:
            found.append(f"{where} must be a mapping of name and keys, and optionally models, rate and burst")
            continue
        name = client["name"]
        if not (isinstance(name, str) and CLIENT_NAME_PATTERN.match(name)):
            found.append(f"{where}: 'name' must match {CLIENT_NAME_PATTERN.pattern}, got {name!r}")
        elif name in seen_names:
            found.append(f"{where}: 'name' {name!r} is used by another client")
        else:
            seen_names.add(name)
        where = f"gateway_clients[{position}] ({name})"
        keys = client["keys"]
        if not isinstance(keys, list) or not keys:
            found.append(f"{where}: 'keys' must be a list of one or more keys (two while one is rotated)")
        else:
            for index, key in enumerate(keys):
                if not (isinstance(key, str) and API_KEY_PATTERN.match(key)):
                    found.append(f"{where}: keys[{index}] must be letters, digits and ._~+/=- only")
                elif key in seen_keys:
                    found.append(f"{where}: keys[{index}] is also another client's (or this one's) key")
                elif key in internal:
                    found.append(
                        f"{where}: keys[{index}] is an instance's own key (vllm_server_api_key(s)), which "
                        "only the gateway may hold"
                    )
                else:
                    seen_keys.add(key)
        models = client.get("models")
        if models is not None:
            if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
                found.append(f"{where}: 'models' must be a list of served names or adapters, got {models!r}")
            else:
                unknown = sorted(set(models) - routable)
                if unknown:
                    found.append(
                        f"{where}: 'models' names what no instance serves: {unknown}; served: "
                        f"{', '.join(sorted(routable))}"
                    )
        rate = client.get("rate")
        if rate is not None and not (isinstance(rate, str) and RATE_PATTERN.match(rate)):
            found.append(
                f"{where}: 'rate' must be requests per second or minute (e.g. 10r/s, 600r/m), got {rate!r}"
            )
        burst = client.get("burst")
        if burst is not None and (
            rate is None or not isinstance(burst, int) or isinstance(burst, bool) or burst < 0
        ):
            found.append(f"{where}: 'burst' must be an integer >= 0, with a 'rate', got {burst!r}")
    if clients:
        for model, keys in internal_keys.items():
            keyless = any(
                not _instance_key(backend, spec["name"])
                for backend in backend_list
                for spec in backend["instances"]
                if model in routable_names(spec)
            )
            if len(keys) > 1 or (keys and keyless):
                found.append(
                    f"gateway_clients: the instances of {model!r} have different API keys; the gateway "
                    "sends one internal key per model: give them one vllm_server_api_key"
                )
    return found


def client_access(clients: list[dict[str, Any]], upstream_list: list[dict[str, Any]]) -> dict[str, Any]:
    """What nginx needs of valid gateway_clients (secrets): each key's client name, each
    upstream's client names, and each rate-limited client's zone, rate and burst."""
    by_key = {key: c["name"] for c in clients for key in c["keys"]}
    allowed = {
        u["upstream"]: sorted(
            c["name"] for c in clients if c.get("models") is None or u["model"] in c["models"]
        )
        for u in upstream_list
    }
    limits = [
        {
            "client": c["name"],
            "zone": "vllm_fleet_rate_" + re.sub(r"\W", "_", c["name"]),
            "rate": c["rate"],
            "burst": int(c.get("burst") or 0),
        }
        for c in clients
        if c.get("rate")
    ]
    return {"by_key": dict(sorted(by_key.items())), "allowed": allowed, "limits": limits}


def server_line(server: Mapping[str, Any], max_fails: int, fail_timeout: int, down: bool) -> str:
    """One upstream server line; a drained host's lines are marked ``down``."""
    flags = f"max_fails={int(max_fails)} fail_timeout={int(fail_timeout)}s" + (" down" if down else "")
    return f"server {server['address']}:{int(server['port'])} {flags}; {HOST_MARKER}{server['host']}"


def upstream_blocks(state: Mapping[str, Any]) -> str:
    """nginx's upstream blocks from the gateway's state (see :func:`new_state`)."""
    drained = set(state.get("drained") or [])
    lines = ["# Written by vllm-fleet from upstreams.json beside it (gateway_upstreams); do not edit."]
    for upstream in state.get("upstreams") or []:
        lines += [f"# served model {upstream['model']}", f"upstream {upstream['upstream']} {{"]
        lines.append(f"    zone {upstream['upstream']} 64k;")
        for server in upstream["servers"]:
            line = server_line(server, state["max_fails"], state["fail_timeout"], server["host"] in drained)
            lines.append(f"    {line}")
        lines += [f"    keepalive {int(state['keepalive'])};", "}", ""]
    return "\n".join(lines) + "\n"


def new_state(
    old: Mapping[str, Any],
    upstream_list: list[dict[str, Any]] | None = None,
    settings: Mapping[str, int] | None = None,
    drain: list[str] | tuple[str, ...] = (),
    undrain: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """The gateway's state after a configure (upstreams, settings) and/or a drain or undrain.

    State: ``upstreams`` (:func:`upstreams`), ``max_fails``, ``fail_timeout``, ``keepalive``
    and ``drained`` (hosts whose server lines are down). A configure keeps the drained hosts: a
    host that a rolling upgrade took out stays out until that upgrade returns it.
    """
    state: dict[str, Any] = {
        "upstreams": [],
        "max_fails": 2,
        "fail_timeout": 10,
        "keepalive": 32,
        "drained": [],
    }
    state.update({k: v for k, v in old.items() if k in state})
    if upstream_list is not None:
        state["upstreams"] = upstream_list
    state.update(settings or {})
    drained = (set(state["drained"]) | set(drain)) - set(undrain)
    state["drained"] = sorted(drained)
    return state
