"""What nvidia-smi says, turned into GPU facts: the single source of GPU truth for all roles.

Pure Python without Ansible imports, so the `gpu_facts` module, other plugins and the unit tests
share it. Every format handled here comes from real recorded outputs (tests/fixtures/nvidia-smi):

- `--query-gpu=... --format=csv[,noheader][,nounits]`, the main source. With a header the columns
  are found by name and units such as `[MiB]` are ignored; without one the caller names the fields
  it asked for. Values nvidia-smi cannot give (`[N/A]`, `[Not Supported]`, `[Unknown Error]`,
  `[Requested functionality has been deprecated]`, `N/A`, empty) become None.
- The summary table of plain `nvidia-smi`: driver and CUDA version from its header, and a fallback
  device list (no UUID, no compute capability, and old drivers cut long names with "...").
- `nvidia-smi --version` (recent drivers): driver, NVML and CUDA version.
- The failure messages: no driver loaded, driver/library version mismatch, no devices, and a query
  field the driver does not know (`compute_cap` needs driver 510 or newer).
- `/proc/driver/nvidia/version` and `/sys/module/nvidia/version`: the loaded kernel module.

`gather` ties these together with injected callables for running commands and reading files, so
the module stays a thin wrapper and the whole decision logic is testable without a GPU.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    # run(argv) -> (rc, stdout, stderr); read_text(path) -> content, or None when unreadable.
    RunCommand = Callable[[list[str]], tuple[int, str, str]]
    ReadText = Callable[[str], "str | None"]

# The fields the module asks for, in this order (also the column order of a noheader answer).
QUERY_FIELDS: tuple[str, ...] = (
    "index",
    "uuid",
    "name",
    "memory.total",
    "memory.used",
    "compute_cap",
    "driver_version",
    "mig.mode.current",
    "persistence_mode",
    "pci.bus_id",
)
# Without these the facts mean nothing; any other field an older driver rejects is dropped and
# the query retried (e.g. 'Field "compute_cap" is not a valid field to query.' before 510).
REQUIRED_FIELDS = frozenset({"index", "name", "memory.total"})
# nvidia-smi accepts both names for these (see `nvidia-smi --help-query-gpu`).
FIELD_ALIASES = {"gpu_name": "name", "gpu_uuid": "uuid", "gpu_bus_id": "pci.bus_id", "gpu_serial": "serial"}
KNOWN_FIELDS = frozenset(QUERY_FIELDS) | frozenset(FIELD_ALIASES) | {"timestamp", "count", "serial"}

# The loaded kernel module's version, first file that is readable wins.
KERNEL_VERSION_FILES: tuple[str, ...] = ("/proc/driver/nvidia/version", "/sys/module/nvidia/version")

STATUS_OK = "ok"
STATUS_ABSENT = "absent"  # no nvidia-smi on the host
STATUS_NO_DRIVER = "no_driver"  # nvidia-smi present, kernel driver not loaded or not answering
STATUS_NO_DEVICES = "no_devices"  # driver answers, but lists no GPU
STATUS_DRIVER_MISMATCH = "driver_mismatch"  # user-space library and loaded kernel module differ
STATUS_ERROR = "error"  # any other failure of nvidia-smi
STATUSES = (
    STATUS_OK,
    STATUS_ABSENT,
    STATUS_NO_DRIVER,
    STATUS_NO_DEVICES,
    STATUS_DRIVER_MISMATCH,
    STATUS_ERROR,
)

_HEADER_CELL = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*(?: \[[^\]]+\])?$")
_LEADING_INT = re.compile(r"^\s*(\d+)")
_COMPUTE_CAPABILITY = re.compile(r"^\d+\.\d+$")
_SMI_HEADER = re.compile(
    r"NVIDIA-SMI\s+(?P<smi>\S+)\s+Driver Version:\s+(?P<driver>\S+)(?:\s+CUDA Version:\s+(?P<cuda>\S+))?"
)
_GPU_ROW = re.compile(
    r"^\|\s*(?P<index>\d+)\s+(?P<name>.*?)\s+(?P<persistence>On|Off|WDDM|TCC|N/A)\s*\|"
    r"\s*(?P<bus>[0-9A-Fa-f]+:[0-9A-Fa-f]+:[0-9A-Fa-f]+\.[0-9A-Fa-f]+)\s"
)
_TABLE_MEMORY = re.compile(r"(?P<used>\d+)MiB\s*/\s*(?P<total>\d+)MiB")
_LAST_CELL = re.compile(r"\|\s*(?P<value>[^|]*?)\s*\|\s*$")
_VERSION_LINE = re.compile(
    r"^\s*(?P<key>NVIDIA-SMI version|NVML version|DRIVER version|CUDA Version)\s*:\s*(?P<value>\S+)",
    re.IGNORECASE | re.MULTILINE,
)
_VERSION_KEYS = {
    "nvidia-smi version": "nvidia_smi_version",
    "nvml version": "nvml_version",
    "driver version": "driver_version",
    "cuda version": "cuda_version",
}
_KERNEL_MODULE = re.compile(r"Kernel Module(?:\s+for\s+\S+)?\s+(?P<version>\d+(?:\.\d+)+)")
_BARE_VERSION = re.compile(r"^\d+(?:\.\d+)+$")
_MISMATCH = re.compile(r"^.*Driver/library version mismatch.*$", re.IGNORECASE | re.MULTILINE)
_NVML_LIBRARY = re.compile(r"NVML library version:\s*(?P<version>\S+)")
# Real outputs carry the ASCII apostrophe and, copied through some tools, U+2018 instead.
_NO_DRIVER = re.compile(r"^.*couldn.t communicate with the NVIDIA driver.*$", re.IGNORECASE | re.MULTILINE)
_NO_DEVICES = re.compile(r"^.*No devices were found.*$", re.IGNORECASE | re.MULTILINE)
_INVALID_FIELD = re.compile(r'Field "(?P<field>[^"]+)" is not a valid field to query')


def query_command(nvidia_smi: str, fields: Sequence[str] = QUERY_FIELDS) -> list[str]:
    """The argument vector of the device query (CSV, no header, no units)."""
    return [nvidia_smi, "--query-gpu=" + ",".join(fields), "--format=csv,noheader,nounits"]


def clean_value(raw: str | None) -> str | None:
    """A CSV value, or None where nvidia-smi had nothing to give ([N/A], [Not Supported], ...)."""
    if raw is None:
        return None
    value = raw.strip()
    if not value or value == "N/A" or (value.startswith("[") and value.endswith("]")):
        return None
    return value


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.split(",")]


def _header_field(cell: str) -> str:
    """`memory.total [MiB]` -> `memory.total`; aliases to their canonical name."""
    name = cell.split(" [", 1)[0].strip()
    return FIELD_ALIASES.get(name, name)


def looks_like_header(cells: Sequence[str]) -> bool:
    """Whether a CSV line is nvidia-smi's header (field names, optionally with units)."""
    return all(_HEADER_CELL.match(cell) for cell in cells) and any(
        _header_field(cell) in KNOWN_FIELDS for cell in cells
    )


