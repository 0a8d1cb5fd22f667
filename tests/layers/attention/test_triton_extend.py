"""Triton extend attention (triton_ops.extend_attention) against a float64 reference.

New tokens attend causally over prefix (from the pool) + new tokens: prefill without a prefix, radix hits and
chunked prefill (prefix lengths differ per request), GQA groups 1/4/8, head dims 64/128, float32/float16 (bf16
through the upcast path), sliding window and soft-cap. Run on a GPU, or on CPU under Triton's interpreter via
test_triton_interpreter.py (a child process).
"""

from __future__ import annotations

from itertools import accumulate

import pytest
import torch

from tests.layers.attention.triton_cases import (
    DEVICE,
    SCALING,
    assert_close,
    make_paged,
    needs_triton,
    reference,
)

pytest.importorskip("triton")
pytestmark = needs_triton

# (prefix, new tokens) per request: no prefix, prefixes at block edges, a one-token extend, a long one.
CASES = [(0, 1), (0, 31), (32, 33), (150, 50), (7, 1), (31, 70)]


def run_extend(paged, reqs, prefix_lens, q, **options):
    """q: [T, Hq, D] packed new tokens of ``reqs`` (request i's at positions prefix_i..len-1) -> [T, Hq, D]."""
    from sglkit.layers.attention.triton_ops.extend_attention import extend_attention
    from sglkit.layers.attention.triton_ops.kv_indices import build_kv_indices, build_kv_indptr

    lens = [len(paged.kv[i]) for i in reqs]
    ext = [n - p for n, p in zip(lens, prefix_lens)]
    seq_lens = torch.tensor(lens, device=DEVICE)
    kv_indptr = build_kv_indptr(seq_lens)
    kv_indices = torch.empty(sum(lens), dtype=torch.int32, device=DEVICE)
    rows = torch.tensor([paged.rows[i] for i in reqs], device=DEVICE)
    build_kv_indices(paged.r2t.req_to_token, rows, seq_lens, kv_indptr, kv_indices)
    qo_indptr = torch.tensor([0, *accumulate(ext)], dtype=torch.int32, device=DEVICE)
    prefix = torch.tensor(prefix_lens, dtype=torch.int32, device=DEVICE)
    k_buf, v_buf = paged.pool.get_kv_buffer(0)
    out = torch.empty_like(q)
    extend_attention(
        q, out, k_buf, v_buf, qo_indptr, prefix, kv_indptr, kv_indices, max(ext), SCALING, **options
    )
    return out


def extend_case(group, head_dim, dtype, cases=CASES, num_kv_heads=2, seed=0):
    paged = make_paged(num_kv_heads, head_dim, dtype, seed=seed)
    reqs = [paged.add_request(p + e) for p, e in cases]
    q = torch.randn(sum(e for _, e in cases), num_kv_heads * group, head_dim, device=DEVICE).to(dtype)
    return paged, reqs, [p for p, _ in cases], q


def check(paged, reqs, prefix_lens, q, out, dtype, **options):
    start = 0
    for i, prefix in zip(reqs, prefix_lens):
        n = len(paged.kv[i]) - prefix
        ref = reference(paged, i, q[start : start + n], list(range(prefix, prefix + n)), **options)
        assert_close(out[start : start + n], ref, dtype)
        start += n


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_extend_matches_float64_reference(group, head_dim, dtype):
    paged, reqs, prefix_lens, q = extend_case(group, head_dim, dtype, num_kv_heads=1 if group > 1 else 2)
    out = run_extend(paged, reqs, prefix_lens, q)
    assert out.dtype == dtype
    check(paged, reqs, prefix_lens, q, out, dtype)


def test_extend_bf16_goes_through_the_upcast_path():
    paged, reqs, prefix_lens, q = extend_case(4, 64, torch.bfloat16, cases=[(0, 40), (20, 30)])
    check(paged, reqs, prefix_lens, q, run_extend(paged, reqs, prefix_lens, q), torch.bfloat16)


def test_extend_head_dim_80_is_padded_with_masks():
    paged, reqs, prefix_lens, q = extend_case(2, 80, torch.float32, cases=[(0, 20), (9, 40)])
    check(paged, reqs, prefix_lens, q, run_extend(paged, reqs, prefix_lens, q), torch.float32)


def test_chunked_prefill_equals_one_whole_prefill():
    """A 150-token prompt in chunks of 64, 64 and 22 (each chunk's prefix = the earlier chunks) gives the rows
    the whole prompt gives, and both match the reference."""
    paged, (req,), _, q = extend_case(4, 64, torch.float32, cases=[(0, 150)])
    whole = run_extend(paged, [req], [0], q)
    check(paged, [req], [0], q, whole, torch.float32)
    full_slots = paged.kv[req]
    chunks = []
    for start, end in [(0, 64), (64, 128), (128, 150)]:
        paged.kv[req] = full_slots[:end]  # the request's KV as the scheduler sees it after this chunk
        paged.r2t.write(paged.rows[req], 0, torch.tensor(full_slots[:end]))
        chunks.append(run_extend(paged, [req], [start], q[start:end]))
    torch.testing.assert_close(torch.cat(chunks), whole, atol=2e-5, rtol=2e-5)


def test_radix_hits_share_prefix_slots_with_different_prefix_lengths():
    paged = make_paged(2, 64, torch.float16, seed=5)
    base = paged.add_request(90)
    hit_a = paged.add_request(90 + 10, shared=paged.kv[base][:90])  # whole prompt cached, 10 new tokens
    hit_b = paged.add_request(40 + 25, shared=paged.kv[base][:40])  # a shorter cached prefix, 25 new tokens
    reqs, prefix_lens = [hit_a, hit_b], [90, 40]
    q = torch.randn(35, 8, 64, device=DEVICE).to(torch.float16)
    check(paged, reqs, prefix_lens, q, run_extend(paged, reqs, prefix_lens, q), torch.float16)


@pytest.mark.parametrize("window", [1, 8, 33, 1000])
def test_extend_sliding_window(window):
    paged, reqs, prefix_lens, q = extend_case(4, 64, torch.float32)
    out = run_extend(paged, reqs, prefix_lens, q, sliding_window=window)
    check(paged, reqs, prefix_lens, q, out, torch.float32, sliding_window=window)


@pytest.mark.parametrize("cap", [0.5, 30.0])
def test_extend_logit_soft_cap(cap):
    paged, reqs, prefix_lens, q = extend_case(1, 128, torch.float32)
    q = q * 4
    out = run_extend(paged, reqs, prefix_lens, q, logit_cap=cap)
    check(paged, reqs, prefix_lens, q, out, torch.float32, logit_cap=cap)
    assert not torch.allclose(out, run_extend(paged, reqs, prefix_lens, q), atol=1e-3)


def test_extend_window_and_cap_together():
    paged, reqs, prefix_lens, q = extend_case(8, 64, torch.float16, num_kv_heads=1)
    out = run_extend(paged, reqs, prefix_lens, q, sliding_window=20, logit_cap=3.0)
    check(paged, reqs, prefix_lens, q, out, torch.float16, sliding_window=20, logit_cap=3.0)
