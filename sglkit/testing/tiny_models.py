"""Test fixtures: tiny random Llama-family checkpoints in HF format, made locally (no downloads).

``make_tiny_model`` writes a folder that both HF transformers and sglkit load: config.json,
generation_config.json, safetensors weights (optionally sharded), and a byte-level BPE tokenizer with a
ChatML chat template. Same arguments -> byte-identical files, so tests regenerate fixtures instead of
committing them.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch

from sglkit.testing.chat_templates import CHATML_TEMPLATE, chat_template_for
from sglkit.testing.corpus import build_corpus
from sglkit.testing.moe_checkpoints import checkpoint_shapes, moe_config_defaults

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "PRESETS",
    "SPECIAL_TOKENS",
    "CHAT_TEMPLATE",
    "make_tokenizer",
    "make_tiny_model",
]

# Architecture name -> its transformers config class.
ARCHITECTURE_CONFIGS: dict[str, str] = {
    "LlamaForCausalLM": "LlamaConfig",
    "MistralForCausalLM": "MistralConfig",
    "Qwen2ForCausalLM": "Qwen2Config",
    "Qwen3ForCausalLM": "Qwen3Config",
    "Phi3ForCausalLM": "Phi3Config",
    "Gemma2ForCausalLM": "Gemma2Config",
    "Gemma3ForCausalLM": "Gemma3TextConfig",
    "Olmo2ForCausalLM": "Olmo2Config",
    "GPTNeoXForCausalLM": "GPTNeoXConfig",  # no sglkit implementation: the transformers fallback
    "PhiForCausalLM": "PhiConfig",  # no sglkit implementation: the transformers fallback
    "MixtralForCausalLM": "MixtralConfig",
    "Qwen2MoeForCausalLM": "Qwen2MoeConfig",
    "Qwen3MoeForCausalLM": "Qwen3MoeConfig",
}
SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURE_CONFIGS)
# Architectures whose norms scale by (1 + weight): their random norm weights are drawn near 0, not near 1.
ZERO_CENTRED_NORM_ARCHITECTURES = ("Gemma2ForCausalLM", "Gemma3ForCausalLM")

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>")

CHAT_TEMPLATE = CHATML_TEMPLATE  # the default template (kept under its old name)

# Defaults of ``make_tiny_model``; "small" (~21M parameters) is for benchmarks.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "small": dict(
        hidden_size=512,
        intermediate_size=1152,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
    ),
}

# Default std of the normal init of linear/embedding weights is INIT_SCALE / sqrt(hidden_size): 0.2 for
# "tiny", ~0.07 for "small". HF's 0.02 makes a random model's greedy output collapse to one repeated token;
# this keeps greedy generations varied (checked: 18-30 distinct tokens in 32) while hidden states stay < ~20.
INIT_SCALE = 1.6


def make_tokenizer(
    path: str | os.PathLike | None = None,
    vocab_size: int = 512,
    model_max_length: int = 2048,
    chat_template: str = CHATML_TEMPLATE,
):
    """Train the tiny byte-level BPE tokenizer on the fixed corpus; save it to ``path`` if given.

    Returns a ``PreTrainedTokenizerFast`` (``TokenizersBackend`` in transformers 5) with bos ``<s>``
    (added to plain text by the post-processor), eos ``<|im_end|>``, pad ``<pad>``, unk ``<unk>`` and
    ``chat_template`` (ChatML by default).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(build_corpus(), trainer)
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", bos_id)]
    )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=["</s>", "<|im_start|>"],
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    hf_tok.chat_template = chat_template
    if path is not None:
        hf_tok.save_pretrained(str(path))
    return hf_tok


