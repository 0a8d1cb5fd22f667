"""Unit tests for the schedule policy: PrefillAdder budgets, decode reserve, queue order, in-batch prefix deferral.

Plain ``Req`` objects only (no model, no server). The radix cache is used for one lpm-ordering test.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from sglkit.cache.memory_pool import ReqToTokenPool, TokenToKVPoolAllocator
from sglkit.cache.radix_cache import RadixCache
from sglkit.core.req import Req
from sglkit.core.sampling_params import SamplingParams
from sglkit.runtime.scheduler.policy import (
    CLIP_MAX_NEW_TOKENS,
    IN_BATCH_PREFIX_THRESHOLD,
    PrefillAdder,
    decode_reserve,
    shares_uncached_prefix,
    sort_waiting_queue,
)

_rids = iter(range(1_000_000))


def make_req(
    prompt_len: int = 10,
    max_new_tokens: int = 16,
    *,
    ids: list[int] | None = None,
    output_ids: list[int] | None = None,
    prefix_len: int = 0,
    base: int = 1000,
) -> Req:
    """A request with prompt ``ids`` (default: tokens base..base+prompt_len) and ``prefix_len`` cached slots."""
    if ids is None:
        ids = list(range(base, base + prompt_len))
    req = Req(
        rid=f"r{next(_rids)}",
        origin_input_ids=list(ids),
        sampling_params=SamplingParams(max_new_tokens=max_new_tokens),
    )
    if output_ids:
        req.output_ids = list(output_ids)
    req.prefix_indices = torch.arange(1, prefix_len + 1, dtype=torch.int64)
    return req


def adder(total=10_000, inp=10_000, chunk=None, ratio=1.0) -> PrefillAdder:
    return PrefillAdder(
        rem_total_tokens=total, rem_input_tokens=inp, rem_chunk_tokens=chunk, new_token_ratio=ratio
    )


def snapshot(a: PrefillAdder) -> dict:
    """Every field of the adder, lists copied (so later mutation would show)."""
    return {f.name: _copy(getattr(a, f.name)) for f in dataclasses.fields(a)}


def _copy(v):
    return list(v) if isinstance(v, list) else v


# ----------------------------------------------------------------------------------------- decode_reserve


@pytest.mark.parametrize(
    "max_new, num_out, ratio, want",
    [
        (100, 0, 1.0, 100),
        (100, 0, 0.5, 50),
        (101, 0, 0.5, 50),  # int() truncates
        (100, 30, 1.0, 70),  # generated tokens no longer need a reserve
        (100, 130, 1.0, 0),  # never negative
        (10 * CLIP_MAX_NEW_TOKENS, 0, 1.0, CLIP_MAX_NEW_TOKENS),  # capped
        (10 * CLIP_MAX_NEW_TOKENS, 0, 0.25, CLIP_MAX_NEW_TOKENS // 4),  # cap applies before the ratio
        (0, 0, 1.0, 0),
    ],
)
def test_decode_reserve(max_new, num_out, ratio, want):
    req = make_req(5, max_new, output_ids=[7] * num_out)
    assert decode_reserve(req, ratio) == want


# ----------------------------------------------------------------------------------------- KV total budget


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.3])
def test_kv_budget_counts_extend_plus_decode_reserve(ratio):
    prompt, max_new = 60, 80
    reserve = int(max_new * ratio)
    need = prompt + reserve
    # Exactly enough: admitted, and both the new tokens and the reserve leave the KV budget.
    a = adder(total=need, ratio=ratio)
    req = make_req(prompt, max_new)
    assert a.add_one(req, 0)
    assert a.can_run == [req] and a.extend_lens == [prompt]
    assert a.rem_total_tokens == 0
    assert a.rem_input_tokens == 10_000 - prompt  # the reserve is not charged to the input budget
    # One slot short: refused, although the prompt alone would fit.
    b = adder(total=need - 1, ratio=ratio)
    assert not b.add_one(make_req(prompt, max_new), 0)
    assert b.can_run == [] and b.rem_total_tokens == need - 1


def test_kv_budget_reserve_is_clipped():
    # A huge max_new_tokens reserves only CLIP_MAX_NEW_TOKENS, so the request still fits.
    prompt = 10
    a = adder(total=prompt + CLIP_MAX_NEW_TOKENS, ratio=1.0)
    assert a.add_one(make_req(prompt, 1_000_000), 0)
    assert a.rem_total_tokens == 0


def test_kv_budget_uses_remaining_max_new_tokens_of_a_resumed_request():
    # A retracted request coming back with 30 of 50 tokens generated only reserves the remaining 20.
    req = make_req(10, 50, output_ids=list(range(30)))
    extend = len(req.fill_ids)  # 40: prompt + generated tokens are recomputed
    a = adder(total=extend + 20)
    assert a.add_one(req, 0)
    assert a.extend_lens == [40] and a.rem_total_tokens == 0
    assert not adder(total=extend + 19).add_one(make_req(10, 50, output_ids=list(range(30))), 0)


def test_kv_budget_accumulates_over_requests():
    a = adder(total=100, ratio=1.0)
    r1, r2, r3 = make_req(20, 10), make_req(30, 10), make_req(25, 10)
    assert a.add_one(r1, 0)  # 30
    assert a.add_one(r2, 0)  # 40 -> 70 used
    assert a.rem_total_tokens == 30
    assert not a.add_one(r3, 0)  # needs 35
    assert a.can_run == [r1, r2]
    assert a.budget_state()  # still room for a smaller request
    r4 = make_req(15, 15)
    assert a.add_one(r4, 0)
    assert a.rem_total_tokens == 0 and a.extend_lens == [20, 30, 15]


# ----------------------------------------------------------------------------------------- max_prefill_tokens


def test_input_budget_without_chunking():
    a = adder(inp=100)
    r1, r2, r3 = make_req(60, 1), make_req(50, 1), make_req(40, 1)
    assert a.add_one(r1, 0)
    assert a.rem_input_tokens == 40
    assert not a.add_one(r2, 0)  # 50 > 40 left
    assert a.budget_state()
    assert a.add_one(r3, 0)  # exactly the rest
    assert a.rem_input_tokens == 0
    assert not a.budget_state()  # input budget spent: the round stops
    assert a.can_run == [r1, r3] and a.extend_lens == [60, 40]


def test_first_request_may_exceed_input_budget_without_chunking():
    """Without chunking a prompt longer than max_prefill_tokens could never be split, so the check
    ``self.can_run and extend_len > rem_input_tokens`` skips the first request of the round: it is admitted
    alone (otherwise it would starve forever), the input budget goes negative and the round stops."""
    a = adder(inp=100)
    big = make_req(150, 4)
    assert a.add_one(big, 0)
    assert a.extend_lens == [150]
    assert a.rem_input_tokens == -50
    assert not a.budget_state()
    # The same request is refused when it is not first.
    b = adder(inp=200)
    assert b.add_one(make_req(60, 1), 0)
    assert not b.add_one(make_req(150, 4), 0)


def test_first_request_over_input_budget_still_needs_kv():
    # The input-budget exemption does not extend to the KV budget.
    a = adder(total=150 + 3, inp=100)
    assert not a.add_one(make_req(150, 4), 0)  # 150 + 4 > 153
    assert a.can_run == []


def test_input_budget_is_enforced_with_chunking_when_max_prefill_is_smaller():
    a = adder(inp=100, chunk=256)
    assert a.add_one(make_req(60, 1), 0)
    assert a.rem_input_tokens == 40
    assert not a.add_one(make_req(50, 1), 0)  # 60 + 50 > max_prefill_tokens = 100
    assert sum(a.extend_lens) <= 100


# ----------------------------------------------------------------------------------------- chunking


def test_long_prompt_takes_one_chunk_and_stops_the_round():
    a = adder(total=1000, inp=1000, chunk=64, ratio=1.0)
    long = make_req(200, 50)
    assert a.budget_state()
    assert a.add_one(long, 0)
    assert a.can_run == [long]
    assert a.extend_lens == [64]
    assert a.new_chunked_req is long
    assert a.rem_chunk_tokens == 0
    assert a.rem_input_tokens == 1000 - 64
    assert a.rem_total_tokens == 1000 - 64  # no decode reserve while the prompt is still being filled
    assert not a.budget_state()


def test_chunk_is_what_is_left_of_the_chunk_budget():
    a = adder(chunk=64)
    short, long = make_req(40, 1), make_req(100, 1)
    assert a.add_one(short, 0)
    assert a.new_chunked_req is None and a.budget_state()
    assert a.add_one(long, 0)
    assert a.extend_lens == [40, 24]
    assert a.new_chunked_req is long
    assert not a.budget_state()


def test_chunked_request_continues_over_passes_until_the_last_chunk():
    """Each pass the scheduler re-adds the chunked request with its grown prefix; the last piece is a whole add."""
    req = make_req(200, 10)
    chunk = 64
    prefix, pieces = 0, []
    while True:
        a = adder(total=10_000, chunk=chunk, ratio=1.0)
        assert a.add_one(req, prefix)
        pieces.append(a.extend_lens[0])
        if a.new_chunked_req is None:
            assert a.rem_total_tokens == 10_000 - a.extend_lens[0] - 10  # reserve charged on the last piece
            break
        assert a.new_chunked_req is req
        assert a.rem_total_tokens == 10_000 - chunk
        prefix += a.extend_lens[0]
    assert pieces == [64, 64, 64, 8]
    assert sum(pieces) == 200


def test_prompt_exactly_the_chunk_budget_is_not_chunked():
    a = adder(chunk=64)
    req = make_req(64, 5)
    assert a.add_one(req, 0)
    assert a.new_chunked_req is None
    assert a.extend_lens == [64]
    assert a.rem_chunk_tokens == 0
    assert not a.budget_state()  # chunk budget spent


def test_chunk_refused_when_kv_cannot_hold_it():
    a = adder(total=50, chunk=64)
    assert not a.add_one(make_req(200, 1), 0)
    assert a.new_chunked_req is None and a.can_run == []


def test_chunking_allows_first_long_request_past_input_budget():
    # With chunking the first request is cut to the chunk budget, whatever max_prefill_tokens says.
    a = adder(inp=32, chunk=64)
    assert a.add_one(make_req(200, 1), 0)
    assert a.extend_lens == [64]
    assert not a.budget_state()


# ----------------------------------------------------------------------------------------- refusal


@pytest.mark.parametrize(
    "setup, req_kwargs, prefix_len",
    [
        # input budget (no chunking, not first)
        (dict(total=10_000, inp=50, chunk=None), dict(prompt_len=60, max_new_tokens=1), 0),
        # KV budget (whole request incl. reserve)
        (dict(total=70, inp=10_000, chunk=None), dict(prompt_len=30, max_new_tokens=50), 0),
        # KV budget with a prefix (extend 20 + reserve 60 > 70)
        (dict(total=70, inp=10_000, chunk=None), dict(prompt_len=50, max_new_tokens=60), 30),
        # chunk larger than the KV left
        (dict(total=30, inp=10_000, chunk=64), dict(prompt_len=300, max_new_tokens=1), 0),
    ],
    ids=["input", "kv", "kv-with-prefix", "chunk-kv"],
)
def test_refused_request_leaves_adder_unchanged(setup, req_kwargs, prefix_len):
    a = adder(**setup)
    first = make_req(5, 1, base=1)
    assert a.add_one(first, 0)
    before = snapshot(a)
    req = make_req(**req_kwargs, prefix_len=prefix_len)
    assert not a.add_one(req, prefix_len)
    assert snapshot(a) == before
    assert req not in a.can_run


# ----------------------------------------------------------------------------------------- prefix lengths


def test_prefix_reduces_extend_length_and_budgets():
    a = adder(total=100, inp=40, ratio=1.0)
    req = make_req(50, 10, prefix_len=30)
    assert a.add_one(req, 30)
    assert a.extend_lens == [20]
    assert a.rem_input_tokens == 20
    assert a.rem_total_tokens == 100 - 20 - 10
    # Without the prefix the same prompt (50 + 10) would not fit a KV budget of 40.
    assert not adder(total=40).add_one(make_req(50, 10), 0)
    assert adder(total=40).add_one(make_req(50, 10, prefix_len=30), 30)


def test_prefix_decides_whether_a_prompt_is_chunked():
    a = adder(chunk=64)
    req = make_req(100, 1, prefix_len=40)
    assert a.add_one(req, 40)
    assert a.extend_lens == [60] and a.new_chunked_req is None


# ----------------------------------------------------------------------------------------- queue order


def _match_from(table: dict[str, int], calls: list[str]):
    def match(req: Req) -> None:
        calls.append(req.rid)
        req.prefix_indices = torch.arange(table[req.rid], dtype=torch.int64)

    return match


def test_lpm_orders_by_matched_prefix_length_stable_on_ties():
    reqs = [make_req(50) for _ in range(5)]
    lens = [3, 20, 0, 20, 7]
    table = {r.rid: n for r, n in zip(reqs, lens)}
    calls: list[str] = []
    waiting = list(reqs)
    sort_waiting_queue("lpm", waiting, _match_from(table, calls))
    assert sorted(calls) == sorted(r.rid for r in reqs)  # every request was matched
    assert [len(r.prefix_indices) for r in waiting] == [20, 20, 7, 3, 0]
    assert waiting[0] is reqs[1] and waiting[1] is reqs[3]  # ties keep arrival order


def test_fcfs_keeps_arrival_order_and_matches_nothing():
    reqs = [make_req(50) for _ in range(4)]
    table = {r.rid: n for r, n in zip(reqs, [1, 9, 4, 30])}
    calls: list[str] = []
    waiting = list(reqs)
    sort_waiting_queue("fcfs", waiting, _match_from(table, calls))
    assert waiting == reqs
    assert calls == []  # fcfs matches each request lazily when it is considered


def test_lpm_with_a_single_request_does_not_match():
    req = make_req(10)
    calls: list[str] = []
    waiting = [req]
    sort_waiting_queue("lpm", waiting, _match_from({req.rid: 5}, calls))
    assert waiting == [req] and calls == []  # the scheduler matches it itself


def test_lpm_with_a_real_radix_cache():
    allocator = TokenToKVPoolAllocator(256)
    cache = RadixCache(ReqToTokenPool(4, 128), allocator)
    cached = list(range(100, 140))
    cache.insert(cached, allocator.alloc(len(cached)))
    a = make_req(ids=list(range(500, 530)))  # no match
    b = make_req(ids=cached[:10] + [1, 2, 3])  # 10 cached
    c = make_req(ids=cached + [7, 8])  # 40 cached
    waiting = [a, b, c]

    def match(req: Req) -> None:
        req.prefix_indices, req.last_node = cache.match_prefix(req.fill_ids[:-1])

    sort_waiting_queue("lpm", waiting, match)
    assert waiting == [c, b, a]
    assert [len(r.prefix_indices) for r in waiting] == [40, 10, 0]


# ----------------------------------------------------------------------------------------- in-batch prefix


T = IN_BATCH_PREFIX_THRESHOLD


@pytest.mark.parametrize(
    "shared, extra, want",
    [(T, 5, True), (T + 10, 5, True), (T - 1, 5, False), (0, 40, False)],
)
def test_shares_uncached_prefix_threshold(shared, extra, want):
    common = list(range(1, shared + 1))
    admitted = make_req(ids=common + list(range(5000, 5000 + T + 5)))
    req = make_req(ids=common + list(range(9000, 9000 + extra + T)))
    assert shares_uncached_prefix(req, [admitted]) is want


def test_shares_uncached_prefix_counts_only_tokens_past_the_cached_prefix():
    cached = 10
    common = list(range(1, cached + T + 1))
    admitted = make_req(ids=common + [7777])
    # Cached prefix of 10: tokens 10..10+T are uncached and shared -> defer.
    req = make_req(ids=common + [8888], prefix_len=cached)
    assert shares_uncached_prefix(req, [admitted])
    # With 11 cached tokens only T-1 uncached tokens remain in the shared part -> no deferral.
    req2 = make_req(ids=common + [8888], prefix_len=cached + 1)
    assert len(req2.fill_ids) >= cached + 1 + T
    assert not shares_uncached_prefix(req2, [admitted])


def test_shares_uncached_prefix_short_requests_never_defer():
    ids = list(range(1, T))  # shorter than the threshold
    assert not shares_uncached_prefix(make_req(ids=ids), [make_req(ids=ids + list(range(100, 200)))])
    long_ids = list(range(1, T + 20))
    # The admitted request is too short to cover the window.
    assert not shares_uncached_prefix(make_req(ids=long_ids), [make_req(ids=long_ids[: T - 1])])


def test_shares_uncached_prefix_looks_at_every_admitted_request():
    ids = list(range(1, T + 10))
    others = [make_req(ids=list(range(500, 600))), make_req(ids=list(range(700, 800)))]
    req = make_req(ids=ids)
    assert not shares_uncached_prefix(req, others)
    assert shares_uncached_prefix(req, [*others, make_req(ids=ids[:T] + [42])])
    assert not shares_uncached_prefix(req, [])


def test_shares_uncached_prefix_includes_output_tokens():
    # fill_ids = prompt + output: a resumed request shares through its generated tokens too.
    prompt = list(range(1, 11))
    out = list(range(200, 200 + T))
    admitted = make_req(ids=prompt + out + [1])
    req = make_req(ids=prompt, output_ids=out)
    assert shares_uncached_prefix(req, [admitted])


# ----------------------------------------------------------------------------------------- lof / random orders
def _no_match(req: Req) -> None:
    raise AssertionError("only lpm radix-matches the whole queue")


def test_lof_orders_by_max_new_tokens_descending_ties_by_arrival():
    reqs = [make_req(max_new_tokens=n) for n in (5, 50, 5, 500, 50)]
    for i, req in enumerate(reqs):
        req.created_time = float(i)
    waiting = [reqs[4], reqs[2], reqs[0], reqs[3], reqs[1]]  # queue order is not arrival order (retractions)
    sort_waiting_queue("lof", waiting, _no_match)
    assert waiting == [reqs[3], reqs[1], reqs[4], reqs[0], reqs[2]]


def test_random_order_repeats_with_the_seed_and_is_a_permutation():
    reqs = [make_req() for _ in range(12)]

    def order(seed: int, rounds: int = 3) -> list[list[str]]:
        rng, waiting, out = random.Random(seed), list(reqs), []
        for _ in range(rounds):  # the generator advances: each round draws a new order
            sort_waiting_queue("random", waiting, _no_match, rng)
            out.append([r.rid for r in waiting])
        return out

    first = order(0)
    assert first == order(0)
    assert first != order(1)
    assert all(sorted(o) == sorted(r.rid for r in reqs) for o in first)
    assert len({tuple(o) for o in first}) > 1
    with pytest.raises(ValueError, match="random"):
        sort_waiting_queue("random", list(reqs), _no_match)


@pytest.mark.parametrize("policy", ["lof", "random", "fcfs"])
def test_orders_leave_short_queues_alone(policy):
    one = [make_req()]
    sort_waiting_queue(policy, one, _no_match, random.Random(0))
    assert len(one) == 1
