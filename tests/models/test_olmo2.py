"""sglkit OLMo 2 vs HF transformers: logits through the paged KV pool match within 1e-4 (float32): norms only after
the sublayers, q/k norms over all heads' width, float32 weight multiply in the norms and float32 rotary."""

from __future__ import annotations

import pytest
import torch
from transformers import Olmo2Config

from sglkit.core.model_config import ModelConfig
from sglkit.layers.norm import Float32WeightRMSNorm
from sglkit.layers.rotary import get_rope
from sglkit.models.olmo2 import Olmo2Attention, Olmo2ForCausalLM
from sglkit.models.post_norm_blocks import PostNormDecoderLayer
from tests.models.conftest import assert_bfloat16_close_to_hf

# HFComparison methods (tests/models/conftest.py): (a) (b) (c) (d) of the model test plan.
SCENARIOS = ("single_prefill", "packed_extend", "prefix_extend", "decode_after_prefill")


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("variant", ["olmo2", "olmo2-tied-bias"])
def test_logits_match_transformers(hf_comparison, variant, scenario):
    getattr(hf_comparison(variant), scenario)()


def test_structure(hf_comparison):
    model = hf_comparison("olmo2").model
    assert type(model) is Olmo2ForCausalLM and hasattr(model, "lm_head")
    layer = model.model.layers[0]
    assert type(layer) is PostNormDecoderLayer and type(layer.self_attn) is Olmo2Attention
    assert not hasattr(layer, "input_layernorm") and not hasattr(layer, "pre_feedforward_layernorm")
    norms = [layer.post_attention_layernorm, layer.post_feedforward_layernorm, model.model.norm]
    assert all(type(n) is Float32WeightRMSNorm for n in norms)
    attn = layer.self_attn
    assert attn.q_norm.weight.shape == (attn.q_size,) and attn.k_norm.weight.shape == (attn.kv_size,)
    assert attn.qkv_proj.bias is None
    tied = hf_comparison("olmo2-tied-bias").model
    assert not hasattr(tied, "lm_head") and tied.model.layers[0].self_attn.qkv_proj.bias is not None


def test_bfloat16_matches_transformers_bfloat16(tiny_model_path):
    assert_bfloat16_close_to_hf(tiny_model_path("olmo2"))


def test_rotary_in_float32_equals_transformers_in_bfloat16():
    """HF OLMo 2 keeps cos/sin in float32, so bfloat16 q/k are rotated in float32 and cast back."""
    from transformers.models.olmo2.modeling_olmo2 import Olmo2RotaryEmbedding, apply_rotary_pos_emb

    hf_config = Olmo2Config(hidden_size=64, num_attention_heads=4, max_position_embeddings=64)
    config = ModelConfig.from_hf(hf_config)
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(9, 4, 16, generator=gen).to(torch.bfloat16) for _ in range(2))
    positions = torch.arange(20, 29)
    ours = get_rope(16, 64, config.rope_parameters)(positions, q.float(), k.float())
    cos, sin = Olmo2RotaryEmbedding(hf_config)(q, positions[None])
    hf_q, hf_k = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    assert torch.equal(ours[0].to(torch.bfloat16), hf_q[0].transpose(0, 1))
    assert torch.equal(ours[1].to(torch.bfloat16), hf_k[0].transpose(0, 1))
