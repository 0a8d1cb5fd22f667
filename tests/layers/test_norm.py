"""RMSNorm vs HF LlamaRMSNorm, including the fused residual add."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from sglkit.layers.norm import RMSNorm


def _pair(hidden: int, dtype: torch.dtype) -> tuple[RMSNorm, LlamaRMSNorm]:
    weight = 1.0 + 0.1 * torch.randn(hidden, generator=torch.Generator().manual_seed(1))
    ours, ref = RMSNorm(hidden, eps=1e-5, dtype=dtype), LlamaRMSNorm(hidden, eps=1e-5).to(dtype)
    with torch.no_grad():
        ours.weight.copy_(weight)
        ref.weight.copy_(weight)
    return ours, ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_transformers(dtype):
    ours, ref = _pair(64, dtype)
    x = (3 * torch.randn(7, 64, generator=torch.Generator().manual_seed(2))).to(dtype)
    with torch.no_grad():
        out = ours(x)
        assert out.dtype == dtype
        assert torch.equal(out, ref(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_residual_add(dtype):
    ours, ref = _pair(32, dtype)
    gen = torch.Generator().manual_seed(3)
    x, residual = torch.randn(5, 32, generator=gen).to(dtype), torch.randn(5, 32, generator=gen).to(dtype)
    with torch.no_grad():
        normed, new_residual = ours(x, residual)
        assert torch.equal(new_residual, residual + x)
        assert torch.equal(normed, ref(residual + x))


def test_normalizes_over_last_dim_of_per_head_input():
    norm = RMSNorm(16)
    x = torch.randn(3, 4, 16)  # [T, H, D] as used by Qwen3's q/k norm
    out = norm(x)
    torch.testing.assert_close(out.pow(2).mean(-1), torch.ones(3, 4), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family", ["gemma2", "gemma3", "olmo2"])
def test_float32_weight_variants_match_transformers(family, dtype):
    """Gemma's (1 + w) norm and OLMo 2's norm multiply by the weight in float32, then cast: bit-equal to HF."""
    from transformers.models.gemma2.modeling_gemma2 import Gemma2RMSNorm
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
    from transformers.models.olmo2.modeling_olmo2 import Olmo2RMSNorm

    from sglkit.layers.norm import Float32WeightRMSNorm, GemmaRMSNorm

    ours_cls, ref_cls, center = {
        "gemma2": (GemmaRMSNorm, Gemma2RMSNorm, 0.0),
        "gemma3": (GemmaRMSNorm, Gemma3RMSNorm, 0.0),
        "olmo2": (Float32WeightRMSNorm, Olmo2RMSNorm, 1.0),
    }[family]
    weight = center + 0.3 * torch.randn(64, generator=torch.Generator().manual_seed(1))
    ours, ref = ours_cls(64, eps=1e-6, dtype=dtype), ref_cls(64, eps=1e-6).to(dtype)
    with torch.no_grad():
        ours.weight.copy_(weight)
        ref.weight.copy_(weight)
        x = (3 * torch.randn(7, 64, generator=torch.Generator().manual_seed(2))).to(dtype)
        assert torch.equal(ours(x), ref(x)) and ours(x).dtype == dtype
        residual = torch.randn(7, 64, generator=torch.Generator().manual_seed(3)).to(dtype)
        normed, summed = ours(x, residual)
        assert torch.equal(summed, residual + x) and torch.equal(normed, ref(residual + x))


def test_gemma_norm_starts_as_identity_scale():
    from sglkit.layers.norm import GemmaRMSNorm

    norm = GemmaRMSNorm(16)
    assert torch.equal(norm.weight, torch.zeros(16))
    x = torch.randn(3, 16)
    torch.testing.assert_close(norm(x), RMSNorm(16)(x))