def _hf_config(architecture: str, params: dict[str, Any]):
    """Build the transformers config object for ``architecture`` from make_tiny_model's parameters."""
    import transformers

    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"Unsupported architecture {architecture!r}; choose one of {SUPPORTED_ARCHITECTURES}."
        )
    config_cls = getattr(transformers, ARCHITECTURE_CONFIGS[architecture])
    kwargs = dict(params)
    if architecture == "MistralForCausalLM":
        kwargs.setdefault("sliding_window", None)
    if architecture == "Qwen2ForCausalLM":
        kwargs.pop("head_dim", None)  # Qwen2 always uses hidden_size // num_attention_heads
    if architecture == "Phi3ForCausalLM":
        _phi3_config_defaults(kwargs)
    if architecture in ("Gemma2ForCausalLM", "Gemma3ForCausalLM"):
        _gemma_config_defaults(architecture, kwargs)
    if architecture in ("GPTNeoXForCausalLM", "PhiForCausalLM"):
        kwargs.pop("head_dim", None)  # always hidden_size // num_attention_heads
        if architecture == "GPTNeoXForCausalLM":
            kwargs.pop("num_key_value_heads", None)  # multi-head attention only
        # Rotary on part of each head as released (Pythia 1/4, Phi-2 1/2), unless the caller gives a factor.
        factor = 0.25 if architecture == "GPTNeoXForCausalLM" else 0.5
        kwargs["rope_parameters"] = {"partial_rotary_factor": factor, **kwargs["rope_parameters"]}
    moe_config_defaults(architecture, kwargs)  # a few small experts (MoE architectures only)
    return config_cls(architectures=[architecture], **kwargs)


def _gemma_config_defaults(architecture: str, kwargs: dict[str, Any]) -> None:
    """Gemma 2 / 3 defaults sized for a tiny model: attention scale 1/sqrt(head_dim) (HF's default 256 suits
    head_dim 256); for Gemma 3, local and global layers alternating, and a flat ``rope_parameters`` taken as the
    global layers' rope (local layers: default rope with base ``rope_local_base_freq``, 10000 unless given)."""
    kwargs.setdefault("query_pre_attn_scalar", kwargs["head_dim"])
    if architecture == "Gemma3ForCausalLM":  # local and global layers alternate (HF: 5 local, 1 global)
        layers = range(kwargs["num_hidden_layers"])
        kwargs.setdefault("layer_types", ["full_attention" if i % 2 else "sliding_attention" for i in layers])
    rope = kwargs.get("rope_parameters")
    if architecture == "Gemma3ForCausalLM" and rope and not any(isinstance(v, dict) for v in rope.values()):
        local_theta = float(kwargs.pop("rope_local_base_freq", 10000.0))  # its name in older configs
        kwargs["rope_parameters"] = {
            "full_attention": dict(rope),
            "sliding_attention": {"rope_type": "default", "rope_theta": local_theta},
        }


def _phi3_config_defaults(kwargs: dict[str, Any]) -> None:
    """Phi-3 configs as released: no head_dim when it is hidden_size // num_attention_heads, and the top-level
    ``original_max_position_embeddings`` (which transformers' Phi3Config puts over the rope parameters' own,
    defaulting to 4096) taken from LongRoPE ``rope_parameters``."""
    if kwargs.get("head_dim") == kwargs["hidden_size"] // kwargs["num_attention_heads"]:
        kwargs.pop("head_dim")
    original = (kwargs.get("rope_parameters") or {}).get("original_max_position_embeddings")
    if original is not None:
        kwargs.setdefault("original_max_position_embeddings", original)


