"""Triton split-KV decode attention (triton_ops.decode_attention) against a float64 reference.

Requests of lengths at split edges (1, 31, 32, 33, 200: splits of 32 keys) sit at random non-contiguous pool
slots; GQA groups 1/4/8, head dims 64/128 (and 80: padded lanes), float32/float16 (bf16 through the upcast path),
padded rows, sliding window and soft-cap. Run on a GPU, or on CPU under Triton's interpreter via
test_triton_interpreter.py (a child process).
"""

from __future__ import annotations

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

LENGTHS = [1, 31, 32, 33, 200]
MAX_SPLITS = 8


def run_decode(paged, reqs, q, max_splits=MAX_SPLITS, split_tokens=32, extra_rows=(), **options):
    """Decode q [B, Hq, D] for requests ``reqs`` (+ padded rows given as (req_to_token row, seq_len))."""
    from sglkit.layers.attention.triton_ops.decode_attention import decode_attention
    from sglkit.layers.attention.triton_ops.kv_indices import build_kv_indices, build_kv_indptr

    lens = [len(paged.kv[i]) for i in reqs] + [n for _, n in extra_rows]
    rows = [paged.rows[i] for i in reqs] + [row for row, _ in extra_rows]
    seq_lens = torch.tensor(lens, device=DEVICE)
    kv_indptr = build_kv_indptr(seq_lens)
    kv_indices = torch.empty(max(1, sum(lens)), dtype=torch.int32, device=DEVICE)
    build_kv_indices(
        paged.r2t.req_to_token, torch.tensor(rows, device=DEVICE), seq_lens, kv_indptr, kv_indices
    )
    num_splits = ((seq_lens + split_tokens - 1) // split_tokens).clamp(1, max_splits).to(torch.int32)
    batch, num_heads, head_dim = q.shape
    part_out = torch.empty(batch, num_heads, max_splits, head_dim, device=DEVICE)
    part_lse = torch.empty(batch, num_heads, max_splits, device=DEVICE)
    out = torch.empty_like(q)
    k_buf, v_buf = paged.pool.get_kv_buffer(0)
    decode_attention(
        q, k_buf, v_buf, out, kv_indptr, kv_indices, num_splits, part_out, part_lse, SCALING, **options
    )
    return out


def decode_case(group, head_dim, dtype, num_kv_heads=2, lengths=LENGTHS, seed=0):
    paged = make_paged(num_kv_heads, head_dim, dtype, seed=seed)
    reqs = [paged.add_request(n) for n in lengths]
    q = torch.randn(len(reqs), num_kv_heads * group, head_dim, device=DEVICE).to(dtype)
    return paged, reqs, q


def check(paged, reqs, q, out, dtype, **options):
    for b, i in enumerate(reqs):
        ref = reference(paged, i, q[b : b + 1], [len(paged.kv[i]) - 1], **options)
        assert_close(out[b : b + 1], ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_decode_matches_float64_reference(group, head_dim, dtype):
    paged, reqs, q = decode_case(group, head_dim, dtype, num_kv_heads=1 if group > 1 else 2)
    out = run_decode(paged, reqs, q)
    assert out.dtype == dtype
    check(paged, reqs, q, out, dtype)


def test_decode_bf16_goes_through_the_upcast_path():
    paged, reqs, q = decode_case(4, 64, torch.bfloat16)
    check(paged, reqs, q, run_decode(paged, reqs, q), torch.bfloat16)


@pytest.mark.parametrize("head_dim", [16, 80])
def test_decode_other_head_dims_are_padded_with_masks(head_dim):
    paged, reqs, q = decode_case(2, head_dim, torch.float32, lengths=[5, 70])
    check(paged, reqs, q, run_decode(paged, reqs, q), torch.float32)


@pytest.mark.parametrize("max_splits", [1, 3, 8])
def test_decode_result_does_not_depend_on_the_number_of_splits(max_splits):
    paged, reqs, q = decode_case(4, 64, torch.float32, lengths=[200, 33, 7])
    out = run_decode(paged, reqs, q, max_splits=max_splits)
    check(paged, reqs, q, out, torch.float32)
    # Tiny splits (4 keys each, many empty chunks at the end of short requests) give the same answer.
    torch.testing.assert_close(run_decode(paged, reqs, q, max_splits=max_splits, split_tokens=4), out)


def test_padded_rows_change_nothing_and_give_finite_zeros():
    paged, reqs, q = decode_case(4, 64, torch.float32)
    pad_q = torch.randn(2, q.shape[1], 64, device=DEVICE)
    # Padded rows as a padded CUDA-graph batch has them: request row 0 (slot 0, the sink) of length 1, or length 0.
    out = run_decode(paged, reqs, torch.cat([q, pad_q]), extra_rows=[(0, 1), (0, 0)])
    check(paged, reqs, q, out[: len(reqs)], torch.float32)
    assert torch.isfinite(out).all()
    assert torch.equal(out[-1], torch.zeros_like(out[-1]))  # nothing to attend: zero, not NaN
    _, v_buf = paged.pool.get_kv_buffer(0)
    torch.testing.assert_close(out[-2], v_buf[0].repeat_interleave(4, dim=0))  # length 1 over the sink


@pytest.mark.parametrize("window", [1, 16, 40, 500])
def test_decode_sliding_window(window):
    paged, reqs, q = decode_case(4, 64, torch.float32)
    out = run_decode(paged, reqs, q, sliding_window=window)
    check(paged, reqs, q, out, torch.float32, sliding_window=window)


@pytest.mark.parametrize("cap", [0.5, 30.0])
def test_decode_logit_soft_cap(cap):
    paged, reqs, q = decode_case(8, 128, torch.float32)
    q = q * 4  # large scores, so the cap matters
    out = run_decode(paged, reqs, q, logit_cap=cap)
    check(paged, reqs, q, out, torch.float32, logit_cap=cap)
    uncapped = run_decode(paged, reqs, q)
    assert not torch.allclose(out, uncapped, atol=1e-3)


def test_decode_window_and_cap_together_with_shared_prefix_slots():
    paged = make_paged(2, 64, torch.float16, seed=3)
    first = paged.add_request(120)
    second = paged.add_request(150, shared=paged.kv[first][:100])  # a radix hit: same slots for 100 tokens
    reqs = [first, second]
    q = torch.randn(2, 8, 64, device=DEVICE).to(torch.float16)
    out = run_decode(paged, reqs, q, sliding_window=64, logit_cap=2.0)
    check(paged, reqs, q, out, torch.float16, sliding_window=64, logit_cap=2.0)
