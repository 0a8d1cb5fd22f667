"""Rotary embedding vs HF's rotary (Llama: default, linear, llama3; Phi-3: longrope, partial rotary), on packed
[T, H, D] q/k."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from sglkit.layers.rotary import LongRopeRotaryEmbedding, get_rope

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


@pytest.mark.parametrize("rope_type", ["yarn", "dynamic"])
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


# --- partial rotary (Phi-4-mini) and LongRoPE (Phi-3 / 3.5 / 4-mini) vs HF Phi-3's rotary ------------------

ORIGINAL_MAX = 16


def _longrope(rotary_dim: int, **extra) -> dict:
    """LongRoPE parameters with distinct, non-monotonic short / long factors (R/2 of each)."""
    half = rotary_dim // 2
    return {
        "rope_type": "longrope",
        "rope_theta": 10000.0,
        "short_factor": [1.0 + 0.05 * ((3 * i) % 5) for i in range(half)],
        "long_factor": [1.5 + 0.7 * ((5 * i) % 7) for i in range(half)],
        "original_max_position_embeddings": ORIGINAL_MAX,
        **extra,
    }


def _hf_phi3(head_dim: int, max_position: int, rope_parameters: dict):
    from transformers import Phi3Config
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

    config = Phi3Config(
        hidden_size=head_dim * 4,
        num_attention_heads=4,
        max_position_embeddings=max_position,
        original_max_position_embeddings=rope_parameters.get("original_max_position_embeddings", 4096),
        rope_parameters=dict(rope_parameters),
    )
    return Phi3RotaryEmbedding(config)


def _hf_rotate(hf_rope, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor):
    """HF on one request: q [T, H, D], k [T, Hkv, D], positions [T] -> rotated (q, k) in our layout."""
    from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb as phi3_apply

    cos, sin = hf_rope(q.transpose(0, 1)[None], positions[None])
    q_ref, k_ref = phi3_apply(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    return q_ref[0].transpose(0, 1), k_ref[0].transpose(0, 1)


def _packed_requests(lengths, head_dim, dtype):
    gen = torch.Generator().manual_seed(1)
    positions = torch.cat([torch.arange(n) for n in lengths])
    seq_lens = torch.cat([torch.full((n,), n) for n in lengths])
    q = torch.randn(len(positions), 4, head_dim, generator=gen).to(dtype)
    k = torch.randn(len(positions), 2, head_dim, generator=gen).to(dtype)
    return positions, seq_lens, q, k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "name, params",
    [
        ("partial-default", {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75}),
        ("longrope", _longrope(16)),
        ("longrope-partial", _longrope(12, partial_rotary_factor=0.75)),
        ("longrope-attention-factor", _longrope(16, attention_factor=1.3)),
        ("longrope-factor", _longrope(16, factor=3.0)),
    ],
)
def test_phi3_rotary_matches_transformers(name, params, dtype):
    """Requests shorter and longer than original_max packed in one pass; HF sees each request alone."""
    head_dim, max_position = 16, 256
    rope = get_rope(head_dim, max_position, params)
    rope.uses_cache_rows = True  # what Phi3's decoder sets (a no-op attribute for plain RoPE)
    lengths = (5, ORIGINAL_MAX, ORIGINAL_MAX + 1, 40)  # short, exactly orig (short), just long, long
    positions, seq_lens, q, k = _packed_requests(lengths, head_dim, dtype)
    q_out, k_out = rope(rope.cache_rows(positions, seq_lens), q, k)
    assert q_out.shape == q.shape and q_out.dtype == dtype
    hf = _hf_phi3(head_dim, max_position, params)
    start = 0
    for n in lengths:
        part = slice(start, start + n)
        q_ref, k_ref = _hf_rotate(hf, q[part], k[part], positions[part])
        torch.testing.assert_close(q_out[part], q_ref, atol=0, rtol=0)
        torch.testing.assert_close(k_out[part], k_ref, atol=0, rtol=0)
        start += n
    if params.get("partial_rotary_factor"):  # the unrotated tail passes through untouched
        rd = rope.rotary_dim
        assert (
            rd == 12
            and torch.equal(q_out[..., rd:], q[..., rd:])
            and torch.equal(k_out[..., rd:], k[..., rd:])
        )


def test_longrope_uses_both_factor_sets_and_the_attention_factor():
    """The switch is real: swapping short / long changes both halves; the default attention factor is HF's."""
    params = _longrope(16)
    rope = get_rope(16, 64, params)
    swapped = get_rope(
        16, 64, {**params, "short_factor": params["long_factor"], "long_factor": params["short_factor"]}
    )
    assert rope.cos_sin_cache.shape == (ORIGINAL_MAX + 64, 16)
    assert not torch.allclose(rope.cos_sin_cache[1:ORIGINAL_MAX], swapped.cos_sin_cache[1:ORIGINAL_MAX])
    assert not torch.allclose(
        rope.cos_sin_cache[ORIGINAL_MAX + 1 :], swapped.cos_sin_cache[ORIGINAL_MAX + 1 :]
    )
    expected = (1 + torch.log(torch.tensor(64 / 16)) / torch.log(torch.tensor(16.0))).sqrt()
    assert (
        rope.attention_factor
        == pytest.approx(float(expected))
        == pytest.approx(_hf_phi3(16, 64, params).attention_scaling)
    )
    # Row 0 of each half is cos(0) = attention_factor, sin(0) = 0.
    for row in (0, ORIGINAL_MAX):
        torch.testing.assert_close(
            rope.cos_sin_cache[row], torch.tensor([rope.attention_factor] * 8 + [0.0] * 8)
        )


