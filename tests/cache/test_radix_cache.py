"""Tests for sglkit/cache/radix_cache.py: the radix prefix cache, on CPU, without a model."""

from __future__ import annotations

import random

import pytest
import torch

from sglkit.cache import RadixCache, ReqToTokenPool, TokenToKVPoolAllocator
from sglkit.cache.radix_cache import TreeNode
from sglkit.core.req import Req
from sglkit.core.sampling_params import SamplingParams


def make_cache(size: int = 64, num_reqs: int = 4, disable: bool = False):
    req_pool = ReqToTokenPool(num_reqs, max_context_len=64)
    allocator = TokenToKVPoolAllocator(size)
    return req_pool, allocator, RadixCache(req_pool, allocator, disable=disable)


def tree_map(cache: RadixCache) -> dict[tuple[int, ...], int]:
    """Every cached prefix (as a token tuple) -> the KV slot of its last token, read by walking the tree."""
    out: dict[tuple[int, ...], int] = {}
    stack: list[tuple[TreeNode, tuple[int, ...]]] = [(cache.root_node, ())]
    while stack:
        node, prefix = stack.pop()
        for first, child in node.children.items():
            assert child.key[0] == first and child.parent is node
            assert child.value.numel() == len(child.key) > 0
            if child.lock_ref > 0:
                assert node is cache.root_node or node.lock_ref >= child.lock_ref
            path = prefix
            for token, slot in zip(child.key, child.value.tolist(), strict=True):
                path = (*path, token)
                out[path] = slot
            stack.append((child, path))
    return out


def check_accounting(
    cache: RadixCache, allocator: TokenToKVPoolAllocator, held: tuple[int, ...] = ()
) -> None:
    """Free slots, tree slots and ``held`` (slots owned by running requests) partition 1..size; counters agree."""
    tree_slots = list(tree_map(cache).values())
    nodes = cache._iter_nodes()
    assert cache.evictable_size() == sum(len(n.key) for n in nodes if n.lock_ref == 0)
    assert cache.protected_size() == sum(len(n.key) for n in nodes if n.lock_ref > 0)
    assert cache.total_size() == len(tree_slots)
    assert allocator.available_size() + cache.total_size() + len(held) == allocator.size
    free = allocator.alloc(allocator.available_size())
    free_slots = free.tolist()
    allocator.free(free)
    everything = free_slots + tree_slots + list(held)
    assert sorted(everything) == list(range(1, allocator.size + 1)), "a slot leaked or is owned twice"


def reference_match(ref: dict[tuple[int, ...], int], key: list[int]) -> list[int]:
    slots = []
    for i in range(len(key)):
        slot = ref.get(tuple(key[: i + 1]))
        if slot is None:
            break
        slots.append(slot)
    return slots


# ------------------------------------------------------------------------------------------ tree basics
def test_insert_and_match():
    _, allocator, cache = make_cache()
    slots = allocator.alloc(4)
    assert cache.insert([1, 2, 3, 4], slots) == 0
    got, node = cache.match_prefix([1, 2, 3, 4, 5])
    assert got.tolist() == slots.tolist() and got.dtype == torch.int64
    assert node.key == [1, 2, 3, 4]
    for key in ([9, 1], []):
        got, node = cache.match_prefix(key)
        assert got.numel() == 0 and node is cache.root_node
    assert cache.insert([1, 2, 3, 4], slots) == 4  # already there: nothing taken
    assert cache.total_size() == 4 and cache.evictable_size() == 4 and cache.protected_size() == 0
    check_accounting(cache, allocator)


def test_insert_keeps_a_copy_of_value():
    _, allocator, cache = make_cache()
    slots = allocator.alloc(3)
    expected = slots.tolist()
    buf = slots.clone()
    cache.insert([5, 6, 7], buf)
    buf.fill_(0)
    assert cache.match_prefix([5, 6, 7])[0].tolist() == expected


def test_insert_rejects_length_mismatch():
    _, allocator, cache = make_cache()
    with pytest.raises(ValueError):
        cache.insert([1, 2, 3], allocator.alloc(2))


