"""sglkit's CPU GEMM (sglkit/layers/cpu_kernels): the blocked layout round-trips exactly, the kernel equals a float32
reference (rounded to bfloat16 for bfloat16) over row / block tails, biases, thread counts and leading dims, and
the packed linear method uses it where the CPU runs it (oneDNN where told or elsewhere)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sglkit.layers import cpu_kernels
from sglkit.layers.cpu_kernels.blocked_gemm import (
    BlockedWeight,
    block_weight,
    blocked_gemm_available,
    blocked_linear,
)
from sglkit.layers.linear import Linear
from sglkit.layers.quantization.packed import PackedLinearMethod, pack_weight, packed_nbytes

GEN = torch.Generator().manual_seed(0)
AVAILABLE = {
    dtype: blocked_gemm_available(dtype) for dtype in (torch.bfloat16, torch.float32)
}  # builds it once
needs_kernel = pytest.mark.skipif(not AVAILABLE[torch.bfloat16], reason="no AVX512-BF16 (or no compiler)")
DTYPES = [
    pytest.param(
        dtype, marks=pytest.mark.skipif(not AVAILABLE[dtype], reason=f"no {dtype} kernel on this CPU")
    )
    for dtype in (torch.bfloat16, torch.float32)
]


def rand(*shape, dtype=torch.bfloat16) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN).to(dtype)


def reference(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """float32 GEMM of the same values, rounded to x's dtype as the kernel rounds its output."""
    out = F.linear(x.float(), w.float(), None if bias is None else bias.float())
    return out.to(x.dtype)


def assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    """fp32 sums in another order: one bf16 rounding step apart, or float32 round-off."""
    tol = 1e-2 if got.dtype == torch.bfloat16 else 1e-4
    assert got.dtype == expected.dtype
    torch.testing.assert_close(got.float(), expected.float(), rtol=tol, atol=tol)


def test_layout_refuses_what_the_kernel_cannot_take():
    assert block_weight(rand(16, 32, dtype=torch.float16)) is None  # float16: no kernel
    assert block_weight(rand(16, 31)) is None  # bfloat16 with K odd: pairs of columns
    assert block_weight(rand(2, 3, 4)) is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 15, 16, 17, 33, 50])
