"""Revisions derived from a built model: a second good one and a broken one (for upgrade gates)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.builders import models
from vllm_fleet import builds


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return models.build_tiny_llama(tmp_path_factory.mktemp("base") / "tiny-llama")


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_second_revision_has_the_same_files_and_a_note(base: Path, tmp_path: Path) -> None:
    second = models.build_revision(base, tmp_path / "second", "second")
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (second / name).read_bytes() == (base / name).read_bytes()
    note = json.loads((second / "vllm-fleet-revision.json").read_text())
    assert note == {"derived_from": "tiny-llama", "revision": "second"}
    assert builds.is_built(second, "revision-second", {"base": "tiny-llama", "files": _marker_files(base)})


def _marker_files(path: Path) -> dict:
    return json.loads((path / builds.MARKER).read_text())["files"]


def test_broken_revision_negates_only_the_final_norm(base: Path, tmp_path: Path) -> None:
    broken = models.build_revision(base, tmp_path / "broken", "broken")
    good, bad = _weights(base), _weights(broken)
    assert good.keys() == bad.keys()
    for name, tensor in good.items():
        expected = -tensor if name == "model.norm.weight" else tensor
        assert bool((bad[name] == expected).all()), name
    assert (broken / "config.json").read_bytes() == (base / "config.json").read_bytes()
    # Deterministic: a second build elsewhere is byte-identical.
    again = models.build_revision(base, tmp_path / "again", "broken")
    assert (again / "model.safetensors").read_bytes() == (broken / "model.safetensors").read_bytes()


def test_bad_requests_are_refused(base: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown revision kind 'nope'; known: second, broken"):
        models.build_revision(base, tmp_path / "x", "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError, match="not a finished vllm-fleet model build"):
        models.build_revision(tmp_path / "plain", tmp_path / "y", "second")
