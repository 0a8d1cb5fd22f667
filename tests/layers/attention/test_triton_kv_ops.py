"""Triton KV store and kv-indices kernels (sglkit.layers.attention.triton_ops.kv_store / kv_indices).

Run on a GPU, or on CPU under Triton's interpreter via test_triton_interpreter.py (a child process).
"""

from __future__ import annotations

import pytest
import torch

from tests.layers.attention.triton_cases import DEVICE, make_paged, needs_triton

pytest.importorskip("triton")
pytestmark = needs_triton


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_store_kv_writes_each_token_at_its_slot_and_padded_rows_to_slot_0(dtype):
    from sglkit.layers.attention.triton_ops.kv_store import store_kv

    paged = make_paged(num_kv_heads=2, head_dim=48, dtype=dtype, pool_size=64)
    k_buf, v_buf = paged.pool.get_kv_buffer(0)
    before_k, before_v = k_buf.clone(), v_buf.clone()
    # K/V as the model hands them over: views into a fused qkv projection (row stride != Hkv * D), in float32.
    qkv = torch.randn(5, 3 * 2 * 48, device=DEVICE)
    k = qkv[:, 96:192].view(5, 2, 48)
    v = qkv[:, 192:].view(5, 2, 48)
    loc = torch.tensor([7, 0, 3, 60, 0], device=DEVICE)  # rows 1 and 4 are padding
    store_kv(k_buf, v_buf, loc, k, v)
    for row, slot in [(0, 7), (2, 3), (3, 60)]:
        assert torch.equal(k_buf[slot], k[row].to(dtype)) and torch.equal(v_buf[slot], v[row].to(dtype))
    assert any(torch.equal(k_buf[0], k[row].to(dtype)) for row in (1, 4))  # padding lands in the sink
    untouched = torch.ones(65, dtype=torch.bool)
    untouched[[0, 7, 3, 60]] = False
    assert torch.equal(k_buf[untouched.to(DEVICE)], before_k[untouched.to(DEVICE)])
    assert torch.equal(v_buf[untouched.to(DEVICE)], before_v[untouched.to(DEVICE)])


def test_store_kv_of_an_empty_pass_is_a_no_op():
    from sglkit.layers.attention.triton_ops.kv_store import store_kv

    paged = make_paged(num_kv_heads=1, head_dim=16, dtype=torch.float32, pool_size=8)
    k_buf, v_buf = paged.pool.get_kv_buffer(0)
    before = k_buf.clone()
    empty = torch.empty(0, 1, 16, device=DEVICE)
    store_kv(k_buf, v_buf, torch.empty(0, dtype=torch.int64, device=DEVICE), empty, empty)
    assert torch.equal(k_buf, before)


def test_kv_indices_are_each_requests_slots_in_token_order_as_int32():
    from sglkit.layers.attention.triton_ops.kv_indices import build_kv_indices, build_kv_indptr

    paged = make_paged(num_kv_heads=1, head_dim=16, dtype=torch.float32, pool_size=1200)
    lens = [1, 31, 32, 33, 200, 700]
    reqs = [paged.add_request(n) for n in lens]
    order = [4, 0, 5, 2, 1, 3]  # batch order differs from the row order
    seq_lens = torch.tensor([lens[i] for i in order], device=DEVICE)
    pool_rows = torch.tensor([paged.rows[reqs[i]] for i in order], device=DEVICE)
    kv_indptr = build_kv_indptr(seq_lens)
    assert kv_indptr.dtype == torch.int32
    assert kv_indptr.tolist() == [0, *torch.tensor([lens[i] for i in order]).cumsum(0).tolist()]
    kv_indices = torch.full((sum(lens) + 3,), -1, dtype=torch.int32, device=DEVICE)
    build_kv_indices(paged.r2t.req_to_token, pool_rows, seq_lens, kv_indptr, kv_indices)
    expected = [slot for i in order for slot in paged.kv[reqs[i]]]
    assert kv_indices.dtype == torch.int32
    assert kv_indices[: sum(lens)].tolist() == expected
    assert kv_indices[sum(lens) :].tolist() == [-1, -1, -1]  # nothing written past the total


def test_kv_indices_of_zero_length_rows_take_no_room():
    from sglkit.layers.attention.triton_ops.kv_indices import build_kv_indices, build_kv_indptr

    paged = make_paged(num_kv_heads=1, head_dim=16, dtype=torch.float32, pool_size=64)
    a, b = paged.add_request(5), paged.add_request(3)
    seq_lens = torch.tensor([5, 0, 3], device=DEVICE)
    rows = torch.tensor([paged.rows[a], 0, paged.rows[b]], device=DEVICE)
    kv_indptr = build_kv_indptr(seq_lens)
    kv_indices = torch.empty(8, dtype=torch.int32, device=DEVICE)
    build_kv_indices(paged.r2t.req_to_token, rows, seq_lens, kv_indptr, kv_indices)
    assert kv_indptr.tolist() == [0, 5, 5, 8]
    assert kv_indices.tolist() == paged.kv[a] + paged.kv[b]
