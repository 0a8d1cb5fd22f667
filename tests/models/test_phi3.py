"""sglkit Phi-3 vs HF transformers: logits through the paged KV pool match within 1e-4 (float32), for fused
checkpoints, LongRoPE (short and long factors), partial rotary (Phi-4-mini) and a sliding window."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

from sglkit.core.forward_batch import ForwardMode
from sglkit.layers.rotary import LongRopeRotaryEmbedding
from sglkit.models.phi3 import Phi3ForCausalLM

# HFComparison methods (tests/models/conftest.py): (a) (b) (c) (d) of the model test plan.
SCENARIOS = ("single_prefill", "packed_extend", "prefix_extend", "decode_after_prefill")
VARIANTS = ["phi3", "phi3-longrope", "phi3-partial-rotary", "phi3-window-6"]


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_transformers(hf_comparison, variant, scenario):
    getattr(hf_comparison(variant), scenario)()


def _hf_with_config(path, **changes):
    """HF's model of ``path`` with config attributes changed (rope_parameters entries merged)."""
    config = AutoConfig.from_pretrained(path)
    rope = changes.pop("rope_parameters", None)
    if rope:
        config.rope_parameters = {**config.rope_parameters, **rope}
    for key, value in changes.items():
        setattr(config, key, value)
    return AutoModelForCausalLM.from_pretrained(path, config=config, dtype=torch.float32).eval()


def test_checkpoint_is_fused_as_released(tiny_model_path, hf_comparison):
    path = tiny_model_path("phi3")
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert (
        "model.layers.0.self_attn.qkv_proj.weight" in names
        and "model.layers.0.mlp.gate_up_proj.weight" in names
    )
    components = {part for name in names for part in name.split(".")}
    assert not components & {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}
    model = hf_comparison("phi3").model
    assert type(model) is Phi3ForCausalLM
    attn = model.model.layers[0].self_attn
    assert (
        attn.qkv_proj.bias is None
        and attn.o_proj.bias is None
        and model.model.layers[0].mlp.down_proj.bias is None
    )


@torch.no_grad()
def test_longrope_switches_factor_sets_like_transformers(tiny_model_path, hf_comparison, hf_model):
    """Swapping short and long factors changes HF's logits of a short prompt and of a long one: both are used."""
    path = tiny_model_path("phi3-longrope")
    comparison = hf_comparison("phi3-longrope")
    rope = comparison.model.model.rotary_emb
    assert isinstance(rope, LongRopeRotaryEmbedding) and rope.original_max_position == 8
    assert rope.attention_factor == pytest.approx(hf_model(path).model.rotary_emb.attention_scaling)
    assert rope.attention_factor > 1.5  # sqrt(1 + ln(2048 / 8) / ln 8)
    params = json.loads((path / "config.json").read_text())["rope_parameters"]
    swapped = _hf_with_config(
        path, rope_parameters={"short_factor": params["long_factor"], "long_factor": params["short_factor"]}
    )
    short, long = comparison.prompts[1], comparison.prompts[2]  # 5 and 23 tokens
    assert len(short) <= 8 < len(long)
    for prompt in (short, long):
        ref = comparison.reference(prompt)
        assert (ref - swapped(torch.tensor([prompt])).logits[0]).abs().max() > 1e-2


def test_partial_rotary_rotates_three_quarters(tiny_model_path, hf_comparison):
    model = hf_comparison("phi3-partial-rotary").model
    rope = model.model.rotary_emb
    assert (rope.head_dim, rope.rotary_dim) == (16, 12) and model.tie_word_embeddings
    config = AutoConfig.from_pretrained(tiny_model_path("phi3-partial-rotary"))
    assert (
        config.rope_parameters["partial_rotary_factor"] == 0.75
        and len(config.rope_parameters["short_factor"]) == 6
    )


@torch.no_grad()
def test_sliding_window_is_applied_on_every_layer(tiny_model_path, hf_comparison):
    path = tiny_model_path("phi3-window-6")
    comparison = hf_comparison("phi3-window-6")
    assert [layer.self_attn.attn.sliding_window for layer in comparison.model.model.layers] == [6, 6]
    prompt = comparison.prompts[2]  # 23 tokens: several windows
    unwindowed = _hf_with_config(path, sliding_window=None)(torch.tensor([prompt])).logits[0]
    assert (comparison.reference(prompt) - unwindowed).abs().max() > 1e-2  # HF itself applies the window


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")  # transformers >= 5.24
@torch.no_grad()
def test_longrope_crossing_between_passes_matches_transformers_with_a_kv_cache(
    tiny_model_path, hf_comparison, hf_model, paged_runner
):
    """A request cached while short (6 tokens) and extended past original_max (to 14): its earlier keys keep
    the short factors, as in HF's forward with a KV cache; HF's generate() recomputes them (documented)."""
    from transformers import DynamicCache

    path = tiny_model_path("phi3-longrope")
    comparison = hf_comparison("phi3-longrope")
    hf = hf_model(path)
    prompt = comparison.prompts[2][:14]
    runner = paged_runner(comparison.model, comparison.config)
    runner.forward([("a", prompt[:6])])
    (ours,) = runner.forward([("a", prompt[6:])])
    cache = DynamicCache(config=hf.config)
    hf(torch.tensor([prompt[:6]]), past_key_values=cache, use_cache=True)
    with_cache = hf(torch.tensor([prompt[6:]]), past_key_values=cache, use_cache=True).logits[0]
    comparison.assert_close(ours, with_cache)
    assert (
        ours - comparison.reference(prompt)[6:]
    ).abs().max() > 1e-3  # full recomputation: all long factors
    runner.forward([("a", [prompt[-1]])], ForwardMode.DECODE)  # decode past the crossing keeps working