def test_split_keeps_values_aligned():
    _, allocator, cache = make_cache()
    s = allocator.alloc(6)
    cache.insert([1, 2, 3, 4, 5, 6], s)
    got, node = cache.match_prefix([1, 2, 3, 9])
    assert got.tolist() == s[:3].tolist()
    assert node.key == [1, 2, 3] and node.value.tolist() == s[:3].tolist()
    (tail,) = node.children.values()
    assert tail.key == [4, 5, 6] and tail.value.tolist() == s[3:].tolist() and tail.parent is node
    t = allocator.alloc(5)
    assert cache.insert([1, 2, 3, 7, 8], t) == 3
    allocator.free(t[:3])  # duplicates of [1, 2, 3]
    assert cache.match_prefix([1, 2, 3, 7, 8])[0].tolist() == s[:3].tolist() + t[3:].tolist()
    assert cache.match_prefix([1, 2, 3, 4, 5, 6])[0].tolist() == s.tolist()
    assert cache.num_nodes() == 3 and cache.total_size() == 8
    check_accounting(cache, allocator)


def test_lock_moves_sizes_and_protects_from_eviction():
    _, allocator, cache = make_cache()
    cache.insert([1, 2, 3, 4], allocator.alloc(4))
    dup = allocator.alloc(5)
    assert cache.insert([1, 2, 7, 8, 9], dup) == 2
    allocator.free(dup[:2])
    locked_slots, node = cache.match_prefix([1, 2, 3, 4])
    cache.inc_lock_ref(node)
    assert cache.protected_size() == 4 and cache.evictable_size() == 3
    cache.inc_lock_ref(None)
    cache.inc_lock_ref(cache.root_node)
    assert cache.protected_size() == 4
    assert cache.evict(100) == 3  # only [7, 8, 9]
    assert cache.match_prefix([1, 2, 3, 4])[0].tolist() == locked_slots.tolist()
    # a split above a locked node keeps the lock on both halves
    _, upper = cache.match_prefix([1])
    assert upper.lock_ref == 1 and cache.protected_size() == 4
    assert cache.evict(100) == 0
    cache.dec_lock_ref(node)
    assert cache.protected_size() == 0 and cache.evictable_size() == 4
    with pytest.raises(RuntimeError):
        cache.dec_lock_ref(node)
    assert cache.evict(100) == 4 and cache.total_size() == 0 and cache.num_nodes() == 0


def test_evict_is_lru_and_promotes_parents():
    _, allocator, cache = make_cache()
    cache.insert([1, 1, 1], allocator.alloc(3))  # A
    cache.insert([2, 2], allocator.alloc(2))  # B
    cache.insert([3, 3, 3, 3], allocator.alloc(4))  # C
    cache.match_prefix([1, 1, 1])  # A becomes most recent
    assert cache.evict(0) == 0 and cache.total_size() == 9
    assert cache.evict(1) == 2  # B, the least recent leaf, goes whole
    assert cache.match_prefix([2, 2])[0].numel() == 0
    assert cache.evict(1) == 4  # then C
    assert cache.match_prefix([1, 1, 1])[0].numel() == 3
    check_accounting(cache, allocator)

    # parent [5, 5] with children [5, 5, 6] (older) and [5, 5, 7] (newer)
    cache.insert([5, 5, 6], allocator.alloc(3))
    dup = allocator.alloc(3)
    assert cache.insert([5, 5, 7], dup) == 2
    allocator.free(dup[:2])
    cache.match_prefix([1, 1, 1])  # A newest again; leaves by age: [6], [7], A
    assert cache.evict(1) == 1  # [6]
    assert (5, 5, 6) not in tree_map(cache) and (5, 5, 7) in tree_map(cache)
    assert cache.evict(2) == 3  # [7], then its parent [5, 5], now an unlocked leaf older than A
    assert cache.match_prefix([1, 1, 1])[0].numel() == 3
    assert cache.evict(10**6) == 3 and cache.total_size() == 0
    assert cache.num_evicted_tokens == 13
    check_accounting(cache, allocator)


