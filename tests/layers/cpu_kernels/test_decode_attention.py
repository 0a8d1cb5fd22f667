"""sglkit's CPU decode attention (sglkit/layers/cpu_kernels/decode_attention.py) against SDPA over gathered K/V:
the kernel alone (float32 / bfloat16, GQA groups, head dims, int32 / int64 tables, a padding sink that must not
leak), and through the torch_native backend, which takes it for decode layers without options (no metadata
built) and falls back to SDPA, lazily, for a layer with a sliding window."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sglkit.core.forward_batch import ForwardMode
from sglkit.layers.attention.base import RadixAttention
from sglkit.layers.attention.torch_native import TorchNativeAttnBackend, _KernelDecodeMetadata
from sglkit.layers.cpu_kernels.decode_attention import decode_attention, decode_attention_available
from tests.layers.test_torch_native_attention_paged import (
    HEAD_DIM,
    NUM_LAYERS,
    SCALING,
    decode_batch,
    make_paged,
    reference,
)

AVAILABLE = decode_attention_available(torch.float32, torch.float32, 64, 1)
pytestmark = pytest.mark.skipif(not AVAILABLE, reason="sglkit's CPU kernels do not run here (AVX-512 needed)")


def sdpa_reference(q, k_buf, v_buf, table, rows, lens, scale) -> torch.Tensor:
    """q: [B, Hq, D] -> float32 [B, Hq, D]: each request's K/V gathered in token order, SDPA in float32."""
    out = torch.empty(q.shape, dtype=torch.float32)
    group = q.shape[1] // k_buf.shape[1]
    for b in range(q.shape[0]):
        idx = table[rows[b], : lens[b]].long()
        k = k_buf[idx].float().transpose(0, 1)  # [Hkv, L, D]
        v = v_buf[idx].float().transpose(0, 1)
        qb = q[b].float().view(k.shape[0], group, -1)  # [Hkv, G, D]
        out[b] = F.scaled_dot_product_attention(qb, k, v, scale=scale).reshape(q.shape[1], -1)
    return out


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("heads, kv_heads, head_dim", [(15, 5, 64), (8, 8, 128), (4, 1, 80), (6, 2, 16)])
@pytest.mark.parametrize("table_dtype", [torch.int32, torch.int64])
def test_kernel_equals_sdpa_over_gathered_kv(dtype, tol, heads, kv_heads, head_dim, table_dtype):
    gen = torch.Generator().manual_seed(heads * head_dim)
    slots, rows, context = 3000, 6, 700
    k_buf = torch.randn(slots, kv_heads, head_dim, generator=gen).to(dtype)
    v_buf = torch.randn(slots, kv_heads, head_dim, generator=gen).to(dtype)
    k_buf[0], v_buf[0] = 50.0, 1e3  # the padding sink: any read past a request's length shows
    table = torch.randint(1, slots, (rows, context), generator=gen).to(table_dtype)
    req_rows, lens = torch.tensor([3, 0, 5, 2, 1]), torch.tensor([1, 17, 700, 33, 16])
    table[req_rows[0], 1:] = 0  # slot 0 right after a request's last token
    q = torch.randn(5, heads, head_dim, generator=gen).to(dtype)
    with torch.inference_mode():
        got = decode_attention(q, k_buf, v_buf, table, req_rows, lens, head_dim**-0.5)
    assert got.dtype == dtype and got.shape == q.shape
    want = sdpa_reference(q, k_buf, v_buf, table, req_rows, lens, head_dim**-0.5)
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize(
    "heads, kv_heads, head_dim, lens",
    [
        (15, 5, 64, [4000, 3, 1500]),  # longer than the V rows prefetched before the V pass (256 KB)
        (32, 2, 64, [300, 41]),  # 16 query heads per KV head: one task per KV head
        (12, 4, 48, [129]),  # one request: its KV heads split over tasks; bfloat16 rows of 1.5 vectors
        (8, 1, 256, [77, 700]),
        (28, 4, 112, [1, 2, 250]),
    ],
)
def test_kernel_takes_long_contexts_big_groups_and_odd_shapes(dtype, tol, heads, kv_heads, head_dim, lens):
    gen = torch.Generator().manual_seed(len(lens) * head_dim)
    slots, context = 9000, max(lens)
    k_buf = torch.randn(slots, kv_heads, head_dim, generator=gen).to(dtype)
    v_buf = torch.randn(slots, kv_heads, head_dim, generator=gen).to(dtype)
    table = torch.randint(0, slots, (len(lens), context), generator=gen, dtype=torch.int32)
    req_rows, lens = torch.arange(len(lens)).flip(0), torch.tensor(lens)
    q = torch.randn(len(lens), heads, head_dim, generator=gen).to(dtype) * 3  # peaked softmaxes too
    with torch.inference_mode():
        got = decode_attention(q, k_buf, v_buf, table, req_rows, lens, head_dim**-0.5)
    want = sdpa_reference(q, k_buf, v_buf, table, req_rows, lens, head_dim**-0.5)
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_gives_the_same_bits_on_any_thread_count(dtype):
    """How tasks split a request's KV heads (by batch size and threads) never changes a query head's result."""
    gen = torch.Generator().manual_seed(7)
    k_buf = torch.randn(2000, 5, 64, generator=gen).to(dtype)
    v_buf = torch.randn(2000, 5, 64, generator=gen).to(dtype)
    table = torch.randint(0, 2000, (3, 500), generator=gen, dtype=torch.int32)
    q = torch.randn(3, 15, 64, generator=gen).to(dtype)
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            for rows in (torch.tensor([0, 1, 2]), torch.tensor([1])):  # 3 requests, then request 1 alone
                lens = torch.tensor([500, 77, 300])[rows]
                with torch.inference_mode():
                    outs.append(decode_attention(q[rows], k_buf, v_buf, table, rows, lens, 0.125))
    finally:
        torch.set_num_threads(threads)
    for i, out in enumerate(outs):
        assert torch.equal(out, outs[i % 2]), f"run {i}"
    assert torch.equal(outs[1][0], outs[0][1])  # request 1 alone (KV heads split over tasks) = in the batch


