"""The optional extras: without one, the builders and the GGUF import say which to install.

And Mitogen's strategy, which every run uses unless told not to (a dependency, not an extra).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vllm_fleet import extras, gguf_import, runner, smollm2


@pytest.fixture
def without_gguf(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As if the gguf package (one of the builders extra) were not installed."""
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> object:
        return None if name == "gguf" else real(name, package)

    monkeypatch.setattr(extras, "find_spec", find_spec)
    yield


def test_require_names_the_extra_and_the_command(without_gguf: None) -> None:
    extras.require(extras.BUILDERS, ("json",), "nothing")  # present: no error
    with pytest.raises(extras.MissingExtraError) as caught:
        extras.require(extras.BUILDERS, ("json", "gguf"), "importing x.gguf")
    message = str(caught.value)
    assert message.startswith("importing x.gguf needs gguf, not installed for ")
    assert f"{sys.executable} -m pip install 'vllm_fleet[builders]'" in message


def test_gguf_import_without_the_extra_says_what_model_sync_needs(
    without_gguf: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert gguf_import.main([str(gguf), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "vllm_fleet[builders]" in err
    assert "model_sync_gguf_python" in err
    assert not (tmp_path / "out").exists()


def test_a_built_import_is_reused_without_the_extra(
    without_gguf: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    real = gguf_import.import_gguf_into

    def fake(src: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(gguf_import, "import_gguf_into", fake)
    built = gguf_import.import_gguf(gguf, tmp_path / "out")
    monkeypatch.setattr(gguf_import, "import_gguf_into", real)
    assert gguf_import.import_gguf(gguf, tmp_path / "out") == built  # reused: nothing imported
    with pytest.raises(extras.MissingExtraError, match="vllm_fleet\\[builders\\]"):
        gguf_import.import_gguf(gguf, tmp_path / "other")


def test_the_cli_reports_a_missing_extra(
    without_gguf: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vllm_fleet import cli

    def build_smollm2(dest: Path, download_dir: Path) -> Path:
        extras.require(extras.BUILDERS, gguf_import.GGUF_IMPORT_NEEDS, "building SmolLM2")
        return dest

    monkeypatch.setattr(smollm2, "build_smollm2", build_smollm2)
    monkeypatch.setenv("VLLM_FLEET_CACHE", str(tmp_path))
    assert cli.main(["build"]) == cli.EXIT_SETUP
    assert "vllm-fleet: building SmolLM2 needs gguf" in capsys.readouterr().err


def test_the_command_line_imports_no_builder() -> None:
    code = (
        "import sys, vllm_fleet.cli, vllm_fleet.gguf_import; vllm_fleet.cli.build_parser(); "
        "print(sorted(m for m in ('torch', 'transformers', 'tokenizers', 'gguf', 'accelerate') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_mitogen_env_points_ansible_at_mitogens_strategy() -> None:
    env = runner.mitogen_env()
    assert env["ANSIBLE_STRATEGY"] == "mitogen_linear"
    assert (Path(env["ANSIBLE_STRATEGY_PLUGINS"]) / "mitogen_linear.py").is_file()
    assert runner.ansible_env(Path("/repo")).items() >= env.items()
    assert "ANSIBLE_STRATEGY" not in runner.ansible_env(Path("/repo"), mitogen=False)
