"""gpu_facts: nvidia-smi outputs recorded on real hosts (tests/fixtures/nvidia-smi) turned into GPU facts."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args
from ansible_collections.vllm_fleet.serving.plugins.module_utils import nvidia_smi
from ansible_collections.vllm_fleet.serving.plugins.modules import gpu_facts

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nvidia-smi"

H100_CSV = "h100-80gb-hbm3_x1_590.48.01_query-gpu-all-fields.txt"
H100_SUMMARY = "h100-80gb-hbm3_x1_590.48.01_summary.txt"
H100_VERSION = "h100-80gb-hbm3_x1_590.48.01_version.txt"
H100X8_SUMMARY = "h100-80gb-hbm3_x8_535.161.08_summary.txt"
V100_SUMMARY = "tesla-v100-sxm2-16gb_x1_470.182.03_summary-gpu-table.txt"
TITAN_V_CSV = "titan-v_rtx-5880-ada_x2_570.86.15_query-gpu.txt"
NO_DRIVER = "failure_couldnt-communicate-with-driver.txt"
MISMATCH_570 = "failure_driver-library-mismatch_nvml-570.124.txt"
MISMATCH_580 = "failure_driver-library-mismatch_nvml-580.178.txt"
MISMATCH_OLD = "failure_driver-library-mismatch_no-nvml-line.txt"
NO_DEVICES = "failure_no-devices-were-found.txt"
INVALID_FIELD = "failure_invalid-field-compute-cap.txt"
PROC_580 = "proc-driver-nvidia-version_580.173.02.txt"
PROC_OPEN_565 = "proc-driver-nvidia-version_open-565.57.01.txt"

# The H100 of the capture, as the facts describe it (the capture tool masked the UUID).
H100_DEVICE = {
    "index": 0,
    "uuid": "GPU-00000000-0000-0000-0000-000000000000",
    "name": "NVIDIA H100 80GB HBM3",
    "memory_total_mib": 81559,
    "memory_used_mib": 0,
    "compute_capability": "9.0",
    "mig_mode": "disabled",
    "persistence_mode": True,
    "pci_bus_id": "00000000:00:09.0",
}
H100X8_BUS_IDS = [f"00000000:{bus}:00.0" for bus in ("8D", "91", "95", "99", "AB", "AF", "B3", "B7")]


@pytest.fixture(autouse=True, scope="module")
def _builtin_sys_intern_afterwards() -> Iterator[None]:
    """Put the builtin sys.intern back once these tests are done.

    Importing AnsibleModule makes Ansible replace sys.intern with a callable object, and a later
    `import torch` in the same session (tests/unit/test_models.py) refuses that object.
    """
    yield
    original = getattr(sys.intern, "unpatched_implementation", None)
    if original is not None:
        sys.intern = original


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def project(csv_text: str, fields: Sequence[str]) -> str:
    """What `--query-gpu=<fields> --format=csv,noheader,nounits` prints, cut out of a recorded CSV.

    No recording of exactly the module's field list exists, so its answer is projected from the
    recorded all-fields CSV (columns picked by header name, units dropped), as the exporter that
    recorded it does for its own fake nvidia-smi.
    """
    header, *rows = csv_text.splitlines()
    names = [cell.strip().split(" [")[0] for cell in header.split(",")]
    units = [cell.strip().split(" [")[1].rstrip("]") if " [" in cell else None for cell in header.split(",")]
    lines = []
    for row in rows:
        cells = [cell.strip() for cell in row.split(",")]
        picked = []
        for field in fields:
            at = names.index(field)
            value, unit = cells[at], units[at]
            picked.append(value[: -len(unit) - 1] if unit and value.endswith(" " + unit) else value)
        lines.append(", ".join(picked))
    return "\n".join(lines) + "\n"


Answer = tuple[int, str, str]


class FakeSmi:
    """Answers nvidia-smi command lines with recorded outputs and keeps every argv it saw.

    `answers` is keyed by the first argument ("--query-gpu", "--version", "" for plain nvidia-smi);
    a value is (rc, stdout, stderr) or a callable taking the argv.
    """

    def __init__(self, answers: dict[str, Answer | Callable[[list[str]], Answer]]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> Answer:
        self.calls.append(list(argv))
        key = argv[1].split("=", 1)[0] if len(argv) > 1 else ""
        answer = self.answers.get(key, (1, "", ""))
        return answer(argv) if callable(answer) else answer


def files(contents: dict[str, str]) -> Callable[[str], str | None]:
    """read_text for gather(): the given paths exist with these contents, nothing else does."""
    return contents.get


def working_h100() -> FakeSmi:
    """A healthy host: the recorded H100 answers query, --version and the plain table."""
    return FakeSmi(
        {
            "--query-gpu": (0, project(fixture(H100_CSV), nvidia_smi.QUERY_FIELDS), ""),
            "--version": (0, fixture(H100_VERSION), ""),
            "": (0, fixture(H100_SUMMARY), ""),
        }
    )


# -- the fixtures themselves ------------------------------------------------------------------


def test_every_fixture_says_where_it_came_from() -> None:
    readme = fixture("README.md")
    names = sorted(path.name for path in FIXTURES.glob("*.txt"))
    assert len(names) == 14
    assert [name for name in names if f"`{name}`" not in readme] == []


# -- --query-gpu CSV ----------------------------------------------------------------------------


def test_recorded_all_fields_csv_with_header_and_units() -> None:
    records = nvidia_smi.parse_query_csv(fixture(H100_CSV))
    assert len(records) == 1
    record = records[0]
    assert len(record) == 212
    assert record["driver_version"] == "590.48.01"
    assert record["memory.total"] == "81559 MiB"
    assert record["compute_cap"] == "9.0"
    # What nvidia-smi cannot give becomes None: bracketed values, bare N/A and empty cells.
    assert record["fan.speed"] is None  # [N/A]
    assert record["display_mode"] is None  # [Requested functionality has been deprecated]
    assert record["fabric.health.summary"] is None  # N/A
    assert record["platform.chassis_serial_number"] is None  # empty
    assert record["addressing_mode"] == "None"  # a real value, not a missing one
    assert nvidia_smi.device_from_record(record) == H100_DEVICE


def test_noheader_nounits_answer_for_the_module_field_list() -> None:
    answer = project(fixture(H100_CSV), nvidia_smi.QUERY_FIELDS)
    assert answer == (
        "0, GPU-00000000-0000-0000-0000-000000000000, NVIDIA H100 80GB HBM3, 81559, 0, 9.0, 590.48.01, "
        "Disabled, Enabled, 00000000:00:09.0\n"
    )
    records = nvidia_smi.parse_query_csv(answer)
    assert [nvidia_smi.device_from_record(record) for record in records] == [H100_DEVICE]


def test_titan_v_and_rtx_5880_csv_other_fields_other_order() -> None:
    records = nvidia_smi.parse_query_csv(fixture(TITAN_V_CSV))
    assert [(r["index"], r["name"], r["compute_cap"], r["driver_version"]) for r in records] == [
        ("0", "NVIDIA TITAN V", "7.0", "570.86.15"),
        ("1", "NVIDIA RTX 5880 Ada Generation", "8.9", "570.86.15"),
    ]
    devices = [nvidia_smi.device_from_record(record) for record in records]
    assert [(d["index"], d["compute_capability"]) for d in devices] == [(0, "7.0"), (1, "8.9")]
    assert all(d["memory_total_mib"] is None and d["uuid"] is None for d in devices)  # not queried
    # The Volta card is the one that cannot run bfloat16 (needs compute capability >= 8.0).
    assert [d["name"] for d in devices if float(d["compute_capability"]) < 8.0] == ["NVIDIA TITAN V"]


def test_csv_row_with_a_missing_value_is_refused() -> None:
    line = project(fixture(H100_CSV), nvidia_smi.QUERY_FIELDS).rsplit(",", 1)[0]
    with pytest.raises(ValueError, match="has 9 values for 10 fields"):
        nvidia_smi.parse_query_csv(line)


def test_empty_query_answer_has_no_records() -> None:
    assert nvidia_smi.parse_query_csv("") == []
    assert nvidia_smi.parse_query_csv("\n") == []


# -- the summary table of plain nvidia-smi, --version, kernel module -----------------------------


def test_summary_table_of_eight_h100() -> None:
    table = nvidia_smi.parse_summary_table(fixture(H100X8_SUMMARY))
    assert table["nvidia_smi_version"] == "535.161.08"
    assert table["driver_version"] == "535.161.08"
    assert table["cuda_version"] == "12.2"
    devices = table["devices"]
    assert len(devices) == 8
    assert [d["index"] for d in devices] == list(range(8))
    assert {d["name"] for d in devices} == {"NVIDIA H100 80GB HBM3"}
    assert {(d["memory_total_mib"], d["memory_used_mib"]) for d in devices} == {(81559, 0)}
    assert [d["pci_bus_id"] for d in devices] == H100X8_BUS_IDS
    assert {(d["persistence_mode"], d["mig_mode"]) for d in devices} == {(True, "disabled")}
    assert {(d["uuid"], d["compute_capability"]) for d in devices} == {(None, None)}  # not in the table


def test_summary_table_590_layout_agrees_with_the_csv_of_the_same_host() -> None:
    table = nvidia_smi.parse_summary_table(fixture(H100_SUMMARY))
    assert (table["nvidia_smi_version"], table["driver_version"], table["cuda_version"]) == (
        "590.48.01",
        "590.48.01",
        "13.1",
    )
    assert table["devices"] == [{**H100_DEVICE, "uuid": None, "compute_capability": None}]


def test_summary_table_of_an_old_driver_with_a_v100() -> None:
    table = nvidia_smi.parse_summary_table(fixture(V100_SUMMARY))
    assert (table["driver_version"], table["cuda_version"]) == ("470.182.03", "11.4")
    assert table["devices"] == [
        {
            "index": 0,
            "uuid": None,
            "name": "Tesla V100-SXM2...",  # drivers before 5xx cut long names in the table
            "memory_total_mib": 16160,
            "memory_used_mib": 0,
            "compute_capability": None,
            "mig_mode": None,  # N/A: Volta has no MIG
            "persistence_mode": False,
            "pci_bus_id": "00000000:00:04.0",
        }
    ]


def test_version_output() -> None:
    assert nvidia_smi.parse_version_output(fixture(H100_VERSION)) == {
        "nvidia_smi_version": "590.48.01",
        "nvml_version": "590.48",
        "driver_version": "590.48.01",
        "cuda_version": "13.1",
    }


@pytest.mark.parametrize(
    ("text", "version"),
    [
        (fixture(PROC_580), "580.173.02"),
        (fixture(PROC_OPEN_565), "565.57.01"),  # the open kernel module says "for x86_64" too
        ("580.173.02\n", "580.173.02"),  # /sys/module/nvidia/version holds the bare version
        (None, None),
        ("", None),
        (fixture(NO_DRIVER), None),
    ],
)
def test_kernel_module_version(text: str | None, version: str | None) -> None:
    assert nvidia_smi.parse_kernel_module_version(text) == version


def test_kernel_module_version_falls_back_to_sysfs() -> None:
    read = files({"/sys/module/nvidia/version": "580.173.02\n"})
    assert nvidia_smi.read_kernel_module_version(read) == "580.173.02"
    assert nvidia_smi.read_kernel_module_version(files({})) is None


# -- failures -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "status", "nvml"),
    [
        (NO_DRIVER, nvidia_smi.STATUS_NO_DRIVER, None),
        (MISMATCH_570, nvidia_smi.STATUS_DRIVER_MISMATCH, "570.124"),
        (MISMATCH_580, nvidia_smi.STATUS_DRIVER_MISMATCH, "580.178"),
        (MISMATCH_OLD, nvidia_smi.STATUS_DRIVER_MISMATCH, None),
        (NO_DEVICES, nvidia_smi.STATUS_NO_DEVICES, None),
    ],
)
def test_recorded_failures_are_classified(name: str, status: str, nvml: str | None) -> None:
    text = fixture(name)
    assert nvidia_smi.classify_failure(text) == {
        "status": status,
        "reason": text.splitlines()[0],
        "nvml_library_version": nvml,
    }


@pytest.mark.parametrize(
    "name", [H100_CSV, H100_SUMMARY, H100_VERSION, H100X8_SUMMARY, V100_SUMMARY, INVALID_FIELD]
)
def test_working_outputs_are_no_failure(name: str) -> None:
    assert nvidia_smi.classify_failure(fixture(name)) is None


def test_rejected_query_field_is_named() -> None:
    assert nvidia_smi.invalid_query_fields(fixture(INVALID_FIELD)) == ["compute_cap"]
    assert nvidia_smi.invalid_query_fields(fixture(H100_CSV)) == []


# -- gather(): the module's logic, with recorded answers ---------------------------------------


def test_gather_on_a_working_host() -> None:
    smi = working_h100()
    facts = nvidia_smi.gather("/usr/bin/nvidia-smi", smi, files({}))
    assert facts == {
        "status": "ok",
        "reason": None,
        "count": 1,
        "driver_version": "590.48.01",
        "cuda_version": "13.1",
        "kernel_module_version": None,
        "nvml_library_version": None,
        "source": "query-gpu",
        "devices": [H100_DEVICE],
    }
    assert smi.calls[0] == [
        "/usr/bin/nvidia-smi",
        "--query-gpu=index,uuid,name,memory.total,memory.used,compute_cap,driver_version,"
        "mig.mode.current,persistence_mode,pci.bus_id",
        "--format=csv,noheader,nounits",
    ]
    assert smi.calls[1:] == [["/usr/bin/nvidia-smi", "--version"]]


def test_gather_without_nvidia_smi_is_not_an_error() -> None:
    smi = FakeSmi({})
    facts = nvidia_smi.gather(None, smi, files({}))
    assert (facts["status"], facts["count"], facts["devices"]) == ("absent", 0, [])
    assert facts["reason"] == "nvidia-smi not found: no NVIDIA driver (or its utilities) installed"
    assert smi.calls == []


def test_gather_without_a_loaded_driver() -> None:
    answer = (9, fixture(NO_DRIVER), "")
    facts = nvidia_smi.gather("nvidia-smi", FakeSmi({"--query-gpu": answer, "": answer}), files({}))
    assert (facts["status"], facts["count"], facts["devices"]) == ("no_driver", 0, [])
    assert facts["reason"] == fixture(NO_DRIVER).strip()


def test_gather_reports_a_driver_library_mismatch_distinctly() -> None:
    # Both outputs come from the same half-upgraded host (see the fixtures README).
    smi = FakeSmi({"--query-gpu": (18, fixture(MISMATCH_580), "")})
    facts = nvidia_smi.gather("nvidia-smi", smi, files({"/proc/driver/nvidia/version": fixture(PROC_580)}))
    assert facts["status"] == "driver_mismatch"
    assert (facts["count"], facts["devices"], facts["driver_version"]) == (0, [], None)
    assert facts["nvml_library_version"] == "580.178"
    assert facts["kernel_module_version"] == "580.173.02"
    assert facts["reason"] == (
        "Failed to initialize NVML: Driver/library version mismatch "
        "(user-space NVML library 580.178, loaded kernel module 580.173.02); "
        "reboot, or unload and reload the nvidia kernel modules, so that both match"
    )


def test_gather_when_no_devices_are_found() -> None:
    facts = nvidia_smi.gather("nvidia-smi", FakeSmi({"--query-gpu": (6, fixture(NO_DEVICES), "")}), files({}))
    assert (facts["status"], facts["count"], facts["reason"]) == ("no_devices", 0, "No devices were found")


def test_gather_drops_a_field_an_old_driver_rejects() -> None:
    # The refusal is the real message of a pre-510 driver; the rows are the recorded H100 ones
    # without compute_cap, as a driver that knows every other field answers them.
    def query(argv: list[str]) -> Answer:
        fields = argv[1].split("=", 1)[1].split(",")
        if "compute_cap" in fields:
            return 2, fixture(INVALID_FIELD), ""
        return 0, project(fixture(H100_CSV), fields), ""

    smi = FakeSmi({"--query-gpu": query, "--version": (0, fixture(H100_VERSION), "")})
    facts = nvidia_smi.gather("nvidia-smi", smi, files({}))
    assert (facts["status"], facts["count"]) == ("ok", 1)
    assert facts["devices"] == [{**H100_DEVICE, "compute_capability": None}]
    assert "compute_cap" in smi.calls[0][1]
    assert "compute_cap" not in smi.calls[1][1]


def test_gather_reads_cuda_from_the_table_when_version_option_is_missing() -> None:
    smi = working_h100()
    smi.answers["--version"] = (1, "", "")
    facts = nvidia_smi.gather("nvidia-smi", smi, files({}))
    assert (facts["driver_version"], facts["cuda_version"]) == ("590.48.01", "13.1")
    assert smi.calls[-1] == ["nvidia-smi"]


def test_gather_falls_back_to_the_summary_table() -> None:
    smi = FakeSmi({"--query-gpu": (1, "", ""), "": (0, fixture(H100X8_SUMMARY), "")})
    facts = nvidia_smi.gather("nvidia-smi", smi, files({}))
    assert (facts["status"], facts["source"], facts["count"]) == ("ok", "summary", 8)
    assert (facts["driver_version"], facts["cuda_version"]) == ("535.161.08", "12.2")
    assert [d["pci_bus_id"] for d in facts["devices"]] == H100X8_BUS_IDS
    assert "devices read from the summary table" in facts["reason"]


def test_gather_reports_an_unknown_failure_as_error() -> None:
    facts = nvidia_smi.gather("nvidia-smi", FakeSmi({"--query-gpu": (1, "", "Unknown Error\n")}), files({}))
    assert (facts["status"], facts["count"]) == ("error", 0)
    assert facts["reason"] == "nvidia-smi --query-gpu failed (rc=1): Unknown Error"


# -- the module itself, through AnsibleModule ----------------------------------------------------


def run_module(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    smi: FakeSmi,
    found: str | None,
    args: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """main() with a fake run_command and PATH lookup; returns what the module printed."""
    monkeypatch.setattr(AnsibleModule, "get_bin_path", lambda self, name, *a, **kw: found)
    monkeypatch.setattr(AnsibleModule, "run_command", lambda self, argv, **kwargs: smi(argv))
    monkeypatch.setattr(gpu_facts, "_read_text", lambda path: None)
    with patch_module_args(args or {}), pytest.raises(SystemExit) as exited:
        gpu_facts.main()
    assert exited.value.code == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def test_module_without_nvidia_smi_succeeds_with_count_zero(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_module(monkeypatch, capsys, FakeSmi({}), found=None)
    assert result.get("failed") is not True
    assert result["changed"] is False
    gpus = result["ansible_facts"]["vllm_fleet_gpus"]
    assert (gpus["status"], gpus["count"], gpus["devices"]) == ("absent", 0, [])
    assert gpus["reason"]


def test_module_on_a_working_host_in_check_mode(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    smi = working_h100()
    result = run_module(
        monkeypatch, capsys, smi, found="/usr/bin/nvidia-smi", args={"_ansible_check_mode": True}
    )
    assert result["changed"] is False
    gpus = result["ansible_facts"]["vllm_fleet_gpus"]
    assert sorted(gpus) == [
        "count",
        "cuda_version",
        "devices",
        "driver_version",
        "kernel_module_version",
        "nvml_library_version",
        "reason",
        "source",
        "status",
    ]
    assert (gpus["status"], gpus["count"], gpus["driver_version"], gpus["cuda_version"]) == (
        "ok",
        1,
        "590.48.01",
        "13.1",
    )
    assert gpus["devices"] == [H100_DEVICE]
    assert smi.calls[0][0] == "/usr/bin/nvidia-smi"


def test_module_with_a_mismatched_driver_does_not_fail(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    smi = FakeSmi({"--query-gpu": (18, fixture(MISMATCH_570), "")})
    result = run_module(monkeypatch, capsys, smi, found="/usr/bin/nvidia-smi")
    assert result.get("failed") is not True
    gpus = result["ansible_facts"]["vllm_fleet_gpus"]
    assert (gpus["status"], gpus["count"], gpus["nvml_library_version"]) == ("driver_mismatch", 0, "570.124")


def test_module_takes_an_absolute_nvidia_smi_path(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nvidia-smi"
    result = run_module(monkeypatch, capsys, FakeSmi({}), found="unused", args={"nvidia_smi": str(missing)})
    assert result["ansible_facts"]["vllm_fleet_gpus"]["status"] == "absent"