def parse_query_csv(text: str, fields: Sequence[str] = QUERY_FIELDS) -> list[dict[str, str | None]]:
    """One record per GPU from `--query-gpu` CSV output, keyed by (canonical) field name.

    A header line, when present, names the columns; otherwise `fields` does. Units stay on the
    values ("81559 MiB"); `device_from_record` reads the numbers. Raises ValueError when a line
    does not have one value per column.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    columns = [FIELD_ALIASES.get(field, field) for field in fields]
    first = _cells(lines[0])
    if looks_like_header(first):
        columns = [_header_field(cell) for cell in first]
        lines = lines[1:]
    records: list[dict[str, str | None]] = []
    for number, line in enumerate(lines, start=1):
        cells = _cells(line)
        surplus = len(cells) - len(columns)
        if surplus > 0 and "name" in columns:  # nvidia-smi does not quote a name with a comma
            at = columns.index("name")
            cells[at : at + surplus + 1] = [", ".join(cells[at : at + surplus + 1])]
        if len(cells) != len(columns):
            raise ValueError(
                f"nvidia-smi CSV row {number} has {len(cells)} values for {len(columns)} fields: {line!r}"
            )
        # Lengths are equal here; zip(strict=) would need Python 3.10 on the managed hosts.
        records.append({column: clean_value(cell) for column, cell in zip(columns, cells)})  # noqa: B905
    return records


def _int(value: str | None) -> int | None:
    match = _LEADING_INT.match(value or "")
    return int(match.group(1)) if match else None


def _compute_capability(value: str | None) -> str | None:
    return value if value and _COMPUTE_CAPABILITY.match(value) else None


def _mode(value: str | None) -> str | None:
    """MIG mode as "enabled"/"disabled"; None where the GPU has no MIG (pre-Ampere: N/A)."""
    lowered = (value or "").lower()
    return lowered if lowered in ("enabled", "disabled") else None


def _flag(value: str | None) -> bool | None:
    lowered = (value or "").lower()
    if lowered in ("enabled", "on"):
        return True
    if lowered in ("disabled", "off"):
        return False
    return None


def device_from_record(record: Mapping[str, str | None]) -> dict[str, Any]:
    """The facts of one GPU from one `parse_query_csv` record."""
    return {
        "index": _int(record.get("index")),
        "uuid": record.get("uuid"),
        "name": record.get("name"),
        "memory_total_mib": _int(record.get("memory.total")),
        "memory_used_mib": _int(record.get("memory.used")),
        "compute_capability": _compute_capability(record.get("compute_cap")),
        "mig_mode": _mode(record.get("mig.mode.current")),
        "persistence_mode": _flag(record.get("persistence_mode")),
        "pci_bus_id": record.get("pci.bus_id"),
    }


def parse_summary_table(text: str) -> dict[str, Any]:
    """Versions from the header of plain `nvidia-smi`, and the devices its table lists.

    The table has neither UUID nor compute capability (both None), and drivers before the 5xx
    series cut long names ("Tesla V100-SXM2..."). MIG mode is read only where the table has the
    "MIG M." column.
    """
    header = _SMI_HEADER.search(text)
    lines = text.splitlines()
    has_mig_column = "MIG M." in text
    devices: list[dict[str, Any]] = []
    for number, line in enumerate(lines):
        row = _GPU_ROW.match(line)
        if not row:
            continue
        following = lines[number + 1] if number + 1 < len(lines) else ""
        memory = _TABLE_MEMORY.search(following)
        mig = None
        if has_mig_column and number + 2 < len(lines):
            last = _LAST_CELL.search(lines[number + 2])
            mig = _mode(last.group("value")) if last else None
        devices.append(
            {
                "index": int(row.group("index")),
                "uuid": None,
                "name": row.group("name").strip(),
                "memory_total_mib": int(memory.group("total")) if memory else None,
                "memory_used_mib": int(memory.group("used")) if memory else None,
                "compute_capability": None,
                "mig_mode": mig,
                "persistence_mode": _flag(row.group("persistence")),
                "pci_bus_id": row.group("bus"),
            }
        )
    return {
        "nvidia_smi_version": header.group("smi") if header else None,
        "driver_version": clean_value(header.group("driver")) if header else None,
        "cuda_version": clean_value(header.group("cuda")) if header else None,
        "devices": devices,
    }


def parse_version_output(text: str) -> dict[str, str | None]:
    """`nvidia-smi --version`: nvidia_smi_version, nvml_version, driver_version, cuda_version."""
    versions: dict[str, str | None] = dict.fromkeys(_VERSION_KEYS.values())
    for match in _VERSION_LINE.finditer(text):
        versions[_VERSION_KEYS[match.group("key").lower()]] = clean_value(match.group("value"))
    return versions


def parse_kernel_module_version(text: str | None) -> str | None:
    """The version in /proc/driver/nvidia/version (proprietary or open module) or /sys/module/nvidia/version.

    Returns None for anything else (no module loaded, unreadable, unknown format).
    """
    if not text:
        return None
    match = _KERNEL_MODULE.search(text)
    if match:
        return match.group("version")
    stripped = text.strip()
    return stripped if _BARE_VERSION.match(stripped) else None


def read_kernel_module_version(
    read_text: ReadText, files: Sequence[str] = KERNEL_VERSION_FILES
) -> str | None:
    """The loaded kernel module's version from the first readable file, else None."""
    for path in files:
        version = parse_kernel_module_version(read_text(path))
        if version:
            return version
    return None