def test_reset_returns_everything_and_refuses_when_locked():
    _, allocator, cache = make_cache(size=16)
    cache.insert([1, 2, 3], allocator.alloc(3))
    cache.insert([4, 5], allocator.alloc(2))
    _, node = cache.match_prefix([4, 5])
    cache.inc_lock_ref(node)
    with pytest.raises(RuntimeError):
        cache.reset()
    assert cache.total_size() == 5
    cache.dec_lock_ref(node)
    cache.reset()
    assert cache.total_size() == 0 and cache.num_nodes() == 0
    assert allocator.available_size() == allocator.size
    check_accounting(cache, allocator)


def test_disabled_cache_holds_nothing():
    _, allocator, cache = make_cache(disable=True)
    assert cache.insert([1, 2, 3], allocator.alloc(3)) == 0
    got, node = cache.match_prefix([1, 2, 3])
    assert got.numel() == 0 and node is cache.root_node
    assert cache.total_size() == 0 and cache.evict(10) == 0


def test_pretty_print_and_repr():
    _, allocator, cache = make_cache()
    cache.insert(list(range(1, 21)), allocator.alloc(20))
    cache.insert([1, 2, 99], torch.cat([cache.match_prefix([1, 2])[0], allocator.alloc(1)]))
    text = cache.pretty_print()
    assert text.splitlines()[0].startswith("root  total=21")
    assert "[1, 2] len=2" in text and "[99] len=1" in text and "'...'" in text
    assert "RadixCache(total=21" in repr(cache)


# ---------------------------------------------------------------------------------- randomized property
def test_random_operations_match_reference():
    rng = random.Random(1234)
    _, allocator, cache = make_cache(size=96)
    ref: dict[tuple[int, ...], int] = {}  # every cached prefix -> slot of its last token
    locks: list[tuple[TreeNode, list[int], list[int]]] = []  # (node, key, slots)

    def random_key() -> list[int]:
        if ref and rng.random() < 0.7:
            base = list(rng.choice(list(ref)))
            base = base[: rng.randint(1, len(base))]
        else:
            base = []
        return base + [rng.randrange(4) for _ in range(rng.randint(0 if base else 1, 6))]

    for _step in range(600):
        op = rng.random()
        key = random_key()
        if op < 0.35:  # insert fresh slots
            slots = allocator.alloc(len(key))
            if slots is None:
                cache.evict(len(key) - allocator.available_size())
                slots = allocator.alloc(len(key))
            if slots is None:
                continue
            expected_prefix = len(reference_match(ref, key))
            num_cached = cache.insert(key, slots)
            assert num_cached == expected_prefix
            allocator.free(slots[:num_cached])
            for i in range(num_cached, len(key)):
                ref[tuple(key[: i + 1])] = int(slots[i])
        elif op < 0.6:  # match
            got, node = cache.match_prefix(key)
            assert got.tolist() == reference_match(ref, key)
            assert node is cache.root_node or node.key[-1] == key[got.numel() - 1]
        elif op < 0.75:  # lock a match
            got, node = cache.match_prefix(key)
            cache.inc_lock_ref(node)
            locks.append((node, key[: got.numel()], got.tolist()))
        elif op < 0.87 and locks:  # unlock; the locked indices must still be what the tree says
            node, locked_key, locked_slots = locks.pop(rng.randrange(len(locks)))
            assert cache.match_prefix(locked_key)[0].tolist() == locked_slots
            cache.dec_lock_ref(node)
        else:  # evict
            want = rng.randint(0, 24)
            evictable = cache.evictable_size()
            freed = cache.evict(want)
            assert freed >= min(want, evictable) and cache.evictable_size() == evictable - freed
            now = tree_map(cache)
            assert all(ref[k] == v for k, v in now.items())
            assert all(k[:-1] in now for k in now if len(k) > 1)  # prefix-closed
            assert len(ref) - len(now) == freed
            for _, locked_key, locked_slots in locks:
                assert reference_match(now, locked_key) == locked_slots  # locked never evicted
            ref = now
        assert tree_map(cache) == ref
        assert (cache.protected_size() > 0) == any(k for _, k, _ in locks)
        check_accounting(cache, allocator)

    for node, _, _ in locks:
        cache.dec_lock_ref(node)
    assert cache.protected_size() == 0
    cache.reset()
    assert allocator.available_size() == allocator.size


