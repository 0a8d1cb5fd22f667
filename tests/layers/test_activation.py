"""Gated activations (sglkit/layers/activation.py): [T, 2I] -> [T, I] equals HF's ACT2FN[hidden_act](gate) * up."""

from __future__ import annotations

import pytest
import torch
from transformers.activations import ACT2FN

from sglkit.layers.activation import GeluAndMul, SiluAndMul, get_act_and_mul


def test_matches_transformers_gated_silu():
    gen = torch.Generator().manual_seed(0)
    gate, up = torch.randn(6, 24, generator=gen), torch.randn(6, 24, generator=gen)
    out = SiluAndMul()(torch.cat([gate, up], dim=-1))
    assert out.shape == (6, 24)
    torch.testing.assert_close(out, ACT2FN["silu"](gate) * up, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("hidden_act", ["silu", "gelu", "gelu_pytorch_tanh"])
def test_get_act_and_mul_matches_transformers_act2fn(hidden_act):
    gen = torch.Generator().manual_seed(1)
    gate, up = 3 * torch.randn(5, 16, generator=gen), torch.randn(5, 16, generator=gen)
    act = get_act_and_mul(hidden_act)
    assert isinstance(act, SiluAndMul if hidden_act == "silu" else GeluAndMul)
    out = act(torch.cat([gate, up], dim=-1))
    torch.testing.assert_close(out, ACT2FN[hidden_act](gate) * up, atol=1e-6, rtol=1e-6)


def test_unknown_activation_is_named():
    with pytest.raises(
        ValueError, match=r"Unsupported hidden_act 'relu2'.*'gelu', 'gelu_pytorch_tanh', 'silu'"
    ):
        get_act_and_mul("relu2")
