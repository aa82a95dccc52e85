"""The test models' builders: offline, deterministic, into the cache the tests read.

Two tiny random Llamas, a LoRA adapter and two more revisions of the first, all served by the
real (CPU) vLLM in the Molecule scenarios:

``tiny-llama``
    A 2-layer Llama with random weights from a fixed seed and a byte-level BPE tokenizer trained
    on text this module generates itself. About 1.3 MB, built in seconds, byte-identical on every
    build with the same library versions. Its answers are nonsense but deterministic at
    temperature 0, which makes it a golden prompt for start-up and readiness checks.

``tiny-llama-wide``
    The same builder with another shape and seed (3 layers, hidden 256, 8 heads, 2 KV heads):
    a second, different tiny model, for hosts that serve several models side by side.

``tiny-llama-lora``
    A LoRA adapter of ``tiny-llama`` made with peft (rank 8 on the attention and MLP projections,
    both matrices random from a fixed seed, so that base and adapter answer differently at
    temperature 0): what an instance's ``adapters`` serve (:func:`build_tiny_lora`).

``tiny-llama-second``, ``tiny-llama-broken``
    Revisions of ``tiny-llama`` for rolling upgrades and their gate (:func:`build_revision`): the
    fleet scenario rolls them through three hosts under load, where a model that answers in
    milliseconds leaves the two cores to the restarts (SmolLM2 took seconds per answer there).

Every build is atomic, cached and readable by other users (:mod:`vllm_fleet.builds`). Heavy
libraries (the ``builders`` extra) are imported inside the builders, only when something is
actually built, so importing this module is cheap and a cached build is returned without them.
Usage (from the repository root): ``python -m tests.builders [--cache DIR]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vllm_fleet import extras, smollm2
from vllm_fleet.builds import MARKER, atomic_build, read_marker, tidy_saved
from vllm_fleet.paths import cache_dir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "BUILDER_VERSIONS",
    "REVISION_KINDS",
    "TINY_LLAMA",
    "TINY_LLAMAS",
    "TINY_LLAMA_WIDE",
    "TinyLlama",
    "build_all",
    "build_revision",
    "build_tiny_llama",
    "build_tiny_lora",
    "main",
]

#: Per kind of build: bump one when that builder's output changes, and cached builds of that
#: kind (only) are rebuilt on next use.
BUILDER_VERSIONS: Mapping[str, int] = {
    "tiny-llama": 1,
    "tiny-llama-wide": 1,
    "revision-second": 1,
    "revision-broken": 1,
    "tiny-llama-lora": 1,
}

#: The tiny model's shape. head_dim 32 is the smallest head size vLLM's CPU attention accepts.
TINY_LLAMA: Mapping[str, int] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "vocab_size": 2048,
    "max_position_embeddings": 2048,
}
TINY_LLAMA_SEED = 20240601

#: A second tiny shape: more layers and heads, still head_dim 32 and the same tokenizer.
TINY_LLAMA_WIDE: Mapping[str, int] = {
    **TINY_LLAMA,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 3,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 32,
}
TINY_LLAMA_WIDE_SEED = 20240602


@dataclass(frozen=True)
class TinyLlama:
    """One tiny random Llama: its build kind (also its default directory name), shape and seed."""

    kind: str
    shape: Mapping[str, int]
    seed: int


#: The tiny random Llamas this module builds, by kind.
TINY_LLAMAS: Mapping[str, TinyLlama] = {
    "tiny-llama": TinyLlama("tiny-llama", TINY_LLAMA, TINY_LLAMA_SEED),
    "tiny-llama-wide": TinyLlama("tiny-llama-wide", TINY_LLAMA_WIDE, TINY_LLAMA_WIDE_SEED),
}


BOS_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (BOS_TOKEN, "<|im_start|>", EOS_TOKEN, PAD_TOKEN)

#: ChatML (im_start/im_end) template, as SmolLM2 and Qwen use; enough for /v1/chat/completions.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_PROSE = """\
A fleet is a group of machines that serve one purpose together. Each host in the fleet runs a
language model server, and a controller keeps them all in the same state. The controller
installs packages, writes configuration files, starts services and checks that every server
answers before it moves on to the next host. When something fails, it stops, reports what went
wrong, and leaves the hosts that were already healthy untouched.