# ---------------------------------------------------------------------------------- request lifecycle
class Sim:
    """The scheduler's side of the contract, minimal: admit, prefill chunks, decode, finish."""

    def __init__(self, disable: bool = False, size: int = 64):
        self.req_pool, self.allocator, self.cache = make_cache(size=size, disable=disable)

    def admit(self, rid: str, input_ids: list[int]) -> Req:
        req = Req(rid=rid, origin_input_ids=list(input_ids), sampling_params=SamplingParams())
        prefix, node = self.cache.match_prefix(req.fill_ids[:-1])  # keep one token to compute
        self.cache.inc_lock_ref(node)
        req.req_pool_idx = self.req_pool.alloc()
        req.prefix_indices, req.last_node, req.kv_len = prefix, node, prefix.numel()
        req.cached_tokens = prefix.numel()
        self.req_pool.write(req.req_pool_idx, 0, prefix)
        return req

    def extend(self, req: Req, num_tokens: int) -> None:
        """Give the next ``num_tokens`` of fill_ids fresh KV slots (a prefill chunk or a decode step)."""
        slots = self.allocator.alloc(num_tokens)
        if slots is None:
            self.cache.evict(num_tokens)
            slots = self.allocator.alloc(num_tokens)
        self.req_pool.write(req.req_pool_idx, req.kv_len, slots)
        req.kv_len += num_tokens

    def prefill(self, req: Req, chunk: int) -> None:
        while req.kv_len < len(req.origin_input_ids):
            self.extend(req, min(chunk, len(req.origin_input_ids) - req.kv_len))
            if req.kv_len < len(req.origin_input_ids):
                self.cache.cache_unfinished_req(req)
                self.check_req(req)

    def decode(self, req: Req, new_token_ids: list[int]) -> None:
        req.output_ids.append(new_token_ids[0])  # sampled by the last prefill pass
        for token in new_token_ids[1:]:
            self.extend(req, 1)  # feeds the previous token back
            req.output_ids.append(token)

    def own_slots(self, req: Req) -> list[int]:
        start = 0 if self.cache.disable else len(req.prefix_indices)  # disabled: the request owns all its KV
        return self.req_pool.req_to_token[req.req_pool_idx, start : req.kv_len].tolist()

    def check_req(self, req: Req) -> None:
        row = self.req_pool.req_to_token[req.req_pool_idx, : req.kv_len]
        assert row[: len(req.prefix_indices)].tolist() == req.prefix_indices.tolist()
        if not self.cache.disable:
            assert self.cache.match_prefix(req.fill_ids[: req.kv_len])[0].tolist() == row.tolist()
            assert req.last_node.lock_ref > 0 or req.kv_len == 0

    def check(self, *running: Req) -> None:
        held = tuple(s for r in running for s in self.own_slots(r))
        check_accounting(self.cache, self.allocator, held)


def test_lifecycle_chunked_prefill_and_prefix_hit():
    sim = Sim()
    prompt = list(range(10, 20))
    a = sim.admit("a", prompt)
    assert a.cached_tokens == 0
    sim.prefill(a, chunk=4)  # chunks 4 + 4 cached as unfinished, then 2
    assert len(a.prefix_indices) == 8 and sim.cache.protected_size() == 8
    sim.decode(a, [7, 8, 9])
    assert a.kv_len == 12 and a.fill_ids == prompt + [7, 8, 9]
    sim.check(a)
    sim.cache.cache_finished_req(a)
    assert sim.cache.protected_size() == 0 and sim.cache.total_size() == 12
    assert sim.req_pool.available_size() == sim.req_pool.size
    sim.check()

    b = sim.admit("b", prompt + [7, 8, 100, 101])
    assert b.cached_tokens == 12  # prompt + 7 + 8 were cached by a
    sim.prefill(b, chunk=64)
    sim.decode(b, [5])
    sim.check(b)
    sim.cache.cache_finished_req(b)
    assert sim.cache.total_size() == 14
    sim.check()
    sim.cache.reset()
    assert sim.allocator.available_size() == sim.allocator.size
    assert sim.req_pool.available_size() == sim.req_pool.size


