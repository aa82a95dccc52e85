"""The host side of vllm_server's instances: what would change, switch, restore, commit.

An instance ``NAME`` on a host is four things: its unit ``<unit_dir>/vllm-NAME.service``, its
root-only secrets ``<config_dir>/NAME.env``, and two links in ``<instance_dir>/NAME/``: ``model``
(a revision in the model store) and ``env`` (a Python environment; none for a container
instance, whose unit names its image). The unit runs whatever the links point at, so switching
links (and units) and restarting moves an instance, and back.

Beside the links live two records of what an instance ran before, each ``<record>-model``,
``<record>-env`` and ``<record>.service``:

- ``upgrade-from``: written by a switch, before anything changes; the way back if the readiness
  gate fails (:meth:`Host.restore`). An instance that did not exist before gets the marker
  ``upgrade-from.new`` instead (restoring it removes it). A record that is already there (a run
  that stopped after its switch) is kept: it holds the last state that passed a gate.
- ``previous``: what ran before the last upgrade that passed its gate (:meth:`Host.commit` makes
  ``upgrade-from`` the ``previous`` record); ``target='previous'`` switches back to it
  (playbooks/rollback.yml), and committing such a switch drops its ``upgrade-from`` record, so a
  second rollback has nothing to do.

Secrets are never recorded: a restored instance keeps the current key.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.vllm_fleet.serving.plugins.module_utils.files import read_text, write_text_atomic

# Units this role wrote say so: another vllm-* unit on the host is not ours to stop.
UNIT_DESCRIPTION = re.compile(r"^Description=vLLM instance ", re.MULTILINE)
UNIT_NAME = re.compile(r"^vllm-(?P<name>.+)\.service$")
LINKS = ("model", "env")
TARGETS = ("inventory", "previous")

# systemctl(*args) -> (rc, stdout); raising is the caller's business.
Systemctl = Callable[..., tuple[int, str]]


@dataclass
class Desired:
    """One instance as the inventory wants it (target 'inventory')."""

    name: str
    unit: str
    model: str
    env: str  # empty: no env link (a container instance)
    secrets: str = ""

    @classmethod
    def from_param(cls, param: Mapping[str, Any], secrets: Mapping[str, str]) -> Desired:
        return cls(
            name=str(param["name"]),
            unit=str(param["unit"]),
            model=str(param["model"]),
            env=str(param["env"]),
            secrets=str(secrets.get(str(param["name"]), "")),
        )


@dataclass
class Plan:
    """What a switch of the host would do, and what it runs now."""

    pending: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    active: list[str] = field(default_factory=list)
    unconfirmed: list[str] = field(default_factory=list)
    diff: list[dict[str, str]] = field(default_factory=list)

    @property
    def drain(self) -> bool:
        """Whether serving instances would stop or restart: the host must be drained first."""
        return any(name in self.active for name in self.pending + self.retired)

    def as_dict(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "retired": self.retired,
            "active": self.active,
            "unconfirmed": self.unconfirmed,
            "drain": self.drain,
        }


def _link(path: str) -> str | None:
    return os.readlink(path) if os.path.islink(path) else None


def _symlink(target: str, path: str) -> None:
    """Point the link ``path`` at ``target`` atomically."""
    temp = f"{path}.vllm-fleet-new"
    if os.path.lexists(temp):
        os.unlink(temp)
    os.symlink(target, temp)
    os.replace(temp, path)


def _remove(path: str) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


class Host:
    """The instances of one host, under the given directories."""

    def __init__(
        self,
        unit_dir: str,
        instance_dir: str,
        config_dir: str,
        systemctl: Systemctl,
        check_mode: bool = False,
    ) -> None:
        self.unit_dir = unit_dir
        self.instance_dir = instance_dir
        self.config_dir = config_dir
        self.systemctl = systemctl
        self.check_mode = check_mode

    # Where things are.
    def unit_path(self, name: str) -> str:
        return os.path.join(self.unit_dir, f"vllm-{name}.service")

    def secrets_path(self, name: str) -> str:
        return os.path.join(self.config_dir, f"{name}.env")

    def link_path(self, name: str, link: str) -> str:
        return os.path.join(self.instance_dir, name, link)

    def record_paths(self, name: str, record: str) -> dict[str, str]:
        base = os.path.join(self.instance_dir, name, record)
        return {
            "model": f"{base}-model",
            "env": f"{base}-env",
            "service": f"{base}.service",
            "new": f"{base}.new",
        }

    # What is there.
    def installed(self) -> list[str]:
        """Instances whose unit this role wrote, sorted."""
        if not os.path.isdir(self.unit_dir):
            return []
        names = []
        for entry in sorted(os.listdir(self.unit_dir)):
            match = UNIT_NAME.match(entry)
            if match and UNIT_DESCRIPTION.search(read_text(os.path.join(self.unit_dir, entry)) or ""):
                names.append(match.group("name"))
        return names

    def is_active(self, name: str) -> bool:
        _rc, out = self.systemctl("is-active", f"vllm-{name}.service")
        return out.strip() in ("active", "activating", "reloading")

    def has_record(self, name: str, record: str) -> bool:
        return any(os.path.lexists(p) for p in self.record_paths(name, record).values())

    def _recorded(self, name: str, record: str) -> dict[str, str | None]:
        paths = self.record_paths(name, record)
        return {
            "model": _link(paths["model"]),
            "env": _link(paths["env"]),
            "service": read_text(paths["service"]),
        }

    # What would change.
    def _changes(self, wanted: Desired) -> list[dict[str, str]]:
        """Diffs of what differs between the instance on the host and ``wanted``."""
        found = []
        before_unit = read_text(self.unit_path(wanted.name))
        if before_unit != wanted.unit:
            found.append(
                {
                    "before_header": self.unit_path(wanted.name),
                    "after_header": self.unit_path(wanted.name),
                    "before": before_unit or "",
                    "after": wanted.unit,
                }
            )
        for link in LINKS:
            before = _link(self.link_path(wanted.name, link))
            after = getattr(wanted, link) or None
            if before != after:
                path = self.link_path(wanted.name, link)
                found.append(
                    {
                        "before_header": path,
                        "after_header": path,
                        "before": f"{before}\n",
                        "after": f"{after}\n",
                    }
                )
        if read_text(self.secrets_path(wanted.name)) != wanted.secrets:
            path = self.secrets_path(wanted.name)
            # The file holds the key: say that it changes, never what is in it.
            found.append(
                {
                    "before_header": path,
                    "after_header": path,
                    "before": "(secrets)\n",
                    "after": "(new secrets)\n",
                }
            )
        return found

    def _previous_as_desired(self, name: str) -> Desired | None:
        """The instance as its ``previous`` record has it, where its links or image differ from now.

        A container instance has no env link: its image is in its unit, so there the unit is compared.
        """
        previous = self._recorded(name, "previous")
        now = {link: _link(self.link_path(name, link)) for link in LINKS}
        unit = read_text(self.unit_path(name))
        links_differ = any(previous[link] and previous[link] != now[link] for link in LINKS)
        # A container on either side: its image (or the runtime itself) is only in the unit.
        container = not now["env"] or not previous["env"]
        unit_differs = container and previous["service"] is not None and previous["service"] != unit
        if not (links_differ or unit_differs):
            return None
        return Desired(
            name=name,
            unit=previous["service"] or unit or "",
            model=previous["model"] or now["model"] or "",
            env=previous["env"] or ("" if unit_differs else now["env"]) or "",
            secrets=read_text(self.secrets_path(name)) or "",
        )

    def targets(self, desired: Sequence[Desired], target: str) -> list[Desired]:
        """What each instance is switched to: the inventory's, or its previous record's."""
        if target == "inventory":
            return list(desired)
        found = (self._previous_as_desired(d.name) for d in desired)
        return [d for d in found if d is not None]

    def plan(self, desired: Sequence[Desired], target: str = "inventory") -> Plan:
        names = [d.name for d in desired]
        installed = self.installed()
        plan = Plan()
        plan.active = [name for name in installed if self.is_active(name)]
        plan.unconfirmed = [name for name in installed if self.has_record(name, "upgrade-from")]
        for wanted in self.targets(desired, target):
            changes = self._changes(wanted)
            plan.diff.extend(changes)
            # An instance that is not running is started by the switch, changed or not.
            if changes or (target == "inventory" and wanted.name not in plan.active):
                plan.pending.append(wanted.name)
        if target == "inventory":
            plan.retired = [name for name in installed if name not in names]
            for name in plan.retired:
                path = self.unit_path(name)
                plan.diff.append(
                    {
                        "before_header": path,
                        "after_header": path,
                        "before": read_text(path) or "",
                        "after": "",
                    }
                )
        return plan

    # Changes. Each returns the instances it (re)started or stopped.
    def _record(self, name: str) -> None:
        """Keep what ``name`` runs now as its upgrade-from record (unless one is there)."""
        if self.has_record(name, "upgrade-from"):
            return
        paths = self.record_paths(name, "upgrade-from")
        unit = read_text(self.unit_path(name))
        if unit is None:
            write_text_atomic(paths["new"], "", 0o644)
            return
        for link in LINKS:
            current = _link(self.link_path(name, link))
            if current:
                _symlink(current, paths[link])
        write_text_atomic(paths["service"], unit, 0o644)

    def _apply(self, wanted: Desired) -> bool:
        """Write unit, secrets and links of ``wanted``; whether the unit file changed."""
        for link in LINKS:
            target = getattr(wanted, link)
            if not target:
                _remove(self.link_path(wanted.name, link))
            elif _link(self.link_path(wanted.name, link)) != target:
                _symlink(target, self.link_path(wanted.name, link))
        if read_text(self.secrets_path(wanted.name)) != wanted.secrets:
            write_text_atomic(self.secrets_path(wanted.name), wanted.secrets, 0o600)
        if read_text(self.unit_path(wanted.name)) != wanted.unit:
            write_text_atomic(self.unit_path(wanted.name), wanted.unit, 0o644)
            return True
        return False

    def _retire(self, name: str) -> None:
        self.systemctl("disable", "--now", f"vllm-{name}.service")
        for path in (self.unit_path(name), self.secrets_path(name), os.path.join(self.instance_dir, name)):
            _remove(path)

    def switch(self, desired: Sequence[Desired], target: str = "inventory") -> Plan:
        """Record, write and restart what :meth:`plan` lists; retire instances no longer wanted."""
        plan = self.plan(desired, target)
        if self.check_mode or not (plan.pending or plan.retired):
            return plan
        wanted = {d.name: d for d in self.targets(desired, target)}
        for name in plan.pending:
            os.makedirs(os.path.join(self.instance_dir, name), mode=0o755, exist_ok=True)
            self._record(name)
            self._apply(wanted[name])
        for name in plan.retired:
            self._retire(name)
        self.systemctl("daemon-reload")
        for name in plan.pending:
            self.systemctl("enable", f"vllm-{name}.service")
            self.systemctl("restart", f"vllm-{name}.service")
        return plan

    def restore(self, names: Sequence[str]) -> list[str]:
        """Put back the upgrade-from record of ``names`` (those that have one), restart them."""
        restored = [name for name in names if self.has_record(name, "upgrade-from")]
        if self.check_mode or not restored:
            return restored
        for name in restored:
            paths = self.record_paths(name, "upgrade-from")
            if os.path.lexists(paths["new"]):
                self._retire(name)
                continue
            recorded = self._recorded(name, "upgrade-from")
            for link in LINKS:
                if recorded[link]:
                    _symlink(str(recorded[link]), self.link_path(name, link))
                else:  # it had none: a container instance
                    _remove(self.link_path(name, link))
            if recorded["service"] is not None:
                write_text_atomic(self.unit_path(name), recorded["service"], 0o644)
            for path in paths.values():
                _remove(path)
        self.systemctl("daemon-reload")
        for name in restored:
            if os.path.exists(self.unit_path(name)):
                self.systemctl("restart", f"vllm-{name}.service")
        return restored

    def commit(self, names: Sequence[str], target: str = "inventory") -> list[str]:
        """The gate passed: the upgrade-from record becomes the way back (or, after a rollback, goes)."""
        committed = [name for name in names if self.has_record(name, "upgrade-from")]
        if self.check_mode:
            return committed
        for name in committed:
            source = self.record_paths(name, "upgrade-from")
            if target == "inventory" and not os.path.lexists(source["new"]):
                kept = self.record_paths(name, "previous")
                for part in ("model", "env", "service"):
                    if os.path.lexists(source[part]):
                        os.replace(source[part], kept[part])
            for path in source.values():
                _remove(path)
        return committed