You are a helpful assistant. Answer the question in one sentence. What is the capital of
France? The capital of France is Paris. What is two plus two? Two plus two is four. How many
days are in a week? There are seven days in a week. Which planet is closest to the sun? Mercury
is the planet closest to the sun. Why is the sky blue? Sunlight is scattered by the air, and blue
light is scattered the most.

The weather today is mild, with a light wind from the west and a few clouds in the afternoon.
Tomorrow it will be warmer, and the evening may bring rain. Farmers watch the sky, sailors watch
the sea, and travellers watch the clock. Small rivers run into large ones, and large rivers run
into the ocean. Trees grow slowly, but a forest can live for a thousand years.

def serve(model, port=8000):
    server = Server(model=model, port=port)
    server.start()
    return server.health() == 200

{"model": "tiny-llama", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16}
"""

_WORD_TEXT = """
about above across act action add after afternoon again against age ago agree air all allow
almost alone along already also always among amount and animal another answer any appear apple
area arm around arrive art as ask at away baby back bad bag ball bank base be bear beautiful
because become bed before begin behind believe below best better between big bird black blood
blue board boat body book both bottom box boy bread break bridge bright bring brother brown
build burn business but buy by call can capital car care carry case cat catch cause cell center
certain chair change charge check child choose church circle city class clean clear climb clock
close cloud coast cold colour come common company complete computer condition consider contain
continue control cook cool copy corner correct cost could count country course cover create
cross crowd cry cup current cut dance dark data day dead deal dear decide deep degree describe
design detail develop die difference different difficult dinner direct discover distance do
doctor dog door down draw dream dress drink drive drop dry during each early earth east easy eat
edge effect egg eight either else end energy engine enough enter equal even evening event ever
every exact example except expect experience explain eye face fact fair fall family far farm
fast father feel few field fight figure fill final find fine finger finish fire first fish five
floor flower fly follow food foot for force forest form forward four free fresh friend from
front fruit full game garden gas general gentle get girl give glass go gold good govern grass
great green ground group grow guess half hand happen happy hard hat have he head hear heart heat
heavy help her here high hill him his history hold hole home hope horse hot hour house how huge
human hundred hunt hurry ice idea if important in inch include indeed industry information
inside instead interest into iron island it job join joy just keep key kind king kitchen know
lake land language large last late laugh law lay lead learn least leave left leg length less
let letter level library lie life lift light like line list listen little live long look lose
loud love low machine main make man many map mark market match matter may me mean measure meet
memory metal middle might mile milk million mind minute miss model modern moment money month
moon more morning most mother mountain mouth move much music must name nation nature near need
never new next night nine no noise north nose note nothing notice now number object ocean of off
offer office often oil old on once one only open or order other our out over own page paint
pair paper part party pass past path pay people perhaps person pick picture piece place plan
plant play please point poor port possible power practice prepare present press pretty print
problem produce program protect prove provide pull push put question quick quiet quite race rain
raise reach read ready real reason receive record red remember repeat reply report rest result
return rich ride right ring rise river road rock room root rose round rule run safe sail salt
same sand save say school science sea season seat second see seed seem sell send sense sentence
serve set seven several shall shape share she ship shop short should shoulder show side sign
silver simple since sing sister sit six size skin sky sleep slow small smell smile snow so soft
soil some son song soon sound south space speak special speed spell spend spring square stand
star start state station stay step still stone stop store story straight strange street strong
student study subject success such sudden sugar summer sun supply support sure surface system
table tail take talk tall teach team tell ten test than thank that the their them then there
these they thing think third this those though thought thousand three through throw time tiny
to today together tomorrow too tool top total touch toward town track trade train travel tree
true try turn twelve two under understand unit until up us use usual valley value very view
village visit voice wait walk wall want warm wash watch water wave way we wear weather week
weight well west what wheel when where which while white who whole why wide wife wild will win
wind window winter wish with without woman wonder wood word work world write wrong yard year yes
yet you young your zero
"""
_WORDS = tuple(_WORD_TEXT.split())

# fmt: off
_SUBJECTS = (
    "the server", "a model", "the controller", "every host", "the cluster", "a user", "the team",
    "this request", "the service", "a worker", "the scheduler", "our engineer", "the network",
    "a student", "the teacher", "my friend", "the city", "a small dog", "the old cat", "the river",
)
_VERBS = (
    "starts", "stops", "checks", "reads", "writes", "sends", "receives", "answers", "follows",
    "builds", "measures", "watches", "finds", "keeps", "loads", "moves", "opens", "closes",
    "explains", "remembers",
)
_OBJECTS = (
    "the configuration", "a new token", "every message", "the weights", "a long answer",
    "the health check", "its memory", "the latest version", "a quiet morning", "the blue sky",
    "a simple question", "the right port", "twelve files", "the green light", "a warm cup of tea",
    "the whole fleet", "an empty table", "the first line", "a short story", "the final report",
)
_ENDINGS = (".", "!", "?", " today.", " again.", " quickly.", " carefully.", " at night.")
# fmt: on


def tiny_corpus() -> Iterator[str]:
    """Yield the text the tiny tokenizer is trained on: fixed prose and combinatorial sentences.

    Entirely generated here (no downloads, no randomness), so training sees the same text on every
    machine. The word list is walked in several strides (each coprime with its length, so every
    word appears in every pass) to give common English words whole-word tokens; numbers give the
    trainer enough distinct pairs to fill the vocabulary.
    """
    yield _PROSE
    for number, (subject, verb, obj) in enumerate(itertools.product(_SUBJECTS, _VERBS, _OBJECTS)):
        ending = _ENDINGS[number % len(_ENDINGS)]
        yield f"{subject.capitalize()} {verb} {obj}{ending}"
    count = len(_WORDS)
    for stride in (1, 3, 5, 7, 9, 11):
        walk = [_WORDS[(i * stride) % count] for i in range(count)]
        for start in range(0, count, 12):
            line = walk[start : start + 12]
            yield " ".join([line[0].capitalize(), *line[1:]]) + _ENDINGS[stride % len(_ENDINGS)]
    yield " ".join(str(n) for n in range(10000))


# --- the tiny Llama -----------------------------------------------------------------------------


def _train_tiny_tokenizer(vocab_size: int, context: int) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE tokenizer and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # Training is deterministic: same corpus, same merges, whatever the thread count.
    tokenizer.train_from_iterator(tiny_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        chat_template=CHAT_TEMPLATE,
        model_max_length=context,
        clean_up_tokenization_spaces=False,
    )


#: What each builder imports (all of them in the ``builders`` extra).
TINY_LLAMA_NEEDS = ("torch", "transformers", "tokenizers", "safetensors")
BROKEN_REVISION_NEEDS = ("torch", "safetensors")


def _build_tiny_llama(out: Path, spec: TinyLlama) -> None:
    extras.require(extras.BUILDERS, TINY_LLAMA_NEEDS, f"building the test model {spec.kind}")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = spec.shape
    tokenizer = _train_tiny_tokenizer(shape["vocab_size"], shape["max_position_embeddings"])
    config = LlamaConfig(
        # The model's vocabulary is exactly the tokenizer's, so every id it can emit decodes.
        vocab_size=len(tokenizer),
        hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_hidden_layers"],
        num_attention_heads=shape["num_attention_heads"],
        num_key_value_heads=shape["num_key_value_heads"],
        head_dim=shape["head_dim"],
        max_position_embeddings=shape["max_position_embeddings"],
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    # Fill every parameter ourselves from one seeded generator, in a fixed order, so the weights
    # depend neither on transformers' init scheme nor on the global RNG. Projections get std
    # 1/sqrt(fan_in): with the usual 0.02 the tied embedding dominates the residual stream and
    # greedy decoding just repeats the prompt's last token; this way the output varies with the
    # prompt, which makes a better golden answer.
    generator = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                param.fill_(1.0)
                continue
            std = 0.02 if name.endswith("embed_tokens.weight") else param.shape[1] ** -0.5
            values = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            param.copy_(values * std)
    model.bfloat16()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    tidy_saved(out)


def build_tiny_llama(dest: Path, kind: str = "tiny-llama") -> Path:
    """Build (or reuse) a tiny random-weight Llama with its tokenizer at ``dest``.

    ``kind`` names one of :data:`TINY_LLAMAS`: ``tiny-llama`` (2 layers, hidden 128, 4 attention
    heads, 2 KV heads, head_dim 32) or ``tiny-llama-wide`` (3 layers, hidden 256, 8 heads,
    2 KV heads, head_dim 32, another seed). Both: tied embeddings, bf16 safetensors, the same
    byte-level BPE tokenizer with a ChatML chat template. Byte-identical on every build with
    the same torch, transformers and tokenizers versions. Returns ``dest``.
    """
    try:
        spec = TINY_LLAMAS[kind]
    except KeyError:
        raise ValueError(f"unknown tiny model {kind!r}; known: {', '.join(TINY_LLAMAS)}") from None
    return atomic_build(
        Path(dest), spec.kind, lambda out: _build_tiny_llama(out, spec), version=BUILDER_VERSIONS[spec.kind]
    )


# --- further revisions of a built model (rolling upgrades and their gates) ---------------------

#: Revisions derived from a finished build, by kind:
#: ``second``  the same weights and files plus a note: a new revision that answers as the old one;
#: ``broken``  the final norm's weights negated: vLLM loads it, /health says 200 and a 1-token
#:             completion succeeds, but every logit is negated, so greedy decoding picks the least
#:             likely token and the answer is garbage. Exactly what a golden-prompt gate must catch.
REVISION_KINDS = ("second", "broken")
_BROKEN_TENSOR = "model.norm.weight"


def _build_revision_into(base: Path, out: Path, kind: str) -> None:
    damaged = kind == "broken"
    for path in sorted(base.iterdir()):
        if path.is_file() and path.name != MARKER and not (damaged and path.suffix == ".safetensors"):
            shutil.copyfile(path, out / path.name)
    if damaged:
        extras.require(extras.BUILDERS, BROKEN_REVISION_NEEDS, f"building the {kind} revision")
        from safetensors.torch import load_file, save_file

        for weights in sorted(base.glob("*.safetensors")):
            tensors = load_file(str(weights))
            if _BROKEN_TENSOR in tensors:
                tensors[_BROKEN_TENSOR] = -tensors[_BROKEN_TENSOR]
            save_file(tensors, str(out / weights.name), metadata={"format": "pt"})
    note = {"derived_from": base.name, "revision": kind}
    (out / "vllm-fleet-revision.json").write_text(json.dumps(note, indent=2, sort_keys=True) + "\n")


def build_revision(base: Path, dest: Path, kind: str) -> Path:
    """Build (or reuse) revision ``kind`` (one of :data:`REVISION_KINDS`) of the build at ``base``.

    ``base`` must be a finished build (its marker present); the result is cached against the
    marker's file hashes, so a rebuilt base gives a rebuilt revision. Returns ``dest``.
    """
    if kind not in REVISION_KINDS:
        raise ValueError(f"unknown revision kind {kind!r}; known: {', '.join(REVISION_KINDS)}")
    base = Path(base).absolute()
    marker = read_marker(base)
    if marker is None:
        raise FileNotFoundError(f"{base} is not a finished vllm-fleet model build (no {MARKER})")
    weights = [name for name in marker.get("files", {}) if name.endswith(".safetensors")]
    if kind == "broken" and not weights:
        raise ValueError(f"{base} has no safetensors weights to damage")
    source = {"base": marker.get("kind"), "files": marker.get("files")}
    build_kind = f"revision-{kind}"
    return atomic_build(
        Path(dest),
        build_kind,
        lambda out: _build_revision_into(base, out, kind),
        source,
        BUILDER_VERSIONS[build_kind],
    )


# --- a LoRA adapter of the tiny model -----------------------------------------------------------

#: The adapter's rank and the projections it adapts: vLLM's --max-lora-rank must be at least it.
TINY_LORA_RANK = 8
TINY_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TINY_LORA_SEED = 8
TINY_LORA_NEEDS = ("torch", "transformers", "peft", "safetensors")


def _build_tiny_lora_into(base: Path, out: Path) -> None:
    extras.require(extras.BUILDERS, TINY_LORA_NEEDS, "building the test adapter tiny-llama-lora")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=TINY_LORA_RANK,
        lora_alpha=2 * TINY_LORA_RANK,
        target_modules=list(TINY_LORA_TARGETS),
        lora_dropout=0.0,
    )
    adapted = get_peft_model(model, config)
    # peft starts B at zero (the adapter changes nothing until trained): both matrices random
    # from one seeded generator instead, scaled like the base's projections, in a fixed order.
    generator = torch.Generator().manual_seed(TINY_LORA_SEED)
    with torch.no_grad():
        for name, param in sorted(adapted.named_parameters()):
            if "lora_" in name:
                values = torch.randn(param.shape, generator=generator, dtype=torch.float32)
                param.copy_(values * param.shape[1] ** -0.5)
    adapted.save_pretrained(out)
    settings = json.loads((out / "adapter_config.json").read_text())
    # The path it was built from means nothing on a host: name the base model instead.
    settings["base_model_name_or_path"] = "tiny-llama"
    (out / "adapter_config.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    # peft's model card template, empty of anything about this adapter.
    (out / "README.md").unlink(missing_ok=True)


def build_tiny_lora(base: Path, dest: Path) -> Path:
    """Build (or reuse) the LoRA adapter ``tiny-llama-lora`` of the finished build at ``base``
    (``tiny-llama``): adapter_config.json and adapter_model.safetensors at ``dest``, cached
    against the base's file hashes. Returns ``dest``."""
    base = Path(base).absolute()
    marker = read_marker(base)
    if marker is None:
        raise FileNotFoundError(f"{base} is not a finished vllm-fleet model build (no {MARKER})")
    source = {"base": marker.get("kind"), "files": marker.get("files")}
    kind = "tiny-llama-lora"
    return atomic_build(
        Path(dest), kind, lambda out: _build_tiny_lora_into(base, out), source, BUILDER_VERSIONS[kind]
    )


