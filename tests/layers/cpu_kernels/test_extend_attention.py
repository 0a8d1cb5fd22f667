"""sglkit's CPU extend (prefill) attention (sglkit/layers/cpu_kernels/extend_attention.py) against SDPA over
gathered K/V in float32: the kernel alone (float32 / bfloat16, GQA groups, head dims, new-token counts at the
32-token block edges, cached prefixes as after a radix hit or an earlier chunk, int32 / int64 tables, a padding
sink that must not leak, bad lengths), and through the torch_native backend, which takes it for layers without
options and falls back to SDPA, lazily, for a layer with a sliding window."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sglkit.core.forward_batch import ForwardMode
from sglkit.layers.attention.base import RadixAttention
from sglkit.layers.attention.cpu_kernel_paths import KernelExtendMetadata
from sglkit.layers.attention.torch_native import TorchNativeAttnBackend
from sglkit.layers.cpu_kernels.extend_attention import extend_attention, extend_attention_available
from tests.layers.test_torch_native_attention_paged import (
    HEAD_DIM,
    NUM_LAYERS,
    SCALING,
    forward_batch,
    make_paged,
    reference,
)

AVAILABLE = extend_attention_available(torch.float32, torch.float32, 64, 1)
pytestmark = pytest.mark.skipif(not AVAILABLE, reason="sglkit's CPU kernels do not run here (AVX-512 needed)")
DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)]


def sdpa_reference(q, k_buf, v_buf, table, rows, prefix, extend, scale) -> torch.Tensor:
    """q: [T, Hq, D] -> float32 [T, Hq, D]: per request, K/V gathered in token order, causal SDPA in float32."""
    out = torch.empty(q.shape, dtype=torch.float32)
    group = q.shape[1] // k_buf.shape[1]
    start = 0
    for b in range(len(rows)):
        total = prefix[b] + extend[b]
        idx = table[rows[b], :total].long()
        k = k_buf[idx].float().transpose(0, 1).repeat_interleave(group, 0)  # [Hq, L, D]
        v = v_buf[idx].float().transpose(0, 1).repeat_interleave(group, 0)
        qb = q[start : start + extend[b]].float().transpose(0, 1)  # [Hq, ext, D]
        mask = torch.arange(total)[None, :] <= torch.arange(prefix[b], total)[:, None]
        out[start : start + extend[b]] = F.scaled_dot_product_attention(
            qb, k, v, attn_mask=mask, scale=scale
        ).transpose(0, 1)
        start += extend[b]
    return out


def random_case(dtype, heads, kv_heads, head_dim, prefix, extend, table_dtype=torch.int32, seed=0):
    """Pool, table (distinct random slots per request, slot 0 a loud sink right after each), rows, q."""
    gen = torch.Generator().manual_seed(seed)
    slots = 1 + sum(prefix) + sum(extend) + 50
    k_buf = torch.randn(slots, kv_heads, head_dim, generator=gen).to(dtype)
    v_buf = torch.randn(slots, kv_heads, head_dim, generator=gen).to(dtype)
    k_buf[0], v_buf[0] = 50.0, 1e3
    rows = list(range(len(prefix)))[::-1]
    table = torch.zeros(len(prefix) + 1, max(p + e for p, e in zip(prefix, extend, strict=True)) + 8)
    table = table.to(table_dtype)
    free = (torch.randperm(slots - 1, generator=gen) + 1).tolist()
    for row, p, e in zip(rows, prefix, extend, strict=True):
        table[row, : p + e] = torch.tensor([free.pop() for _ in range(p + e)], dtype=table_dtype)
    q = torch.randn(sum(extend), heads, head_dim, generator=gen).to(dtype)
    return k_buf, v_buf, table, torch.tensor(rows), q


@pytest.mark.parametrize("dtype, tol", DTYPES)
@pytest.mark.parametrize(
    "heads, kv_heads, head_dim", [(15, 5, 64), (8, 8, 128), (4, 1, 80), (8, 2, 16), (2, 1, 256)]
)
@pytest.mark.parametrize("table_dtype", [torch.int32, torch.int64])
def test_kernel_equals_sdpa_over_gathered_kv(dtype, tol, heads, kv_heads, head_dim, table_dtype):
    prefix, extend = [0, 37, 5, 64, 0, 0], [1, 70, 33, 31, 65, 32]
    k_buf, v_buf, table, rows, q = random_case(dtype, heads, kv_heads, head_dim, prefix, extend, table_dtype)
    scale = head_dim**-0.5
    with torch.inference_mode():
        got = extend_attention(
            q, k_buf, v_buf, table, rows, torch.tensor(prefix), torch.tensor(extend), scale
        )
    assert got.dtype == dtype and got.shape == q.shape
    want = sdpa_reference(q, k_buf, v_buf, table, rows, prefix, extend, scale)
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)


def test_bfloat16_error_is_sdpas():
    """The bfloat16 kernel (P rounded for P.V) lands as close to float32 as bfloat16 SDPA does."""
    prefix, extend = [100], [200]
    k_buf, v_buf, table, rows, q = random_case(torch.bfloat16, 8, 2, 64, prefix, extend, seed=3)
    got = extend_attention(q, k_buf, v_buf, table, rows, torch.tensor(prefix), torch.tensor(extend), 0.125)
    want = sdpa_reference(q, k_buf, v_buf, table, rows, prefix, extend, 0.125)
    idx = table[0, :300].long()
    sdpa_bf16 = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        k_buf[idx].transpose(0, 1)[None],
        v_buf[idx].transpose(0, 1)[None],
        attn_mask=torch.arange(300)[None, :] <= torch.arange(100, 300)[:, None],
        scale=0.125,
        enable_gqa=True,
    )[0].transpose(0, 1)
    kernel_err = (got.float() - want).abs().mean()
    sdpa_err = (sdpa_bf16.float() - want).abs().mean()
    assert kernel_err < 2 * sdpa_err


def test_kernel_refuses_what_it_cannot_take():
    assert not extend_attention_available(torch.float16, torch.float16, 64, 1)
    assert not extend_attention_available(torch.bfloat16, torch.float32, 64, 1)
    assert not extend_attention_available(torch.float32, torch.float32, 8, 1)
    q, kv = torch.randn(3, 2, 64), torch.randn(10, 1, 64)
    table, row = torch.zeros(1, 4, dtype=torch.int64), torch.tensor([0])
    with pytest.raises(RuntimeError, match="outside the table"):
        extend_attention(q, kv, kv, table, row, torch.tensor([2]), torch.tensor([3]), 1.0)
    with pytest.raises(RuntimeError, match="sum to 2"):
        extend_attention(q, kv, kv, table, row, torch.tensor([0]), torch.tensor([2]), 1.0)


def extend_pass(paged, backend, reqs, prefix_lens):
    """An extend pass: request i has prefix_lens[i] cached tokens, the rest of its slots are new."""
    totals = [len(paged.kv[i]) for i in reqs]
    extend = [n - p for n, p in zip(totals, prefix_lens, strict=True)]
    return forward_batch(paged, backend, ForwardMode.EXTEND, reqs, prefix_lens, extend)


@pytest.mark.parametrize("num_heads, num_kv_heads", [(4, 4), (6, 2)])
def test_backend_takes_the_kernel_without_building_metadata(num_heads, num_kv_heads):
    paged = make_paged(num_kv_heads, seed=7)
    reqs = [paged.add_request(n) for n in (1, 40, 75, 33)]
    prefix = [0, 8, 40, 0]  # two radix hits / earlier chunks
    backend = TorchNativeAttnBackend()
    fb = extend_pass(paged, backend, reqs, prefix)
    backend.init_forward_metadata(fb)
    assert isinstance(fb.attn_metadata, KernelExtendMetadata)
    extend = [len(paged.kv[i]) - p for i, p in zip(reqs, prefix, strict=True)]
    q = torch.randn(sum(extend), num_heads, HEAD_DIM)
    for layer_id in range(NUM_LAYERS):
        attn = RadixAttention(layer_id, num_heads, num_kv_heads, HEAD_DIM, SCALING)
        out = backend.forward_extend(q, attn, fb)
        start = 0
        for i, p, e in zip(reqs, prefix, extend, strict=True):
            want = reference(paged, layer_id, i, q[start : start + e], list(range(p, p + e)), num_heads)
            torch.testing.assert_close(out[start : start + e], want, atol=1e-5, rtol=1e-5)
            start += e
    assert fb.attn_metadata.sdpa is None  # no layer needed SDPA's indices or masks


def test_backend_falls_back_to_sdpa_for_a_layer_with_options():
    paged = make_paged(2, seed=8)
    reqs = [paged.add_request(n) for n in (30, 12)]
    kernel, sdpa = TorchNativeAttnBackend(), TorchNativeAttnBackend(use_cpu_kernel=False)
    q = torch.randn(30 - 4 + 12, 4, HEAD_DIM)
    windowed = RadixAttention(0, 4, 2, HEAD_DIM, SCALING, sliding_window=8)
    fb_kernel, fb_sdpa = extend_pass(paged, kernel, reqs, [4, 0]), extend_pass(paged, sdpa, reqs, [4, 0])
    kernel.init_forward_metadata(fb_kernel)
    sdpa.init_forward_metadata(fb_sdpa)
    assert fb_kernel.attn_metadata.sdpa is None
    out = kernel.forward_extend(q, windowed, fb_kernel)
    assert fb_kernel.attn_metadata.sdpa is not None  # built on demand, once per pass
    torch.testing.assert_close(out, sdpa.forward_extend(q, windowed, fb_sdpa))