def test_layout_round_trips_exactly(n, dtype):
    w = rand(n, 40, dtype=dtype)
    group = 2 if dtype == torch.bfloat16 else 1
    blocked = block_weight(w)
    assert isinstance(blocked, BlockedWeight) and blocked.dtype == dtype
    assert blocked.data.shape == (-(-n // 16), 40 // group, 16, group)
    assert blocked.nbytes() == -(-n // 16) * 16 * 40 * w.element_size()
    assert torch.equal(blocked.to_dense(), w)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 2, 3, 5, 11, 12, 13, 14, 15, 25, 28, 29, 40])
@pytest.mark.parametrize("n,k", [(1, 2), (15, 64), (17, 96), (50, 130), (96, 960)])
def test_kernel_equals_a_float32_reference(m, n, k, dtype):
    x, w, bias = rand(m, k, dtype=dtype), rand(n, k, dtype=dtype), rand(n, dtype=dtype)
    blocked = block_weight(w)
    with torch.inference_mode():
        for b in (None, bias):
            got = blocked_linear(x, blocked, b)
            assert got.shape == (m, n)
            assert_close(got, reference(x, w, b))


def test_float32_takes_odd_columns():
    if not AVAILABLE[torch.float32]:
        pytest.skip("no float32 kernel on this CPU")
    x, w = rand(3, 7, dtype=torch.float32), rand(20, 7, dtype=torch.float32)
    assert_close(blocked_linear(x, block_weight(w)), reference(x, w))


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_takes_leading_dims_empty_batches_and_any_thread_count(dtype):
    x, w = rand(2, 3, 64, dtype=dtype), rand(48, 64, dtype=dtype)
    blocked = block_weight(w)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(blocked_linear(x, blocked))
    finally:
        torch.set_num_threads(threads)
    assert outs[0].shape == (2, 3, 48)
    assert all(torch.equal(o, outs[0]) for o in outs)  # each output column is summed by one thread
    assert_close(outs[0], reference(x, w))
    assert blocked_linear(rand(0, 64, dtype=dtype), blocked).shape == (0, 48)
    with pytest.raises(RuntimeError, match="columns"):
        blocked_linear(rand(1, 62, dtype=dtype), blocked)
    with pytest.raises(RuntimeError, match="weight's dtype"):
        blocked_linear(rand(1, 64, dtype=torch.float16), blocked)


@needs_kernel
def test_packed_method_uses_the_kernel_and_onednn_when_told():
    weight, bias = rand(40, 64), rand(40)
    layer = Linear(64, 40, bias=True, dtype=torch.bfloat16)
    layer.weight.weight_loader(layer.weight, weight)
    layer.bias.weight_loader(layer.bias, bias)
    assert layer.process_weights_after_loading()
    method = layer.linear_method
    assert (
        isinstance(method.packed, BlockedWeight) and layer.packed_weight is None
    )  # no oneDNN fused ops on it
    assert method.held_bytes() == packed_nbytes(method.packed) == 48 * 64 * 2
    assert torch.equal(layer.dense_weight(), weight) and torch.equal(layer.state_dict()["weight"], weight)
    x = rand(5, 64)
    with torch.inference_mode():
        assert_close(layer(x), reference(x, weight, bias))
    onednn = pack_weight(weight, kernel="onednn")
    assert onednn is None or onednn.is_mkldnn  # oneDNN packs bf16 on AVX-512 CPUs
    layer.set_linear_method(PackedLinearMethod(kernel="onednn"))
    assert torch.equal(layer.weight, weight)  # restored from the blocked form, then re-packed by oneDNN
    layer.process_weights_after_loading()
    assert not isinstance(layer.linear_method.packed, BlockedWeight)


def test_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="kernel must be one of"):
        pack_weight(rand(4, 4), kernel="mkl")


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_tried", False)
    monkeypatch.setattr(cpu_kernels, "_kernels", None)
    monkeypatch.setenv("SGLKIT_CPU_GEMM", "onednn")  # or SGLKIT_CPU_KERNELS=0
    assert not blocked_gemm_available() and block_weight(rand(16, 32, dtype=torch.float32)) is None
    with pytest.raises(RuntimeError, match="not available"):
        blocked_linear(rand(1, 32), BlockedWeight(torch.zeros(1, 16, 16, 2, dtype=torch.bfloat16), 16, 32))


@needs_kernel
@pytest.mark.parametrize("n", [16, 50, 5120])
@pytest.mark.parametrize("rows", [1, 3, 12, 13, 14, 15, 40])
def test_int8_weights_equal_the_dequantized_gemm(n, rows):
    """int8 blocks widened to bfloat16 for vdpbf16ps, the row scale after the sum, bias added: the float32 GEMM of
    bfloat16 x with q * scale, one bfloat16 rounding apart."""
    from sglkit.layers.quantization.int8 import quantize_int8

    q, scales = quantize_int8(rand(n, 96, dtype=torch.float32), 96)
    blocked = block_weight(q, scales)
    assert blocked is not None and blocked.data.dtype == torch.int8 and torch.equal(blocked.to_dense(), q)
    assert blocked.nbytes() == -(-n // 16) * 16 * 96 + 2 * n
    x, bias = rand(rows, 96), rand(n)
    got = blocked_linear(x, blocked, bias)
    dequantized = q.float() * scales.float()[:, None]
    assert_close(got, reference(x, dequantized, bias).to(torch.bfloat16))
    with pytest.raises(ValueError, match="needs scales"):
        block_weight(q)


@needs_kernel
def test_int8wo_method_holds_the_blocked_layout():
    from sglkit.layers.quantization import Int8WeightOnlyMethod

    layer = Linear(64, 48, bias=False, dtype=torch.bfloat16)
    layer.weight.data.copy_(rand(48, 64))
    layer.set_linear_method(Int8WeightOnlyMethod())
    assert layer.process_weights_after_loading()
    method = layer.linear_method
    assert method.blocked is not None and method.qweight is None  # held once, in the kernel's layout
    assert method.held_bytes() == 48 * 64 + 2 * 48
    x = rand(5, 64)
    dequantized = method.blocked.to_dense().float() * method.scales.float()[:, None]  # float32: not rounded
    assert_close(layer(x), reference(x, dequantized).to(torch.bfloat16))
    torch.testing.assert_close(method.unpack(layer), dequantized.to(torch.bfloat16))
