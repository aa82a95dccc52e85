"""The offline model builders: deterministic tiny Llama, atomic cached builds, cheap import."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.builders import models
from vllm_fleet import builds


def _tree(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_import_is_cheap() -> None:
    code = (
        "import sys, tests.builders.models, vllm_fleet.smollm2; "
        "print(sorted(m for m in ('torch', 'transformers', 'tokenizers') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=root)
    out = run.stdout
    assert out.strip() == "[]"


def test_tiny_corpus_is_fixed() -> None:
    first = "".join(models.tiny_corpus())
    assert first == "".join(models.tiny_corpus())
    assert "The capital of France is Paris." in first


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "broken"

    def build(out: Path) -> None:
        (out / "half-written").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        builds.atomic_build(dest, "test", build)
    assert not dest.exists()
    assert not dest.with_name(dest.name + ".tmp").exists()


def test_cached_build_is_reused_and_stale_one_replaced(tmp_path: Path) -> None:
    dest = tmp_path / "thing"
    calls: list[Path] = []

    def build(out: Path) -> None:
        calls.append(out)
        (out / "data.txt").write_text(f"build {len(calls)}\n")

    assert builds.atomic_build(dest, "test", build) == dest
    assert builds.atomic_build(dest, "test", build) == dest
    assert len(calls) == 1
    assert builds.is_built(dest, "test")
    assert not builds.is_built(dest, "other-kind")
    # A different source is a different build: rebuilt in place.
    builds.atomic_build(dest, "test", build, source={"v": 2})
    assert len(calls) == 2
    assert (dest / "data.txt").read_text() == "build 2\n"
    # A missing file makes the build incomplete.
    (dest / "data.txt").unlink()
    assert not builds.is_built(dest, "test", {"v": 2})
    assert _mode(dest) == 0o755
    assert _mode(dest / builds.MARKER) == 0o644


def test_foreign_destination_is_never_replaced(tmp_path: Path) -> None:
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "notes.txt").write_text("keep me")

    def build(out: Path) -> None:
        (out / "data.txt").write_text("model")

    with pytest.raises(FileExistsError):
        builds.atomic_build(dest, "test", build)
    assert (dest / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert builds.atomic_build(empty, "test", build) == empty
    assert (empty / "data.txt").read_text() == "model"


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    root = tmp_path_factory.mktemp("tiny")
    return (
        models.build_tiny_llama(root / "one" / "tiny-llama"),
        models.build_tiny_llama(root / "two" / "tiny-llama"),
    )


def test_tiny_llama_is_byte_identical(tiny_pair: tuple[Path, Path]) -> None:
    one, two = tiny_pair
    files = _tree(one)
    assert files == _tree(two)
    for name in ("config.json", "model.safetensors", "tokenizer.json", builds.MARKER):
        assert name in files
    marker = json.loads((one / builds.MARKER).read_text())
    assert marker["kind"] == "tiny-llama"
    assert marker["files"]["model.safetensors"] == files["model.safetensors"]


def test_tiny_llama_shape_and_modes(tiny_pair: tuple[Path, Path]) -> None:
    one, _other = tiny_pair
    config = json.loads((one / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_hidden_layers"] == 2
    assert config["hidden_size"] == 128
    assert config["num_attention_heads"] == 4
    assert config["num_key_value_heads"] == 2
    assert config["head_dim"] == 32
    assert config["vocab_size"] == 2048
    assert config["tie_word_embeddings"] is True
    assert config["dtype"] == "bfloat16"
    assert "quantization_config" not in config
    assert _mode(one) == 0o755
    for path in one.iterdir():
        assert _mode(path) == 0o644, path
    size = sum(path.stat().st_size for path in one.iterdir())
    assert 1_000_000 < size < 2_000_000


def test_unknown_tiny_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tiny-llama-wide"):
        models.build_tiny_llama(tmp_path / "x", "tiny-llama-huge")
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def wide_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    root = tmp_path_factory.mktemp("wide")
    return (
        models.build_tiny_llama(root / "one" / "tiny-llama-wide", "tiny-llama-wide"),
        models.build_tiny_llama(root / "two" / "tiny-llama-wide", "tiny-llama-wide"),
    )


def test_tiny_llama_wide_is_byte_identical_and_its_own_shape(
    wide_pair: tuple[Path, Path], tiny_pair: tuple[Path, Path]
) -> None:
    one, two = wide_pair
    files = _tree(one)
    assert files == _tree(two)
    marker = json.loads((one / builds.MARKER).read_text())
    assert marker["kind"] == "tiny-llama-wide"
    config = json.loads((one / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_hidden_layers"] == 3
    assert config["hidden_size"] == 256
    assert config["intermediate_size"] == 512
    assert config["num_attention_heads"] == 8
    assert config["num_key_value_heads"] == 2
    assert config["head_dim"] == 32
    assert config["vocab_size"] == 2048
    assert config["dtype"] == "bfloat16"
    for path in one.iterdir():
        assert _mode(path) == 0o644, path
    # A different model from tiny-llama (shape and seed), with the same tokenizer.
    tiny = _tree(tiny_pair[0])
    assert files["model.safetensors"] != tiny["model.safetensors"]
    assert files["tokenizer.json"] == tiny["tokenizer.json"]
    size = (one / "model.safetensors").stat().st_size
    assert 3_000_000 < size < 6_000_000
    # The cached build is reused, not rebuilt.
    before = (one / "model.safetensors").stat().st_mtime_ns
    assert models.build_tiny_llama(one, "tiny-llama-wide") == one
    assert (one / "model.safetensors").stat().st_mtime_ns == before


def test_tiny_llama_is_cached(tiny_pair: tuple[Path, Path]) -> None:
    one, _other = tiny_pair
    before = (one / "model.safetensors").stat().st_mtime_ns
    assert models.build_tiny_llama(one) == one
    assert (one / "model.safetensors").stat().st_mtime_ns == before


def test_tiny_tokenizer_round_trips_and_chats(tiny_pair: tuple[Path, Path]) -> None:
    from transformers import AutoConfig, AutoTokenizer

    one, _other = tiny_pair
    tokenizer = AutoTokenizer.from_pretrained(one)
    config = AutoConfig.from_pretrained(one)
    assert len(tokenizer) == config.vocab_size
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.eos_token_id == config.eos_token_id
    assert tokenizer.bos_token_id == config.bos_token_id
    assert tokenizer.pad_token_id == config.pad_token_id
    for text in (
        "The capital of France is Paris.",
        "  Spaces, tabs\tand new\nlines; ünïcödé and emoji \U0001f680 too!",
        "def serve(model, port=8000):\n    return 200",
    ):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
    # Trained on English words: common ones are whole tokens, not bytes.
    words = " the river will reach the ocean"
    assert len(tokenizer.encode(words, add_special_tokens=False)) == len(words.split())
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello!"},
    ]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3
    assert tokenizer.decode(ids) == prompt


def test_tiny_llama_answers_deterministically(tiny_pair: tuple[Path, Path]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    one, _other = tiny_pair
    tokenizer = AutoTokenizer.from_pretrained(one)
    model: Any = AutoModelForCausalLM.from_pretrained(one, dtype=torch.bfloat16)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert isinstance(prompt, str)
    input_ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
    answers = []
    for _attempt in range(2):
        out = model.generate(input_ids, max_new_tokens=16, do_sample=False)
        answers.append(out[0][input_ids.shape[1] :].tolist())
    assert answers[0] == answers[1]
    # Random weights, but not degenerate: greedy decoding does not repeat one token.
    assert len(set(answers[0])) >= 4
