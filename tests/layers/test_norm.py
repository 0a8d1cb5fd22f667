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