def invalid_query_fields(text: str) -> list[str]:
    """Fields nvidia-smi refused: 'Field "compute_cap" is not a valid field to query.'"""
    return [match.group("field") for match in _INVALID_FIELD.finditer(text)]


def classify_failure(text: str) -> dict[str, str | None] | None:
    """A known failure of nvidia-smi: {status, reason, nvml_library_version}, else None."""
    mismatch = _MISMATCH.search(text)
    if mismatch:
        library = _NVML_LIBRARY.search(text)
        return {
            "status": STATUS_DRIVER_MISMATCH,
            "reason": mismatch.group(0).strip(),
            "nvml_library_version": library.group("version") if library else None,
        }
    for pattern, status in ((_NO_DRIVER, STATUS_NO_DRIVER), (_NO_DEVICES, STATUS_NO_DEVICES)):
        found = pattern.search(text)
        if found:
            return {"status": status, "reason": found.group(0).strip(), "nvml_library_version": None}
    return None


def build_facts(
    status: str,
    reason: str | None,
    devices: Sequence[Mapping[str, Any]] = (),
    *,
    driver_version: str | None = None,
    cuda_version: str | None = None,
    kernel_module_version: str | None = None,
    nvml_library_version: str | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """The `vllm_fleet_gpus` fact: same keys whatever happened, count 0 unless status is ok."""
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}; allowed: {STATUSES}")
    return {
        "status": status,
        "reason": reason,
        "count": len(devices),
        "driver_version": driver_version,
        "cuda_version": cuda_version,
        "kernel_module_version": kernel_module_version,
        "nvml_library_version": nvml_library_version,
        "source": source,
        "devices": [dict(device) for device in devices],
    }


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no output")