def test_kernel_refuses_what_it_cannot_take():
    assert not decode_attention_available(torch.float16, torch.float16, 64, 1)
    assert not decode_attention_available(torch.bfloat16, torch.float32, 64, 1)  # q and KV of one dtype
    assert not decode_attention_available(torch.float32, torch.float32, 8, 1)  # head dim not a multiple of 16
    q, kv = torch.randn(1, 2, 64), torch.randn(10, 1, 64)
    table, row, length = torch.zeros(1, 4, dtype=torch.int64), torch.tensor([0]), torch.tensor([5])
    with pytest.raises(RuntimeError, match="outside the table"):
        decode_attention(q, kv, kv, table, row, length, 1.0)


@pytest.mark.parametrize("num_heads, num_kv_heads", [(4, 4), (6, 2)])
def test_backend_takes_the_kernel_without_building_metadata(num_heads, num_kv_heads):
    paged = make_paged(num_kv_heads, seed=5)
    reqs = [paged.add_request(n) for n in (1, 9, 40, 23)]
    backend = TorchNativeAttnBackend()
    fb = decode_batch(paged, backend, reqs)
    backend.init_forward_metadata(fb)
    assert isinstance(fb.attn_metadata, _KernelDecodeMetadata) and backend.workspace is None
    q = torch.randn(len(reqs), num_heads, HEAD_DIM)
    for layer_id in range(NUM_LAYERS):
        attn = RadixAttention(layer_id, num_heads, num_kv_heads, HEAD_DIM, SCALING)
        out = backend.forward_decode(q, attn, fb)
        for b, i in enumerate(reqs):
            want = reference(paged, layer_id, i, q[b : b + 1], [len(paged.kv[i]) - 1], num_heads)
            torch.testing.assert_close(out[b : b + 1], want, atol=1e-5, rtol=1e-5)
    assert fb.attn_metadata.sdpa is None  # no layer needed SDPA's indices or masks


def test_backend_falls_back_to_sdpa_for_a_layer_with_options():
    paged = make_paged(2, seed=6)
    reqs = [paged.add_request(n) for n in (30, 12)]
    kernel, sdpa = TorchNativeAttnBackend(), TorchNativeAttnBackend(use_cpu_kernel=False)
    q = torch.randn(len(reqs), 4, HEAD_DIM)
    windowed = RadixAttention(0, 4, 2, HEAD_DIM, SCALING, sliding_window=8)
    fb_kernel, fb_sdpa = decode_batch(paged, kernel, reqs), decode_batch(paged, sdpa, reqs)
    kernel.init_forward_metadata(fb_kernel)
    sdpa.init_forward_metadata(fb_sdpa)
    assert fb_kernel.forward_mode == ForwardMode.DECODE and fb_kernel.attn_metadata.sdpa is None
    out = kernel.forward_decode(q, windowed, fb_kernel)
    assert fb_kernel.attn_metadata.sdpa is not None  # built on demand, once per pass
    torch.testing.assert_close(out, sdpa.forward_decode(q, windowed, fb_sdpa))