# --- command line -------------------------------------------------------------------------------


def build_all(cache: Path) -> dict[str, Path]:
    """Build every test model under ``cache/models`` and return their directories by name.

    SmolLM2 (``cache/models/smollm2-135m-instruct``, which ``vllm-fleet build`` makes for the
    sandbox and some scenarios read) is built here too when it is not there yet.
    """
    models = Path(cache) / "models"
    built = {kind: build_tiny_llama(models / kind, kind) for kind in TINY_LLAMAS}
    built["tiny-llama-lora"] = build_tiny_lora(built["tiny-llama"], models / "tiny-llama-lora")
    # A second good revision and a broken one of the tiny model, for rolling upgrades and their gate.
    for kind in REVISION_KINDS:
        built[f"tiny-llama-{kind}"] = build_revision(built["tiny-llama"], models / f"tiny-llama-{kind}", kind)
    built[smollm2.KIND] = smollm2.build_smollm2(models / smollm2.KIND, Path(cache) / "downloads")
    return built


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.builders [--cache DIR]``: build every test model, print their paths."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.builders",
        description=(
            "Build the test models (tiny-llama, tiny-llama-wide, the LoRA adapter tiny-llama-lora, "
            "tiny-llama's second and broken revisions, and SmolLM2 if vllm-fleet build has not) offline."
        ),
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="cache directory (default: $VLLM_FLEET_CACHE, else ~/.cache/vllm-fleet)",
    )
    args = parser.parse_args(argv)
    for name, path in build_all(args.cache or cache_dir()).items():
        print(f"{name}\t{path}")
    return 0
