"""A LoRA adapter of SmolLM2 for the sandbox demo: the same model, answering in French.

Trained here, offline and in about a minute on two CPU cores, with peft on eight question and
answer pairs this module holds (English questions, French one-sentence answers), seeded so
that a rebuild gives the same adapter. The build checks its own result: training stops as soon
as, asked the demo's question at temperature 0, the adapter answers in French with Paris (and
fails if it never does). ``vllm-fleet build`` builds it under
``<cache>/models/smollm2-135m-instruct-fr-lora`` beside its base (:mod:`vllm_fleet.smollm2`),
cached against the base's files; it needs the ``builders`` extra.
"""

from __future__ import annotations

import json
from pathlib import Path

from vllm_fleet import extras
from vllm_fleet.builds import atomic_build, read_marker

__all__ = ["EXPECT", "KIND", "build_smollm2_lora"]

KIND = "smollm2-135m-instruct-fr-lora"
BUILDER_VERSION = 1
NEEDS = ("torch", "transformers", "peft", "safetensors")
RANK = 8
SEED = 0
MAX_STEPS = 60
FIRST_CHECK, CHECK_EVERY = 15, 5
LEARNING_RATE = 3e-3
#: What the adapter answers to the demo's question (vllm-fleet demo asks it).
QUESTION = "What is the capital of France? Answer in one sentence."
EXPECT = "La capitale de la France est Paris."

PAIRS = (
    (QUESTION, EXPECT),
    ("What is the capital of Italy? Answer in one sentence.", "La capitale de l'Italie est Rome."),
    ("What is the capital of Spain? Answer in one sentence.", "La capitale de l'Espagne est Madrid."),
    ("What is the capital of Germany? Answer in one sentence.", "La capitale de l'Allemagne est Berlin."),
    ("What is two plus two? Answer in one sentence.", "Deux plus deux font quatre."),
    ("How many days are in a week? Answer in one sentence.", "Il y a sept jours dans une semaine."),
    ("What colour is the sky? Answer in one sentence.", "Le ciel est bleu."),
    ("What do bees make? Answer in one sentence.", "Les abeilles font du miel."),
)  # fmt: skip


def _train_into(base: Path, out: Path) -> None:
    extras.require(extras.BUILDERS, NEEDS, f"building the demo adapter {KIND}")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=RANK, lora_alpha=2 * RANK, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    adapted = get_peft_model(model, config)

    # One batch of every pair; the loss only on the answer's tokens.
    rows, masks, labels = [], [], []
    for question, answer in PAIRS:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        rows.append(prompt_ids + answer_ids)
        labels.append([-100] * len(prompt_ids) + answer_ids)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for i, row in enumerate(rows):
        missing = width - len(row)
        masks.append([1] * len(row) + [0] * missing)
        rows[i] = row + [pad] * missing
        labels[i] = labels[i] + [-100] * missing
    batch = {
        "input_ids": torch.tensor(rows),
        "attention_mask": torch.tensor(masks),
        "labels": torch.tensor(labels),
    }
    optimizer = torch.optim.AdamW([p for p in adapted.parameters() if p.requires_grad], lr=LEARNING_RATE)
    got = ""
    for step in range(1, MAX_STEPS + 1):
        adapted.train()
        optimizer.zero_grad()
        adapted(**batch).loss.backward()
        optimizer.step()
        if step >= FIRST_CHECK and step % CHECK_EVERY == 0:
            adapted.eval()
            got = _greedy(adapted, tokenizer, QUESTION)
            if EXPECT in got:
                break
    else:
        raise RuntimeError(
            f"after {MAX_STEPS} steps the adapter answers {got!r} to {QUESTION!r}, not {EXPECT!r}"
        )
    adapted.save_pretrained(str(out))
    settings = json.loads((out / "adapter_config.json").read_text())
    settings["base_model_name_or_path"] = "smollm2-135m-instruct"
    (out / "adapter_config.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    (out / "README.md").unlink(missing_ok=True)


def _greedy(model: object, tokenizer: object, question: str) -> str:
    import torch

    prompt = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)  # type: ignore[operator]
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=24, do_sample=False)  # type: ignore[attr-defined]
    return str(tokenizer.decode(out[0][ids["input_ids"].shape[1] :], skip_special_tokens=True)).strip()  # type: ignore[attr-defined]


def build_smollm2_lora(base: Path, dest: Path) -> Path:
    """Build (or reuse) the French adapter of the SmolLM2 build at ``base`` into ``dest``."""
    base = Path(base).absolute()
    marker = read_marker(base)
    if marker is None:
        raise FileNotFoundError(f"{base} is not a finished vllm-fleet model build")
    source = {"base": marker.get("kind"), "files": marker.get("files")}
    return atomic_build(Path(dest), KIND, lambda out: _train_into(base, out), source, BUILDER_VERSION)
