"""SiluAndMul: [T, 2I] -> [T, I] equals HF Llama's silu(gate) * up."""

from __future__ import annotations

import torch
from transformers.activations import ACT2FN

from sglkit.layers.activation import SiluAndMul


def test_matches_transformers_gated_silu():
    gen = torch.Generator().manual_seed(0)
    gate, up = torch.randn(6, 24, generator=gen), torch.randn(6, 24, generator=gen)
    out = SiluAndMul()(torch.cat([gate, up], dim=-1))
    assert out.shape == (6, 24)
    torch.testing.assert_close(out, ACT2FN["silu"](gate) * up, atol=1e-6, rtol=1e-6)