def _failure_facts(failure: Mapping[str, str | None], kernel: str | None) -> dict[str, Any]:
    status = failure["status"] or STATUS_ERROR
    reason = failure["reason"] or ""
    library = failure.get("nvml_library_version")
    if status == STATUS_DRIVER_MISMATCH:
        found = [f"user-space NVML library {library}"] if library else []
        found += [f"loaded kernel module {kernel}"] if kernel else []
        if found:
            reason += " (" + ", ".join(found) + ")"
        reason += "; reboot, or unload and reload the nvidia kernel modules, so that both match"
    return build_facts(status, reason, kernel_module_version=kernel, nvml_library_version=library)


def probe_versions(nvidia_smi: str, run: RunCommand) -> dict[str, str | None]:
    """Driver and CUDA version: `nvidia-smi --version`, else the header of plain `nvidia-smi`."""
    rc, out, _err = run([nvidia_smi, "--version"])
    if rc == 0:
        versions = parse_version_output(out)
        if versions["cuda_version"]:
            return versions
    rc, out, _err = run([nvidia_smi])
    if rc == 0:
        table = parse_summary_table(out)
        return {key: table[key] for key in ("nvidia_smi_version", "driver_version", "cuda_version")}
    return {}


def _from_summary(nvidia_smi: str, run: RunCommand, kernel: str | None, problem: str) -> dict[str, Any]:
    """Fallback when the device query fails for an unknown reason: the summary table."""
    rc, out, err = run([nvidia_smi])
    failure = classify_failure(f"{out}\n{err}")
    if failure is not None:
        return _failure_facts(failure, kernel)
    table = parse_summary_table(out) if rc == 0 else {"devices": []}
    if not table["devices"]:
        return build_facts(STATUS_ERROR, problem, kernel_module_version=kernel)
    return build_facts(
        STATUS_OK,
        f"{problem}; devices read from the summary table (no UUID or compute capability)",
        table["devices"],
        driver_version=table["driver_version"],
        cuda_version=table["cuda_version"],
        kernel_module_version=kernel,
        source="summary",
    )


def gather(
    nvidia_smi: str | None,
    run: RunCommand,
    read_text: ReadText,
    kernel_version_files: Sequence[str] = KERNEL_VERSION_FILES,
) -> dict[str, Any]:
    """The `vllm_fleet_gpus` fact of a host. Never raises for a host without a (working) GPU.

    `nvidia_smi` is the resolved path of the binary, or None when the host has none.
    """
    kernel = read_kernel_module_version(read_text, kernel_version_files)
    if not nvidia_smi:
        return build_facts(
            STATUS_ABSENT,
            "nvidia-smi not found: no NVIDIA driver (or its utilities) installed",
            kernel_module_version=kernel,
        )
    fields = list(QUERY_FIELDS)
    rc, out, err = run(query_command(nvidia_smi, fields))
    for _attempt in QUERY_FIELDS:
        rejected = [field for field in invalid_query_fields(f"{out}\n{err}") if field in fields]
        if rc == 0 or not rejected or REQUIRED_FIELDS.intersection(rejected):
            break
        fields = [field for field in fields if field not in rejected]
        rc, out, err = run(query_command(nvidia_smi, fields))

    failure = classify_failure(f"{out}\n{err}")
    if failure is not None:
        return _failure_facts(failure, kernel)
    if rc != 0:
        return _from_summary(
            nvidia_smi, run, kernel, f"nvidia-smi --query-gpu failed (rc={rc}): {_first_line(out + err)}"
        )
    try:
        records = parse_query_csv(out, fields)
    except ValueError as exc:
        return build_facts(STATUS_ERROR, str(exc), kernel_module_version=kernel)

    versions = probe_versions(nvidia_smi, run)
    driver = next((r["driver_version"] for r in records if r.get("driver_version")), None)
    common: dict[str, Any] = {
        "driver_version": driver or versions.get("driver_version"),
        "cuda_version": versions.get("cuda_version"),
        "kernel_module_version": kernel,
    }
    if not records:
        return build_facts(STATUS_NO_DEVICES, "nvidia-smi listed no GPUs", **common)
    devices = [device_from_record(record) for record in records]
    return build_facts(STATUS_OK, None, devices, source="query-gpu", **common)