def test_longrope_row_selection_is_per_request():
    rope = get_rope(16, 64, _longrope(16))
    positions = torch.tensor([0, 1, 2, 0, 1, 15, 16])
    seq_lens = torch.tensor([3, 3, 3, 20, 20, 16, 17])
    assert rope.cache_rows(positions, seq_lens).tolist() == [0, 1, 2, 16, 17, 15, 32]
    with pytest.raises(ValueError, match="token_seq_lens"):
        rope.cache_rows(positions)


def test_longrope_refuses_raw_positions_and_bad_parameters():
    rope = get_rope(16, 64, _longrope(16))
    q, k = torch.randn(2, 1, 16), torch.randn(2, 1, 16)
    with pytest.raises(ValueError, match="cache_rows"):
        rope(torch.tensor([0, 1]), q, k)  # a decoder that does not pick the factor set per request
    su = get_rope(16, 64, {**_longrope(16), "rope_type": "su"})  # Phi-3's early name
    assert isinstance(su, LongRopeRotaryEmbedding) and torch.equal(su.cos_sin_cache, rope.cos_sin_cache)
    with pytest.raises(ValueError, match="short_factor.*list of 8"):
        get_rope(16, 64, {**_longrope(16), "short_factor": [1.0] * 7})
    with pytest.raises(ValueError, match="original_max_position_embeddings"):
        get_rope(16, 64, {k: v for k, v in _longrope(16).items() if k != "original_max_position_embeddings"})
    with pytest.raises(ValueError, match="explicit attention_factor"):  # HF: ZeroDivisionError (ln 1)
        get_rope(16, 64, {**_longrope(16), "original_max_position_embeddings": 1})
    one = get_rope(16, 64, {**_longrope(16), "original_max_position_embeddings": 1, "attention_factor": 1.2})
    assert torch.equal(one.cos_sin_cache[0], one.cos_sin_cache[1])  # position 0: the same in both sets
    with pytest.raises(ValueError, match="partial_rotary_factor=0.1"):
        get_rope(16, 64, {"rope_theta": 10000.0, "partial_rotary_factor": 0.1})


def test_partial_rotary_cache_and_full_rotary_fast_path():
    partial = get_rope(16, 32, {"rope_theta": 10000.0, "partial_rotary_factor": 0.5})
    full = get_rope(8, 32, {"rope_theta": 10000.0})
    assert partial.rotary_dim == 8 and partial.cos_sin_cache.shape == (32, 8)
    torch.testing.assert_close(partial.cos_sin_cache, full.cos_sin_cache)  # same frequencies over 8 dims
    assert "rotary_dim=8" in repr(partial) and "rotary_dim" not in repr(full)