def test_lifecycle_two_requests_sharing_a_prefix_free_duplicates():
    sim = Sim()
    shared = [1, 2, 3, 4, 5, 6]
    a = sim.admit("a", shared + [7, 8])
    b = sim.admit("b", shared + [9])  # admitted before a cached anything: no hit
    assert b.cached_tokens == 0
    sim.extend(a, 4)
    sim.cache.cache_unfinished_req(a)
    sim.extend(b, 4)
    b_first_chunk = sim.req_pool.req_to_token[b.req_pool_idx, :4].tolist()
    free_before = sim.allocator.available_size()
    sim.cache.cache_unfinished_req(b)  # [1, 2, 3, 4] already cached by a: b's 4 slots are duplicates
    assert sim.allocator.available_size() == free_before + 4
    assert sim.req_pool.req_to_token[b.req_pool_idx, :4].tolist() == a.prefix_indices.tolist()
    assert set(b_first_chunk).isdisjoint(a.prefix_indices.tolist())
    assert b.last_node is a.last_node and a.last_node.lock_ref == 2
    sim.check(a, b)

    sim.prefill(a, chunk=64)
    sim.prefill(b, chunk=64)
    sim.decode(a, [50, 51])
    sim.decode(b, [60])
    sim.check(a, b)
    sim.cache.cache_finished_req(a)  # caches shared + [7, 8, 50]
    sim.check(b)
    free_before = sim.allocator.available_size()
    sim.cache.cache_finished_req(b)  # [5, 6] duplicates freed, [9] new
    assert sim.allocator.available_size() == free_before + 2
    assert sim.cache.total_size() == 10 and sim.cache.protected_size() == 0
    sim.check()
    sim.cache.reset()
    assert sim.allocator.available_size() == sim.allocator.size
    assert sim.req_pool.available_size() == sim.req_pool.size


def test_lifecycle_retract_then_readmit_hits_its_own_kv():
    sim = Sim()
    a = sim.admit("a", [3, 1, 4, 1, 5])
    sim.prefill(a, chunk=2)
    sim.decode(a, [9, 2, 6])
    kv = sim.req_pool.req_to_token[a.req_pool_idx, : a.kv_len].tolist()
    sim.cache.cache_finished_req(a)  # retraction hands the KV to the tree too
    a.reset_for_retract()
    sim.check()
    readmitted = sim.admit("a", a.fill_ids)  # prompt + outputs so far
    assert readmitted.prefix_indices.tolist() == kv
    sim.cache.dec_lock_ref(readmitted.last_node)
    sim.req_pool.free(readmitted.req_pool_idx)
    sim.check()


def test_lifecycle_eviction_under_pressure_spares_running_requests():
    sim = Sim(size=24)
    for i in range(3):
        r = sim.admit(f"old{i}", [40 + i] * 6)
        sim.prefill(r, chunk=64)
        sim.cache.cache_finished_req(r)
    assert sim.cache.total_size() == 18
    running = sim.admit("run", [40] * 6 + [1, 2])  # locks [40] * 6
    assert running.cached_tokens == 6
    sim.prefill(running, chunk=2)
    sim.check(running)
    new = sim.admit("new", [7] * 10)
    sim.prefill(new, chunk=64)  # needs eviction of unlocked leaves
    sim.check(running, new)
    assert sim.cache.match_prefix([40] * 6)[0].numel() == 6
    assert sim.cache.match_prefix([41] * 6)[0].numel() == 0  # the least recent unlocked leaf went
    sim.cache.cache_finished_req(running)
    sim.cache.cache_finished_req(new)
    sim.check()
    sim.cache.reset()
    assert sim.allocator.available_size() == sim.allocator.size


def test_lifecycle_disabled_frees_everything():
    sim = Sim(disable=True)
    a = sim.admit("a", [1, 2, 3, 4, 5])
    sim.prefill(a, chunk=2)
    assert a.prefix_indices.tolist() == sim.req_pool.req_to_token[a.req_pool_idx, :4].tolist()
    sim.decode(a, [6, 7])
    sim.check(a)
    sim.cache.cache_finished_req(a)
    b = sim.admit("b", [1, 2, 3, 4, 5])
    assert b.cached_tokens == 0
    sim.req_pool.free(b.req_pool_idx)
    assert sim.cache.total_size() == 0
    assert sim.allocator.available_size() == sim.allocator.size
    assert sim.req_pool.available_size() == sim.req_pool.size
