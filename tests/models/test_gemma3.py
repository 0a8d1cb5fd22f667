"""sglkit Gemma 3 (text) vs HF transformers: logits through the paged KV pool match within 1e-4 (float32), with
per-head (1 + w) q/k norms and one rope per layer type (local base, global base with linear scaling)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig

from sglkit.core.model_config import ModelConfig
from sglkit.layers.norm import GemmaRMSNorm
from sglkit.models.gemma3 import Gemma3ForCausalLM

# HFComparison methods (tests/models/conftest.py): (a) (b) (c) (d) of the model test plan.
SCENARIOS = ("single_prefill", "packed_extend", "prefix_extend", "decode_after_prefill")
SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("variant", ["gemma3", "gemma3-untied-softcap"])
def test_logits_match_transformers(hf_comparison, variant, scenario):
    getattr(hf_comparison(variant), scenario)()


def test_structure(hf_comparison):
    model = hf_comparison("gemma3").model
    assert type(model) is Gemma3ForCausalLM and model.final_logit_softcapping is None
    layers = model.model.layers
    attn = layers[0].self_attn
    assert attn.qk_norm and type(attn.q_norm) is GemmaRMSNorm and attn.q_norm.weight.shape == (attn.head_dim,)
    assert all(layer.self_attn.attn.logit_cap is None for layer in layers)
    assert [layer.self_attn.attn.sliding_window for layer in layers] == [6, None, 6, None]
    local, global_ = layers[0].self_attn.rotary_emb, layers[1].self_attn.rotary_emb
    assert local is layers[2].self_attn.rotary_emb and global_ is model.model.rotary_emb
    assert local.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}
    assert (global_.rope_type, global_.rope_parameters["factor"]) == ("linear", 8.0)
    assert hf_comparison("gemma3-untied-softcap").model.final_logit_softcapping == 4.0


def test_local_rope_changes_hf_logits(tiny_model_path, hf_comparison):
    """The parity test exercises the per-type rope: HF with the global rope on every layer differs."""
    comparison = hf_comparison("gemma3")
    same_rope = {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 8.0}
    hf = AutoModelForCausalLM.from_pretrained(
        tiny_model_path("gemma3"),
        dtype=torch.float32,
        rope_parameters={"full_attention": same_rope, "sliding_attention": dict(same_rope)},
    ).eval()
    prompt = comparison.prompts[2]
    with torch.no_grad():
        changed = hf(torch.tensor([prompt])).logits[0]
    assert (changed - comparison.reference(prompt)).abs().max() > 1e-2


def test_rope_per_layer_type_from_both_config_spellings():
    """transformers 5 nests rope_parameters by layer type; transformers 4 had rope_local_base_freq."""
    old_style = dict(
        rope_theta=500000.0,
        rope_local_base_freq=7000.0,
        rope_scaling={"rope_type": "linear", "factor": 8.0},
        layer_types=["sliding_attention", "full_attention"],
    )
    old, new = SimpleNamespace(**SMALL, **old_style), Gemma3TextConfig(**SMALL, **old_style)
    want_global = {"rope_type": "linear", "factor": 8.0, "rope_theta": 500000.0}
    want_local = {"rope_type": "default", "rope_theta": 7000.0}
    for hf_config in (old, new):
        config = ModelConfig.from_hf(hf_config)
        assert config.rope_parameters == want_global
        assert [config.layer_rope_parameters(i) for i in range(2)] == [want_local, want_global]
    plain = ModelConfig.from_hf(SimpleNamespace(**SMALL, rope_theta=10000.0))
    assert (
        plain.rope_parameters_by_layer_type is None
        and plain.layer_rope_parameters(1) == plain.rope_parameters
    )


def test_attention_softcap_is_not_applied_as_in_transformers(caplog):
    config = ModelConfig.from_hf(Gemma3TextConfig(**SMALL, head_dim=16, attn_logit_softcapping=5.0))
    with caplog.at_level(logging.WARNING, logger="sglkit.models.gemma3"):
        model = Gemma3ForCausalLM(config)
    assert model.model.layers[0].self_attn.attn.logit_cap is None
    assert "attn_logit_softcapping" in caplog.text


def test_bidirectional_config_fails_clearly():
    config = Gemma3TextConfig(**SMALL, head_dim=16, use_bidirectional_attention=True)
    with pytest.raises(ValueError, match="use_bidirectional_attention"):
        Gemma3ForCausalLM(ModelConfig.from_hf(config))