def _random_state_dict(
    config, architecture: str, seed: int, initializer_range: float
) -> dict[str, torch.Tensor]:
    """HF parameter names/shapes (from a meta-device model) filled from a seeded generator, in sorted order."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        meta_model = AutoModelForCausalLM.from_config(
            copy.deepcopy(config), dtype=torch.float32
        )  # sets .dtype
    shapes = {name: tuple(p.shape) for name, p in meta_model.state_dict().items()}
    shapes = checkpoint_shapes(architecture, shapes)  # MoE: per-expert tensors, as checkpoints store them
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name in sorted(shapes):
        shape = shapes[name]
        if name.endswith("norm.weight"):
            # Near 1 (not exactly 1) so a missing norm-weight multiply shows up in the tests; Gemma stores w
            # of its (1 + w) scale, so near 0 there.
            center = 0.0 if architecture in ZERO_CENTRED_NORM_ARCHITECTURES else 1.0
            state[name] = center + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith(".bias"):
            state[name] = 0.1 * torch.randn(shape, generator=gen)
        else:
            state[name] = initializer_range * torch.randn(shape, generator=gen)
    return state


def _save_weights(state: dict[str, torch.Tensor], out: Path, num_shards: int) -> None:
    """Write ``state`` as model.safetensors, or as ``num_shards`` files plus model.safetensors.index.json."""
    from safetensors.torch import save_file

    if num_shards <= 1:
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    names = list(state)
    if num_shards > len(names):
        raise ValueError(f"num_shards={num_shards} exceeds the number of tensors ({len(names)}).")
    total_bytes = sum(t.numel() * t.element_size() for t in state.values())
    target = total_bytes / num_shards
    shards: list[list[str]] = [[]]
    shard_bytes = 0
    for i, name in enumerate(names):
        remaining_names, remaining_shards = len(names) - i, num_shards - len(shards)
        must_split = remaining_names == remaining_shards  # one tensor left per remaining shard
        if shards[-1] and len(shards) < num_shards and (shard_bytes >= target or must_split):
            shards.append([])
            shard_bytes = 0
        shards[-1].append(name)
        shard_bytes += state[name].numel() * state[name].element_size()
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards):
        filename = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: state[n] for n in shard}, str(out / filename), metadata={"format": "pt"})
        weight_map.update({n: filename for n in shard})
    index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def make_tiny_model(
    path: str | os.PathLike,
    architecture: str = "LlamaForCausalLM",
    *,
    preset: str = "tiny",
    seed: int = 0,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    num_hidden_layers: int | None = None,
    num_attention_heads: int | None = None,
    num_key_value_heads: int | None = None,
    head_dim: int | None = None,
    max_position_embeddings: int = 2048,
    tie_word_embeddings: bool = False,
    rope_parameters: dict[str, Any] | None = None,
    vocab_size: int = 512,
    dtype: str = "float32",
    num_shards: int = 1,
    initializer_range: float | None = None,
    **config_overrides: Any,
) -> Path:
    """Write a tiny random ``architecture`` checkpoint with tokenizer into ``path``; return the folder.

    Sizes left as None come from ``PRESETS[preset]``; ``initializer_range`` defaults to
    ``INIT_SCALE / sqrt(hidden_size)``. ``dtype`` is the stored weight dtype (and the
    config's ``dtype``). Extra keyword arguments go to the transformers config (e.g. ``attention_bias``).
    Deterministic: the same arguments give byte-identical files.
    """
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(
        out,
        vocab_size=vocab_size,
        model_max_length=max_position_embeddings,
        chat_template=chat_template_for(architecture),
    )
    sizes = dict(
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
    )
    params: dict[str, Any] = {k: (PRESETS[preset][k] if v is None else v) for k, v in sizes.items()}
    # Explicit head_dim (Qwen3's config would otherwise default to 128).
    params["head_dim"] = head_dim or params["hidden_size"] // params["num_attention_heads"]
    params.update(
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        rope_parameters=rope_parameters or {"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype=dtype,
        **config_overrides,
    )
    if initializer_range is None:
        initializer_range = round(INIT_SCALE / params["hidden_size"] ** 0.5, 6)
    params["initializer_range"] = initializer_range
    config = _hf_config(architecture, params)
    state = _random_state_dict(config, architecture, seed, initializer_range)
    torch_dtype = getattr(torch, dtype)
    state = {name: t.to(torch_dtype).contiguous() for name, t in state.items()}
    for stale in list(out.glob("*.safetensors")) + list(out.glob("model.safetensors.index.json")):
        stale.unlink()
    _save_weights(state, out, num_shards)
    config.save_pretrained(str(out))
    generation = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return out
