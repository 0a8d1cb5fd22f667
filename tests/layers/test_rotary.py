"""Rotary embedding vs HF Llama's rotary (default, linear, llama3), on packed [T, H, D] q/k."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from sglkit.layers.rotary import get_rope

ROPE_PARAMETERS = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "default-theta-500k": {"rope_type": "default", "rope_theta": 500000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "llama3": {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 1024,
    },
}


def _hf_rotary(head_dim: int, max_position: int, rope_parameters: dict) -> LlamaRotaryEmbedding:
    config = LlamaConfig(
        hidden_size=head_dim * 4,
        num_attention_heads=4,
        head_dim=head_dim,
        max_position_embeddings=max_position,
        rope_parameters=dict(rope_parameters),
    )
    return LlamaRotaryEmbedding(config)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(ROPE_PARAMETERS))
def test_matches_transformers(name, dtype):
    head_dim, max_position = 64, 4096
    params = ROPE_PARAMETERS[name]
    rope = get_rope(head_dim, max_position, params)
    gen = torch.Generator().manual_seed(0)
    positions = torch.tensor([0, 1, 2, 7, 100, 1023, 1024, 4095, 3])  # packed: several requests' positions
    q = torch.randn(len(positions), 8, head_dim, generator=gen).to(dtype)
    k = torch.randn(len(positions), 2, head_dim, generator=gen).to(dtype)
    q_out, k_out = rope(positions, q, k)
    assert q_out.shape == q.shape and k_out.shape == k.shape and q_out.dtype == dtype

    hf = _hf_rotary(head_dim, max_position, params)
    cos, sin = hf(q.transpose(0, 1)[None], positions[None])  # [1, T, D]
    # HF layout: [B, H, T, D]
    q_ref, k_ref = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    torch.testing.assert_close(q_out, q_ref[0].transpose(0, 1), atol=0, rtol=0)
    torch.testing.assert_close(k_out, k_ref[0].transpose(0, 1), atol=0, rtol=0)


def test_llama3_scales_low_frequencies_only():
    head_dim = 128
    default = get_rope(head_dim, 2048, ROPE_PARAMETERS["default-theta-500k"]).cos_sin_cache
    llama3 = get_rope(head_dim, 2048, ROPE_PARAMETERS["llama3"]).cos_sin_cache
    half = head_dim // 2
    # highest frequency (dim 0): untouched; lowest (last dim of the cos half): divided by factor 8.
    torch.testing.assert_close(llama3[:, 0], default[:, 0])
    assert not torch.allclose(llama3[:, half - 1], default[:, half - 1])
    positions = torch.arange(2048, dtype=torch.float32)
    inv_freq_low = 1.0 / 500000.0 ** (torch.tensor(head_dim - 2.0) / head_dim) / 8.0
    torch.testing.assert_close(llama3[:, half - 1], torch.cos(positions * inv_freq_low))


def test_cache_shape_and_position_zero_is_identity():
    rope = get_rope(16, 32, {"rope_theta": 10000.0})  # rope_type defaults to "default"
    assert rope.cos_sin_cache.shape == (32, 16) and rope.cos_sin_cache.dtype == torch.float32
    q, k = torch.randn(1, 2, 16), torch.randn(1, 1, 16)
    q_out, k_out = rope(torch.tensor([0]), q, k)
    assert torch.equal(q_out, q) and torch.equal(k_out, k)


@pytest.mark.parametrize("rope_type", ["yarn", "dynamic", "longrope"])
def test_unsupported_rope_type_is_a_clear_error(rope_type):
    with pytest.raises(ValueError, match=f"Unsupported rope_type '{rope_type}'.*llama3"):
        get_rope(64, 128, {"rope_type": rope_type, "rope_theta": 10000.0, "factor": 2.0})


def test_reset_cache_after_to_empty():
    with torch.device("meta"):
        rope = get_rope(16, 64, ROPE_PARAMETERS["linear"])
    assert rope.cos_sin_cache.is_meta
    rope.to_empty(device="cpu")
    rope.reset_cache()
    torch.testing.assert_close(rope.cos_sin_cache, get_rope(16, 64, ROPE_PARAMETERS["linear"]).cos_sin_cache)
