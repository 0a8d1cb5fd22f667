"""Tests for sglkit/cache/memory_pool.py: slot allocator, request-to-token table, KV buffers."""

from __future__ import annotations

import random

import psutil
import torch

from sglkit.cache.memory_pool import (
    MHATokenToKVPool,
    ReqToTokenPool,
    TokenToKVPoolAllocator,
    zeroed_buffer,
)


def drain(allocator: TokenToKVPoolAllocator) -> set[int]:
    """Every free slot, taken and handed back (asserts the free list has no duplicates)."""
    n = allocator.available_size()
    slots = allocator.alloc(n)
    assert slots is not None and slots.numel() == n
    as_set = set(slots.tolist())
    assert len(as_set) == n, "a slot is listed free twice"
    allocator.free(slots)
    return as_set


def test_allocator_hands_out_slots_1_to_size_never_0():
    allocator = TokenToKVPoolAllocator(16)
    assert allocator.available_size() == 16
    first = allocator.alloc(10)
    second = allocator.alloc(6)
    assert first.dtype == torch.int64 and first.shape == (10,)
    got = first.tolist() + second.tolist()
    assert sorted(got) == list(range(1, 17))
    assert 0 not in got
    assert allocator.available_size() == 0


def test_allocator_returns_none_when_short_and_keeps_state():
    allocator = TokenToKVPoolAllocator(8)
    held = allocator.alloc(5)
    assert allocator.alloc(4) is None
    assert allocator.available_size() == 3
    allocator.free(held[:2])
    assert allocator.available_size() == 5
    more = allocator.alloc(5)  # needs the pending frees merged
    assert more is not None
    assert set(more.tolist()) | set(held[2:].tolist()) == set(range(1, 9))
    assert allocator.alloc(1) is None


def test_allocator_alloc_zero_and_free_empty():
    allocator = TokenToKVPoolAllocator(4)
    assert allocator.alloc(0).numel() == 0
    allocator.free(torch.empty(0, dtype=torch.int64))
    assert allocator.available_size() == 4


def test_allocator_random_alloc_free_never_leaks():
    rng = random.Random(0)
    size = 64
    allocator = TokenToKVPoolAllocator(size)
    held: list[torch.Tensor] = []
    for _ in range(500):
        if held and rng.random() < 0.45:
            allocator.free(held.pop(rng.randrange(len(held))))
        else:
            want = rng.randint(0, 12)
            out = allocator.alloc(want)
            num_held = sum(t.numel() for t in held)
            if want > size - num_held:
                assert out is None
            else:
                assert out is not None and out.numel() == want
                held.append(out)
        held_slots = [s for t in held for s in t.tolist()]
        assert len(held_slots) == len(set(held_slots)), "a slot was handed out twice"
        assert allocator.available_size() + len(held_slots) == size
    free = drain(allocator)
    assert free.isdisjoint(s for t in held for s in t.tolist())
    for t in held:
        allocator.free(t)
    assert drain(allocator) == set(range(1, size + 1))


def test_allocator_free_copies_views():
    # Freeing a view of req_to_token, then reusing the row, must not change what was freed.
    allocator = TokenToKVPoolAllocator(8)
    req_pool = ReqToTokenPool(2, 8)
    slots = allocator.alloc(3)
    req_pool.write(0, 0, slots)
    allocator.free(req_pool.req_to_token[0, :3])
    req_pool.write(0, 0, torch.zeros(3, dtype=torch.int64))
    assert drain(allocator) == set(range(1, 9))


def test_allocator_clear():
    allocator = TokenToKVPoolAllocator(8)
    allocator.alloc(5)
    allocator.clear()
    assert drain(allocator) == set(range(1, 9))


def test_req_to_token_pool_alloc_free_write():
    pool = ReqToTokenPool(3, 10)
    assert pool.req_to_token.shape == (3, 10) and pool.req_to_token.dtype == torch.int32
    slots = [pool.alloc() for _ in range(3)]
    assert sorted(slots) == [0, 1, 2]
    assert pool.alloc() is None
    assert pool.available_size() == 0
    pool.write(slots[0], 2, torch.tensor([7, 8, 9]))
    assert pool.req_to_token[slots[0]].tolist() == [0, 0, 7, 8, 9, 0, 0, 0, 0, 0]
    pool.free(slots[1])
    assert pool.available_size() == 1
    assert pool.alloc() == slots[1]
    pool.clear()
    assert pool.available_size() == 3


def test_mha_kv_pool_set_get():
    pool = MHATokenToKVPool(size=6, num_layers=2, num_kv_heads=2, head_dim=4, dtype=torch.float32)
    k, v = pool.get_kv_buffer(1)
    assert k.shape == (7, 2, 4) and v.shape == (7, 2, 4)
    loc = torch.tensor([3, 5])
    new_k = torch.randn(2, 2, 4, dtype=torch.float64)
    new_v = torch.randn(2, 2, 4, dtype=torch.float64)
    pool.set_kv_buffer(1, loc, new_k, new_v)
    k, v = pool.get_kv_buffer(1)
    torch.testing.assert_close(k[loc], new_k.float())
    torch.testing.assert_close(v[loc], new_v.float())
    assert k[0].abs().sum() == 0  # slot 0 untouched
    assert pool.get_kv_buffer(0)[0].abs().sum() == 0  # other layers untouched
    per_token = MHATokenToKVPool.bytes_per_token(2, 2, 4, torch.float32)
    assert per_token == 2 * 2 * 2 * 4 * 4
    assert pool.total_bytes() == per_token * 7


def test_cpu_buffers_are_zero_and_committed_only_where_written():
    """A 256 MiB KV pool costs RAM only for the pages written; reads of untouched slots give zeros."""
    process = psutil.Process()
    before = process.memory_info().rss
    pool = MHATokenToKVPool(
        size=(256 << 20) // (2 * 4 * 64 * 4), num_layers=2, num_kv_heads=4, head_dim=64, dtype=torch.float32
    )
    assert pool.total_bytes() >= 256 << 20
    assert process.memory_info().rss - before < 32 << 20
    loc = torch.tensor([1, 5, pool.size])
    k = torch.randn(3, 4, 64)
    pool.set_kv_buffer(1, loc, k, -k)
    assert torch.equal(pool.k_buffer[1][loc], k) and torch.equal(pool.v_buffer[1][loc], -k)
    assert pool.k_buffer[0][pool.size // 2].abs().sum() == 0
    assert process.memory_info().rss - before < 32 << 20


def test_zeroed_buffer_small_and_views_outlive_the_name():
    small = zeroed_buffer((4, 4), torch.int64)
    assert small.dtype == torch.int64 and not small.any()
    big = zeroed_buffer((1024, 1024), torch.float32)
    tail = big[512:]
    del big
    tail += 1
    assert tail.sum() == 512 * 1024
