"""int8 weight-only linears (sglkit/layers/quantization/int8.py): per-channel quantization error bounded by half
a step, the CPU kernel equal to F.linear on the dequantized weight, odd K padded, unaligned inputs, held bytes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sglkit.layers.linear import Linear, QKVParallelLinear, RowParallelLinear
from sglkit.layers.quantization import Int8WeightOnlyMethod
from sglkit.layers.quantization.int8 import DEQUANT_MIN_ROWS, quantize_int8

GEN = torch.Generator().manual_seed(0)


def rand(*shape) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN)


def loaded(layer: Linear) -> Linear:
    """Fill the layer's parameters through their loaders (weights ~ 0.05 N(0, 1)), as a checkpoint would."""
    for param in layer.parameters():
        param.weight_loader(param, 0.05 * rand(*param.shape))
    return layer


def test_quantization_error_is_at_most_half_a_step_per_channel():
    w = rand(48, 64) * torch.linspace(0.01, 2.0, 48)[:, None]  # channels of very different ranges
    w[3] = 0.0  # an all-zero channel: no division by zero
    q, scales = quantize_int8(w, 64)
    assert q.dtype == torch.int8 and scales.dtype == torch.bfloat16 and q.abs().max() <= 127
    deq = q.float() * scales.float()[:, None]
    assert torch.equal(deq[3], torch.zeros(64))
    assert ((deq - w).abs() <= scales.float()[:, None] / 2 + 1e-7).all()
    q_pad, _ = quantize_int8(w[:, :40], 48)
    assert q_pad.shape == (48, 48) and torch.equal(q_pad[:, 40:], torch.zeros(48, 8, dtype=torch.int8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("in_features", [64, 40])  # 40: padded to 48 for the kernel's 16-wide steps
@pytest.mark.parametrize("rows", [5, DEQUANT_MIN_ROWS])  # the int8 kernel; F.linear on a transient fp32 copy
def test_kernel_equals_f_linear_on_the_dequantized_weight(dtype, in_features, rows):
    layer = loaded(Linear(in_features, 32, bias=True, dtype=dtype))
    weight = layer.weight.detach().clone()
    layer.set_linear_method(Int8WeightOnlyMethod())
    assert layer.process_weights_after_loading()
    x = rand(1, rows, in_features).to(dtype)  # any leading dims
    with torch.inference_mode():
        out = layer(x)
    assert out.shape == (1, rows, 32) and out.dtype == dtype
    deq = layer.dense_weight()
    assert deq.dtype == dtype and deq.shape == weight.shape
    # The kernel sees bf16 activations and scales: the same product, up to bf16 rounding of the output.
    x_seen = x.bfloat16().float() if rows < DEQUANT_MIN_ROWS else x.float()
    expected = F.linear(x_seen, layer.linear_method.unpack(layer).float(), layer.bias.float())
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=1e-2)
    reference = F.linear(x.float(), weight.float(), layer.bias.float())  # the unquantized layer
    assert (out.float() - reference).abs().max() < 0.03 * reference.abs().max()


def test_unaligned_and_empty_inputs():
    layer = loaded(Linear(64, 32, bias=False, dtype=torch.bfloat16))
    layer.set_linear_method(Int8WeightOnlyMethod())
    layer.process_weights_after_loading()
    buffer = rand(6 * 64 + 1).bfloat16()
    x = buffer[1:].view(6, 64)  # contiguous, 2 bytes past an aligned address (the kernel loads aligned rows)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), layer(x.clone()), atol=0, rtol=0)
        assert layer(torch.empty(0, 64, dtype=torch.bfloat16)).shape == (0, 32)


def test_fused_layers_hold_a_quarter_of_float32():
    qkv = loaded(QKVParallelLinear(64, 16, 4, 2, bias=False))
    row = loaded(RowParallelLinear(128, 64, bias=False))
    for layer in (qkv, row):
        before = layer.linear_method.weight_bytes(layer)
        layer.set_linear_method(Int8WeightOnlyMethod())
        layer.process_weights_after_loading()
        n, k = layer.weight.shape
        assert layer.linear_method.weight_bytes(layer) == n * k + 2 * n == before // 4 + 2 * n
        assert (
            layer.weight.untyped_storage().nbytes() == layer.weight.element_size()
        )  # the plain copy is gone


def test_refused_off_cpu():
    layer = Linear(64, 32, bias=False, dtype=torch.float32).to("meta")
    layer.set_linear_method(Int8WeightOnlyMethod())
    with pytest.raises(ValueError, match="CPU weights only"):
        layer.process_weights_after_loading()
