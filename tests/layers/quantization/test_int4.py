"""int4 group-wise weight-only linears (sglkit/layers/quantization/int4.py): the quantized values reproduce the
weight within half a step per group, the packed CPU kernel multiplies by exactly those values, K is padded to
the group, N not a multiple of 16 stays unquantized, and the dequantized weight reads back."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sglkit.layers.linear import Linear, MergedColumnParallelLinear
from sglkit.layers.quantization import Int4WeightOnlyMethod
from sglkit.layers.quantization.int4 import quantize_int4

GEN = torch.Generator().manual_seed(0)


def rand(*shape) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN)


def loaded(layer: Linear) -> Linear:
    for param in layer.parameters():
        param.weight_loader(param, 0.05 * rand(*param.shape))
    return layer


def dequantize(q: torch.Tensor, scale_and_zero: torch.Tensor, group_size: int) -> torch.Tensor:
    """(q - 8) * scale + zero per group: q [N, K], scale_and_zero [K / G, N, 2] -> [N, K] float32."""
    scale = scale_and_zero[..., 0].float().t().repeat_interleave(group_size, dim=1)  # [N, K]
    zero = scale_and_zero[..., 1].float().t().repeat_interleave(group_size, dim=1)
    return (q.float() - 8) * scale + zero


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_quantized_values_are_within_half_a_step_of_the_weight(group_size):
    w = rand(32, 256) * 0.05
    q, sz = quantize_int4(w, group_size)
    assert q.shape == (32, 256) and sz.shape == (256 // group_size, 32, 2) and sz.dtype == torch.bfloat16
    assert q.min() >= 0 and q.max() <= 15
    step = sz[..., 0].float().t().repeat_interleave(group_size, dim=1)
    # Half a step, plus the bf16 rounding of the zero point.
    assert ((dequantize(q, sz, group_size) - w).abs() <= step / 2 + 4e-3 * w.abs().max()).all()


@pytest.mark.parametrize("in_features, group_size", [(256, 64), (88, 32), (200, 128)])  # 88, 200: K padded
def test_kernel_multiplies_by_the_quantized_weight(in_features, group_size):
    layer = loaded(Linear(in_features, 48, bias=True, dtype=torch.float32))
    weight = layer.weight.detach().clone()
    q, sz = quantize_int4(weight, group_size)
    layer.set_linear_method(Int4WeightOnlyMethod(group_size))
    assert layer.process_weights_after_loading()
    x = rand(2, 3, in_features)
    with torch.inference_mode():
        out = layer(x)
    assert out.shape == (2, 3, 48) and out.dtype == torch.float32
    deq = dequantize(q, sz, group_size)[:, :in_features]
    expected = F.linear(x.bfloat16().float(), deq, layer.bias)
    torch.testing.assert_close(out, expected, atol=3e-2, rtol=1e-2)
    torch.testing.assert_close(layer.dense_weight(), deq.bfloat16().float(), atol=1e-6, rtol=0)
    assert layer.linear_method.weight_bytes(layer) == 48 * q.shape[1] // 2 + 4 * 48 * q.shape[1] // group_size


def test_output_features_not_a_multiple_of_16_keep_the_plain_weight():
    layer = loaded(MergedColumnParallelLinear(64, [20, 20], bias=False))
    layer.set_linear_method(Int4WeightOnlyMethod(32))
    assert not layer.process_weights_after_loading()
    assert layer.weight.untyped_storage().nbytes() == 40 * 64 * 4
    x = rand(3, 64)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight))


def test_group_sizes_are_checked():
    with pytest.raises(ValueError, match="group size must be one of"):
        Int4WeightOnlyMethod(48)
