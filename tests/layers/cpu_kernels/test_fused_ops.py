"""sglkit's fused CPU ops (sglkit/layers/cpu_kernels/fused_ops.py) against the layers' own torch code: RMSNorm
(plain, with the residual, float32-weight and Gemma numerics), RoPE (full and partial, llama3 frequencies,
strided q/k views of a fused qkv), SiLU-and-mul, and the torch_native backend's KV write; bit for bit where the
torch code's roundings are replayed, else to a float32 ulp. Also: the layers take them by default, the switch
turns them off, ``torch.compile`` tracing keeps the torch code, and bad slots or positions raise instead of
writing anywhere."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sglkit.cache.memory_pool import MHATokenToKVPool
from sglkit.core.forward_batch import ForwardBatch
from sglkit.layers.activation import SiluAndMul
from sglkit.layers.attention import cpu_kernel_paths
from sglkit.layers.attention.base import RadixAttention
from sglkit.layers.attention.cpu_kernel_paths import store
from sglkit.layers.attention.torch_native import TorchNativeAttnBackend
from sglkit.layers.cpu_kernels import fused_ops, load_kernels
from sglkit.layers.norm import Float32WeightRMSNorm, GemmaRMSNorm, RMSNorm
from sglkit.layers.rotary import get_rope

KERNELS = load_kernels()
AVAILABLE = KERNELS is not None and KERNELS.fused_ops_supported()
pytestmark = pytest.mark.skipif(not AVAILABLE, reason="sglkit's CPU kernels do not run here (AVX-512 needed)")
DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(autouse=True)
def fused_on():
    """The fused ops on for every test (whatever SGLKIT_CPU_FUSED_OPS says), the setting restored after."""
    old = fused_ops.set_cpu_fused_ops(True)
    yield
    fused_ops.set_cpu_fused_ops(old)


@pytest.fixture
def torch_code():
    """Run the enclosed calls on the layers' torch code, then switch the fused ops back on."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        old = fused_ops.set_cpu_fused_ops(False)
        try:
            yield
        finally:
            fused_ops.set_cpu_fused_ops(old)

    return ctx


def assert_close(got: torch.Tensor, want: torch.Tensor, exact: bool) -> None:
    """Bit for bit, or to a few float32 ulps (another summation order / exp's last bit)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    if exact:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", [RMSNorm, Float32WeightRMSNorm, GemmaRMSNorm])
@pytest.mark.parametrize("tokens,hidden", [(1, 960), (5, 100), (40, 16), (3, 17)])
def test_rms_norm_matches_torch(torch_code, dtype, cls, tokens, hidden):
    torch.manual_seed(0)
    norm = cls(hidden, eps=1e-5, dtype=dtype)
    norm.weight.data.normal_()
    x = torch.randn(tokens, hidden, dtype=dtype) * 3
    residual = torch.randn(tokens, hidden, dtype=dtype)
    with torch_code():
        want_out, want_res = norm(x, residual)
        want_plain = norm(x)
    fp32_weight = cls is not RMSNorm  # the layer takes the kernel for bfloat16 only; call it directly here
    got_out, got_res = fused_ops.rms_norm(x, norm.weight, 1e-5, residual, fp32_weight, norm.weight_offset)
    assert torch.equal(got_res, want_res)  # x + residual, rounded once, as torch
    # bfloat16 outputs round the float32 normalisation: a one-ulp float32 difference almost never shows
    assert_close(got_out, want_out, exact=False)
    assert_close(
        fused_ops.rms_norm(x, norm.weight, 1e-5, None, fp32_weight, norm.weight_offset),
        want_plain,
        exact=False,
    )
    if dtype == torch.bfloat16:
        assert (got_out != want_out).float().mean() < 0.01


def test_rms_norm_strided_rows_and_3d_input(torch_code):
    norm = RMSNorm(64, dtype=torch.bfloat16)
    norm.weight.data.normal_()
    wide = torch.randn(2, 3, 96, dtype=torch.bfloat16)
    x = wide[..., :64]  # rows of stride 96
    with torch_code():
        want = norm(x)
    got = norm(x)
    assert got.shape == (2, 3, 64) and torch.equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "rope_parameters",
    [
        {},
        {"partial_rotary_factor": 0.5},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 1024,
        },
    ],
)
@pytest.mark.parametrize("tokens", [1, 9, 70])
def test_rope_matches_torch_bit_for_bit(torch_code, dtype, rope_parameters, tokens):
    torch.manual_seed(0)
    rope = get_rope(64, 4096, {"rope_theta": 10000.0, **rope_parameters})
    qkv = torch.randn(tokens, 25 * 64, dtype=dtype)  # a fused projection: q and k are strided views of it
    q = qkv[:, : 15 * 64].view(tokens, 15, 64)
    k = qkv[:, 15 * 64 : 20 * 64].view(tokens, 5, 64)
    positions = torch.randint(0, 4096, (tokens,))
    with torch_code():
        want_q, want_k = rope(positions, q, k)
    got_q, got_k = rope(positions, q, k)
    assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)
    assert got_q.is_contiguous() and torch.equal(
        qkv[:, : 15 * 64].view(tokens, 15, 64), q
    )  # inputs untouched


def test_rope_head_dim_with_tails(torch_code):
    """Head dim 80, rotary dim 40 (a masked tail of 4 lanes per half) and 40 dims passed through."""
    rope = get_rope(80, 128, {"rope_theta": 500000.0, "partial_rotary_factor": 0.5})
    q, k = torch.randn(3, 4, 80, dtype=torch.bfloat16), torch.randn(3, 2, 80, dtype=torch.bfloat16)
    positions = torch.tensor([0, 5, 127])
    with torch_code():
        want = rope(positions, q, k)
    got = rope(positions, q, k)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_rope_position_outside_the_cache_raises():
    rope = get_rope(64, 16, {})
    q, k = torch.randn(1, 2, 64), torch.randn(1, 1, 64)
    with pytest.raises(RuntimeError, match="outside the rotary cache"):
        fused_ops.apply_rope(torch.tensor([16]), q, k, rope.cos_sin_cache, 64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 5120), (7, 2, 100), (33, 34)])
def test_silu_and_mul_matches_torch(torch_code, dtype, shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=dtype) * 4
    x[0, ..., 0] = -100.0  # e^100 clamps: silu -> -0
    act = SiluAndMul()
    with torch_code():
        want = act(x)
    got = act(x)
    # bfloat16: silu rounded before the multiply, as torch; float32: exp's last bit may differ
    assert_close(got, want, exact=False)
    if dtype == torch.bfloat16:
        assert (got != want).float().mean() < 0.01


def _kv_write_pass(pool: MHATokenToKVPool, loc: torch.Tensor) -> ForwardBatch:
    """The fields of a pass that the backend's KV write reads."""
    return SimpleNamespace(token_to_kv_pool=pool, out_cache_loc=loc)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kv_write_matches_the_pools_own(dtype):
    pool = MHATokenToKVPool(size=40, num_layers=2, num_kv_heads=5, head_dim=64, dtype=dtype)
    ref = MHATokenToKVPool(size=40, num_layers=2, num_kv_heads=5, head_dim=64, dtype=dtype)
    qkv = torch.randn(6, 25 * 64, dtype=dtype)
    k = qkv[:, 15 * 64 : 20 * 64].view(6, 5, 64)  # strided tokens, contiguous heads
    v = qkv[:, 20 * 64 :].view(6, 5, 64)
    loc = torch.tensor([3, 1, 40, 7, 8, 2])
    layer = RadixAttention(1, 15, 5, 64, 0.125)
    assert store(layer, _kv_write_pass(pool, loc), k, v)
    ref.set_kv_buffer(1, loc, k, v)
    for got, want in zip(pool.get_kv_buffer(1), ref.get_kv_buffer(1), strict=True):
        assert torch.equal(got, want)
    assert not pool.k_buffer[0].any()
    assert not store(
        layer, _kv_write_pass(pool, loc), k.float().half(), v.half()
    )  # another dtype: the pool's


