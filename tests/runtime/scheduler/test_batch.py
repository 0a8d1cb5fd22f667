"""Unit tests for the schedule batch: extend/decode packing, req_to_token writes, logit rows, slot allocation.

Real ``ReqToTokenPool`` / ``TokenToKVPoolAllocator`` / ``RadixCache`` on CPU; no model.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from sglkit.cache.memory_pool import ReqToTokenPool, TokenToKVPoolAllocator
from sglkit.cache.radix_cache import RadixCache
from sglkit.core.forward_batch import ForwardMode
from sglkit.core.req import Req
from sglkit.core.sampling_params import SamplingParams
from sglkit.runtime.scheduler.batch import (
    ScheduleBatch,
    alloc_token_slots,
    build_decode_batch,
    build_extend_batch,
    input_logprob_start,
    stage_int_lists,
    to_forward_batch,
)

POOL_SIZE = 256
MAX_CONTEXT = 128


@dataclass
class Pools:
    req_to_token_pool: ReqToTokenPool
    allocator: TokenToKVPoolAllocator
    cache: RadixCache


@pytest.fixture
def pools() -> Pools:
    r2t = ReqToTokenPool(8, MAX_CONTEXT)
    allocator = TokenToKVPoolAllocator(POOL_SIZE)
    return Pools(r2t, allocator, RadixCache(r2t, allocator))


_rids = iter(range(1_000_000))


def make_req(ids: list[int], *, output_ids=None, return_logprob=False, logprob_start_len=-1) -> Req:
    req = Req(
        rid=f"r{next(_rids)}",
        origin_input_ids=list(ids),
        sampling_params=SamplingParams(max_new_tokens=8),
        return_logprob=return_logprob,
        logprob_start_len=logprob_start_len,
    )
    req.output_ids = list(output_ids or [])
    return req


def admit(pools: Pools, req: Req, match: bool = True) -> int:
    """What the scheduler does on admission: radix match (leaving one token), take a row, write the prefix."""
    if match:
        req.prefix_indices, req.last_node = pools.cache.match_prefix(req.fill_ids[:-1])
        pools.cache.inc_lock_ref(req.last_node)
    req.req_pool_idx = pools.req_to_token_pool.alloc()
    pools.req_to_token_pool.write(req.req_pool_idx, 0, req.prefix_indices)
    return len(req.prefix_indices)


def row(pools: Pools, req: Req, n: int) -> list[int]:
    return pools.req_to_token_pool.req_to_token[req.req_pool_idx, :n].tolist()


# ----------------------------------------------------------------------------------------- extend


@pytest.fixture
def extend_case(pools):
    """Three requests: A (no prefix, whole), B (radix prefix of 6, whole), C (first chunk of 16 out of 40)."""
    shared = list(range(100, 106))
    pools.cache.insert(shared + [999], pools.allocator.alloc(7))
    a = make_req(list(range(1, 11)))
    b = make_req(shared + list(range(200, 208)))
    c = make_req(list(range(300, 340)))
    prefix_lens = [admit(pools, r) for r in (a, b, c)]
    assert prefix_lens == [0, 6, 0]
    extend_lens = [10, 8, 16]
    batch = ScheduleBatch([a, b, c], ForwardMode.EXTEND, extend_lens, prefix_lens)
    out = alloc_token_slots(pools.allocator, pools.cache, batch.num_new_tokens())
    assert out is not None and out.numel() == 34
    fields = build_extend_batch(batch, out, pools.req_to_token_pool, "cpu")
    return SimpleNamespace(reqs=(a, b, c), batch=batch, out=out, fields=fields)


def test_schedule_batch_sizes(extend_case):
    batch = extend_case.batch
    assert batch.batch_size() == 3
    assert batch.num_new_tokens() == 34
    decode = ScheduleBatch(list(extend_case.reqs), ForwardMode.DECODE)
    assert decode.num_new_tokens() == 3


def test_extend_packs_input_ids_and_positions(extend_case):
    a, b, c = extend_case.reqs
    f = extend_case.fields
    assert f["input_ids"] == a.fill_ids[0:10] + b.fill_ids[6:14] + c.fill_ids[0:16]
    assert f["positions"] == list(range(10)) + list(range(6, 14)) + list(range(16))
    assert f["seq_lens"] == [10, 14, 16]
    assert f["extend_start_loc_cpu"] == [0, 10, 18]
    assert f["extend_prefix_lens_cpu"] == [0, 6, 0]
    assert f["extend_seq_lens_cpu"] == [10, 8, 16]


def test_extend_writes_req_to_token_after_the_prefix(pools, extend_case):
    a, b, c = extend_case.reqs
    out = extend_case.out.tolist()
    assert row(pools, a, 10) == out[0:10]
    assert row(pools, b, 6) == b.prefix_indices.tolist()  # prefix kept
    assert row(pools, b, 14)[6:] == out[10:18]  # new slots right after it
    assert row(pools, c, 16) == out[18:34]
    # Nothing written past each request's new length.
    r2t = pools.req_to_token_pool.req_to_token
    for req, n in zip((a, b, c), (10, 14, 16)):
        assert int(r2t[req.req_pool_idx, n:].abs().sum()) == 0


def test_extend_sample_rows_only_for_completed_fills(extend_case):
    batch, f = extend_case.batch, extend_case.fields
    assert batch.rows.sample_row == {0: 0, 1: 1}  # C is mid-prompt: nothing to sample
    assert batch.rows.input_rows == {}
    # Each sample row points at the request's last packed token.
    assert f["logits_indices"] == [9, 17]
    assert [f["logits_indices"][batch.rows.sample_row[i]] for i in (0, 1)] == [9, 17]


def test_chunked_request_last_chunk_gets_the_sample_row(pools):
    req = make_req(list(range(1, 41)))
    admit(pools, req, match=False)
    first = ScheduleBatch([req], ForwardMode.EXTEND, [16], [0])
    out1 = pools.allocator.alloc(16)
    build_extend_batch(first, out1, pools.req_to_token_pool, "cpu")
    assert first.rows.sample_row == {}
    # Next pass: the first chunk is now the prefix.
    req.kv_len = 16
    second = ScheduleBatch([req], ForwardMode.EXTEND, [24], [16])
    out2 = pools.allocator.alloc(24)
    f = build_extend_batch(second, out2, pools.req_to_token_pool, "cpu")
    assert f["positions"] == list(range(16, 40))
    assert f["input_ids"] == req.fill_ids[16:40]
    assert second.rows.sample_row == {0: 0}
    assert f["logits_indices"] == [23]
    assert row(pools, req, 40) == out1.tolist() + out2.tolist()


# ----------------------------------------------------------------------------------------- input logprobs


@pytest.mark.parametrize(
    "return_logprob, start, output_ids, want",
    [
        (False, 3, [], None),
        (True, -1, [], None),
        (True, 0, [], 0),
        (True, 1, [], 0),  # logits at position 0 score token 1
        (True, 5, [], 4),
        (True, 5, [7, 8], 4),
    ],
)
def test_input_logprob_start(return_logprob, start, output_ids, want):
    req = make_req(
        list(range(10)), output_ids=output_ids, return_logprob=return_logprob, logprob_start_len=start
    )
    assert input_logprob_start(req) == want


def test_input_logprob_start_continues_and_stops_once_collected():
    req = make_req(list(range(10)), return_logprob=True, logprob_start_len=0)
    req.input_token_logprobs.append((None, 0))  # token 0 has no logits row: position 0 still to score
    assert input_logprob_start(req) == 0
    req.input_token_logprobs.extend((-1.0, t) for t in range(1, 5))  # tokens 1..4 scored by positions 0..3
    assert input_logprob_start(req) == 4
    req.input_token_logprobs.extend((-1.0, t) for t in range(5, 10))  # the whole prompt
    assert input_logprob_start(req) is None  # a re-admitted (retracted) request does not collect them again
    later = make_req(list(range(10)), return_logprob=True, logprob_start_len=6)
    later.input_token_logprobs.extend((-1.0, t) for t in range(6, 8))
    assert input_logprob_start(later) == 7


@pytest.mark.parametrize("start", [0, 1, 3, 8, 9, 10])
def test_extend_input_logprob_rows(pools, start):
    prompt = list(range(50, 60))  # 10 tokens
    other = make_req(list(range(1, 6)))
    req = make_req(prompt, return_logprob=True, logprob_start_len=start)
    admit(pools, other, match=False)
    admit(pools, req, match=False)
    batch = ScheduleBatch([other, req], ForwardMode.EXTEND, [5, 10], [0, 0])
    f = build_extend_batch(batch, pools.allocator.alloc(15), pools.req_to_token_pool, "cpu")
    first_pos = max(start - 1, 0)
    count = 9 - first_pos  # logits at positions first_pos..8 score prompt tokens first_pos+1..9
    if count > 0:
        assert batch.rows.input_rows == {1: (1, count, first_pos)}
        first_row, n, pos = batch.rows.input_rows[1]
        assert f["logits_indices"][first_row : first_row + n] == [5 + p for p in range(pos, pos + n)]
    else:
        assert batch.rows.input_rows == {}
    assert batch.rows.sample_row == {0: 0, 1: 1 + max(count, 0)}
    assert f["logits_indices"][batch.rows.sample_row[1]] == 14  # last prompt token
    assert len(f["logits_indices"]) == 2 + max(count, 0)


def test_input_logprob_rows_start_at_the_prefix(pools):
    """Rows for positions already cached cannot be computed: they start at the prefix."""
    pools.cache.insert(list(range(50, 56)), pools.allocator.alloc(6))
    req = make_req(list(range(50, 62)), return_logprob=True, logprob_start_len=8)
    # The scheduler caps the match at the first logprob position; here the full match (6) is below it.
    assert admit(pools, req) == 6
    batch = ScheduleBatch([req], ForwardMode.EXTEND, [6], [6])
    f = build_extend_batch(batch, pools.allocator.alloc(6), pools.req_to_token_pool, "cpu")
    # first_pos 7 (> prefix 6): positions 7..10 -> 4 rows, packed offsets 1..4.
    assert batch.rows.input_rows == {0: (0, 4, 7)}
    assert f["logits_indices"] == [1, 2, 3, 4, 5]
    req2 = make_req(list(range(50, 62)), return_logprob=True, logprob_start_len=3)
    pools.req_to_token_pool.free(req.req_pool_idx)
    req2.prefix_indices = req.prefix_indices  # a match past the first logprob position
    admit(pools, req2, match=False)
    batch2 = ScheduleBatch([req2], ForwardMode.EXTEND, [6], [6])
    build_extend_batch(batch2, pools.allocator.alloc(6), pools.req_to_token_pool, "cpu")
    assert batch2.rows.input_rows == {0: (0, 5, 6)}  # clipped to the prefix: positions 6..10


def test_input_logprob_rows_of_a_chunk_stop_at_the_chunk(pools):
    req = make_req(list(range(1, 21)), return_logprob=True, logprob_start_len=5)
    admit(pools, req, match=False)
    batch = ScheduleBatch([req], ForwardMode.EXTEND, [8], [0])
    f = build_extend_batch(batch, pools.allocator.alloc(8), pools.req_to_token_pool, "cpu")
    assert batch.rows.input_rows == {0: (0, 4, 4)}  # positions 4..7
    assert batch.rows.sample_row == {}
    assert f["logits_indices"] == [4, 5, 6, 7]


def test_input_logprob_rows_continue_in_the_next_chunk(pools):
    from sglkit.runtime.scheduler.output import collect_input_logprobs

    torch.manual_seed(0)
    prompt = list(range(1, 21))
    req = make_req(prompt, return_logprob=True, logprob_start_len=5)
    admit(pools, req, match=False)
    first = ScheduleBatch([req], ForwardMode.EXTEND, [8], [0])
    f1 = build_extend_batch(first, pools.allocator.alloc(8), pools.req_to_token_pool, "cpu")
    logits = torch.randn(len(f1["logits_indices"]), 64)
    collect_input_logprobs(req, logits, *first.rows.input_rows[0])
    assert len(req.input_token_logprobs) == 4  # tokens 5..8
    req.kv_len = 8
    second = ScheduleBatch([req], ForwardMode.EXTEND, [12], [8])
    build_extend_batch(second, pools.allocator.alloc(12), pools.req_to_token_pool, "cpu")
    # Positions 8..18 score tokens 9..19: the rest of the requested prompt logprobs.
    assert second.rows.input_rows == {0: (0, 11, 8)}


# ----------------------------------------------------------------------------------------- decode


def test_decode_batch_positions_and_slot_writes(pools):
    torch.manual_seed(0)
    reqs = []
    for n_prompt, n_out in [(5, 1), (12, 3), (7, 2)]:
        req = make_req(list(range(1, n_prompt + 1)), output_ids=list(range(500, 500 + n_out)))
        admit(pools, req, match=False)
        kv = req.seq_len - 1  # the last sampled token has no KV yet
        pools.req_to_token_pool.write(req.req_pool_idx, 0, pools.allocator.alloc(kv))
        req.kv_len = kv
        reqs.append(req)
    before = [row(pools, r, r.kv_len) for r in reqs]
    batch = ScheduleBatch(reqs, ForwardMode.DECODE)
    out = alloc_token_slots(pools.allocator, pools.cache, len(reqs))
    f = build_decode_batch(batch, out, pools.req_to_token_pool)
    kv_lens = [r.kv_len for r in reqs]
    assert kv_lens == [5, 14, 8]
    assert f["input_ids"] == [r.output_ids[-1] for r in reqs]
    assert f["positions"] == kv_lens
    assert f["seq_lens"] == [k + 1 for k in kv_lens]
    assert f["logits_indices"] == [0, 1, 2]
    assert f["extend_seq_lens_cpu"] == [1, 1, 1]
    assert f["extend_prefix_lens_cpu"] == kv_lens
    assert f["extend_start_loc_cpu"] == [0, 1, 2]
    assert batch.rows.sample_row == {0: 0, 1: 1, 2: 2}
    table = pools.req_to_token_pool.req_to_token
    assert all(int(table[r.req_pool_idx, r.kv_len]) == 0 for r in reqs)  # written with the ForwardBatch
    runner = SimpleNamespace(
        device="cpu", req_to_token_pool=pools.req_to_token_pool, token_to_kv_pool=None, attn_backend=None
    )
    fb = to_forward_batch(batch, f, out, runner)
    assert fb.forward_mode.is_decode() and fb.positions.tolist() == kv_lens
    assert table.dtype == torch.int32
    for i, req in enumerate(reqs):
        assert row(pools, req, req.kv_len) == before[i]  # earlier slots untouched
        assert int(table[req.req_pool_idx, req.kv_len]) == int(out[i])


def test_stage_int_lists_one_buffer_split_in_order():
    parts = [[1, 2, 3], [], [7], [8, 9]]
    staged = stage_int_lists(parts, "cpu")
    assert [t.tolist() for t in staged] == parts
    assert all(t.dtype == torch.int64 for t in staged)
    assert len({t.untyped_storage().data_ptr() for t in staged}) == 1  # views of one tensor


def test_to_forward_batch_packs_tensors(pools, extend_case):
    runner = SimpleNamespace(
        device="cpu",
        req_to_token_pool=pools.req_to_token_pool,
        token_to_kv_pool=object(),
        attn_backend=object(),
    )
    fb = to_forward_batch(extend_case.batch, extend_case.fields, extend_case.out, runner)
    assert fb.forward_mode is ForwardMode.EXTEND and fb.batch_size == 3
    assert fb.input_ids.dtype == torch.int64
    assert fb.input_ids.tolist() == extend_case.fields["input_ids"]
    assert fb.positions.tolist() == extend_case.fields["positions"]
    assert fb.seq_lens.tolist() == fb.seq_lens_cpu == [10, 14, 16]
    assert fb.req_pool_indices.tolist() == [r.req_pool_idx for r in extend_case.reqs]
    assert torch.equal(fb.out_cache_loc, extend_case.out)
    assert fb.logits_indices.tolist() == [9, 17]
    assert fb.num_tokens == 34


# ----------------------------------------------------------------------------------------- alloc_token_slots


def test_alloc_without_shortfall_does_not_evict(pools):
    pools.cache.insert(list(range(10)), pools.allocator.alloc(10))
    out = alloc_token_slots(pools.allocator, pools.cache, 20)
    assert out is not None and out.numel() == 20
    assert pools.cache.total_size() == 10
    assert pools.cache.num_evicted_tokens == 0


def test_alloc_evicts_unlocked_leaves_lru_first():
    allocator = TokenToKVPoolAllocator(32)
    cache = RadixCache(ReqToTokenPool(2, 64), allocator)
    old_slots = allocator.alloc(10)
    cache.insert(list(range(100, 110)), old_slots)  # older leaf
    cache.insert(list(range(200, 212)), allocator.alloc(12))  # newer leaf
    rest = allocator.alloc(allocator.available_size())
    assert rest.numel() == 10 and allocator.available_size() == 0
    out = alloc_token_slots(allocator, cache, 4)
    assert out is not None and out.numel() == 4
    assert set(out.tolist()) <= set(old_slots.tolist())  # the LRU leaf's slots were reused
    assert cache.total_size() == 12
    assert cache.match_prefix(list(range(100, 110)))[0].numel() == 0
    assert cache.match_prefix(list(range(200, 212)))[0].numel() == 12
    assert allocator.available_size() == 6


def test_alloc_does_not_evict_locked_nodes_and_returns_none():
    allocator = TokenToKVPoolAllocator(16)
    cache = RadixCache(ReqToTokenPool(2, 64), allocator)
    key = list(range(10))
    cache.insert(key, allocator.alloc(10))
    _, node = cache.match_prefix(key)
    cache.inc_lock_ref(node)
    assert allocator.available_size() == 6
    assert alloc_token_slots(allocator, cache, 7) is None
    assert cache.total_size() == 10 and cache.protected_size() == 10
    assert allocator.available_size() == 6  # nothing taken by the failed call
    cache.dec_lock_ref(node)
    out = alloc_token_slots(allocator, cache, 7)
    assert out is not None and out.numel() == 7
    assert cache.total_size() == 0


def test_alloc_more_than_the_pool_is_none(pools):
    assert alloc_token_slots(pools.allocator, pools.cache, POOL_SIZE + 1) is None
    out = alloc_token_slots(pools.allocator, pools.cache, POOL_SIZE)
    assert out is not None and sorted(out.tolist()) == list(range(1, POOL_SIZE + 1))  # slot 0 never used
