"""oneDNN packing (sglkit/layers/quantization/packed.py): the blocked weight replaces the plain one, unpacks
exactly, multiplies as F.linear, falls back to F.linear where oneDNN cannot pack, and a load re-plains it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sglkit.layers.linear import Linear, RowParallelLinear
from sglkit.layers.quantization import DenseLinearMethod, PackedLinearMethod

GEN = torch.Generator().manual_seed(0)
MKLDNN = torch.backends.mkldnn.is_available()


def rand(*shape) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN)


def loaded(layer: Linear) -> Linear:
    for param in layer.parameters():
        param.weight_loader(param, rand(*param.shape))
    return layer


@pytest.mark.skipif(not MKLDNN, reason="oneDNN not built into this torch")
def test_float32_weight_is_packed_once_and_unpacks_exactly():
    layer = loaded(RowParallelLinear(96, 64, bias=True))
    weight = layer.weight.detach().clone()
    assert isinstance(layer.linear_method, PackedLinearMethod)  # the default method
    layer.set_linear_method(
        PackedLinearMethod(kernel="onednn")
    )  # not sglkit's kernel (tests/layers/cpu_kernels)
    assert layer.process_weights_after_loading() and layer.packed_weight is not None
    assert layer.packed_weight.is_mkldnn and layer.packed_weight.shape == (64, 96)
    assert layer.weight.shape == (64, 96) and layer.weight.stride() == (0, 0)  # the placeholder
    assert layer.linear_method.held_bytes() >= 64 * 96 * 4
    assert torch.equal(layer.dense_weight(), weight) and torch.equal(layer.state_dict()["weight"], weight)
    x = rand(7, 96)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, weight, layer.bias))
    assert layer.process_weights_after_loading()  # idempotent: already packed
    assert "method=packed" in repr(layer)


@pytest.mark.skipif(not MKLDNN, reason="oneDNN not built into this torch")
def test_autograd_and_other_dtypes_use_the_unpacked_weight():
    layer = loaded(Linear(32, 16, bias=False))
    weight = layer.weight.detach().clone()
    layer.process_weights_after_loading()
    x = rand(4, 32).requires_grad_()
    out = layer(x)
    out.sum().backward()  # through F.linear on the unpacked weight
    torch.testing.assert_close(x.grad, weight.sum(0).expand(4, 32))


def test_loading_into_a_packed_layer_makes_the_weight_plain_again():
    layer = loaded(Linear(32, 16, bias=True))
    layer.process_weights_after_loading()
    new = rand(16, 32)
    layer.weight.weight_loader(layer.weight, new)
    assert not layer.linear_method.processed and torch.equal(layer.weight, new)
    layer.process_weights_after_loading()
    other = {"weight": rand(16, 32), "bias": rand(16)}
    layer.load_state_dict(other)
    assert torch.equal(layer.weight, other["weight"]) and torch.equal(layer.bias, other["bias"])


def test_bfloat16_packs_only_where_onednn_can():
    layer = loaded(Linear(64, 32, bias=True, dtype=torch.bfloat16))
    weight = layer.weight.detach().clone()
    packed = layer.process_weights_after_loading()  # AVX-512 / AVX-NE-CONVERT CPUs: packed; others: plain
    assert packed == layer.linear_method.processed
    if not packed:
        assert torch.equal(layer.weight, weight) and layer.packed_weight is None
    x = rand(3, 64).bfloat16()
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, weight, layer.bias), atol=2e-2, rtol=2e-2)


def test_dense_method_keeps_the_plain_weight():
    layer = loaded(Linear(8, 4, bias=False))
    layer.set_linear_method(DenseLinearMethod())
    assert not layer.process_weights_after_loading()
    assert layer.linear_method.weight_bytes(layer) == 8 * 4 * 4 and "method=dense" in repr(layer)