def test_kv_write_outside_the_pool_raises_and_writes_nothing():
    pool = MHATokenToKVPool(size=8, num_layers=1, num_kv_heads=1, head_dim=16, dtype=torch.float32)
    k = v = torch.ones(2, 1, 16)
    with pytest.raises(RuntimeError, match="outside the pool"):
        store(RadixAttention(0, 1, 1, 16, 0.25), _kv_write_pass(pool, torch.tensor([1, 9])), k, v)
    assert not pool.k_buffer[0].any() and not pool.v_buffer[0].any()


def test_switch_and_compile_tracing_keep_the_torch_code(monkeypatch):
    x = torch.randn(2, 8)
    assert fused_ops.cpu_fused_ops_enabled(x)
    assert not fused_ops.cpu_fused_ops_enabled(x.half())  # float32 / bfloat16 only
    old = fused_ops.set_cpu_fused_ops(False)
    try:
        assert not fused_ops.cpu_fused_ops_enabled(x)
    finally:
        fused_ops.set_cpu_fused_ops(old)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not fused_ops.cpu_fused_ops_enabled(x)
    # A trace must not reach the extension's loader (its lock is a graph break that sent every decoder layer of
    # a compiled decode back to eager): with nothing loaded yet, the answer comes before the loader is asked.
    monkeypatch.setattr(fused_ops, "_available", None)
    monkeypatch.setattr(fused_ops, "load_kernels", lambda: pytest.fail("the loader was called while tracing"))
    assert not fused_ops.cpu_fused_ops_enabled(x)


def test_layers_call_the_fused_ops(monkeypatch):
    calls: list[str] = []
    for name in ("rms_norm", "apply_rope", "silu_and_mul", "store_kv"):
        real = getattr(fused_ops, name)
        monkeypatch.setattr(
            fused_ops, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k)
        )
    monkeypatch.setattr(cpu_kernel_paths, "store_kv", fused_ops.store_kv)
    RMSNorm(16, dtype=torch.bfloat16)(torch.randn(2, 16, dtype=torch.bfloat16))
    get_rope(16, 8, {})(torch.tensor([1, 2]), torch.randn(2, 2, 16), torch.randn(2, 1, 16))
    SiluAndMul()(torch.randn(2, 32))
    pool = MHATokenToKVPool(size=4, num_layers=1, num_kv_heads=1, head_dim=16, dtype=torch.float32)
    kv_write = _kv_write_pass(pool, torch.tensor([1]))
    TorchNativeAttnBackend().set_kv_buffer(
        RadixAttention(0, 1, 1, 16, 0.25), kv_write, *torch.randn(2, 1, 1, 16)
    )
    assert calls == ["rms_norm", "apply_rope", "silu_and_mul", "store_kv"]
