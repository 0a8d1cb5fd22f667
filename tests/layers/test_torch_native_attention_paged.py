"""TorchNativeAttnBackend against a per-request SDPA reference over random paged KV layouts (CPU, float32).

Each request's KV sits at random, non-contiguous, shuffled pool slots; request rows in ``req_to_token`` are
random too. The reference gathers one request's K/V in token order and runs plain
``scaled_dot_product_attention`` with an explicit causal-with-prefix mask (query at position p sees keys 0..p).
Covers the default paths (no sliding window / logit cap): extend with and without cached prefixes, the plain
padded decode gather, the shared-prefix decode path and the decode workspace (reuse and every rebuild cause).
Every backend here is built with ``use_cpu_kernel=False`` (the SDPA paths); sglkit's CPU decode kernel has its
own tests (tests/layers/cpu_kernels/test_decode_attention.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F

from sglkit.cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
from sglkit.core.forward_batch import ForwardBatch, ForwardMode
from sglkit.layers.attention import torch_native
from sglkit.layers.attention.base import RadixAttention
from sglkit.layers.attention.torch_native import (
    SHARED_PREFIX_MIN_TOKENS,
    TorchNativeAttnBackend,
    shared_prefix_len,
)

HEAD_DIM = 16
NUM_LAYERS = 2
POOL_SIZE = 2048
NUM_ROWS = 16
MAX_CONTEXT = 256
SCALING = 0.37  # not head_dim ** -0.5, so a backend ignoring layer.scaling would fail
ATOL = 1e-5

HEADS = [pytest.param(4, 4, id="mha"), pytest.param(4, 2, id="gqa2"), pytest.param(6, 2, id="gqa3")]


@dataclass
class Paged:
    """A KV pool filled with random K/V and a req_to_token table whose rows point at random slots."""

    pool: MHATokenToKVPool
    r2t: ReqToTokenPool
    free: list[int]  # pool slots not yet given to any request, in random order
    rows: list[int] = field(default_factory=list)  # req_to_token row of each request
    kv: list[list[int]] = field(default_factory=list)  # pool slots of each request, token order

    def take(self, n: int) -> list[int]:
        out, self.free = self.free[:n], self.free[n:]
        assert len(out) == n
        return out

    def add_request(self, n: int, shared: list[int] | None = None) -> int:
        slots = list(shared or []) + self.take(n - len(shared or []))
        used = set(self.rows)
        row = next(r for r in torch.randperm(NUM_ROWS).tolist() if r not in used)
        self.rows.append(row)
        self.kv.append(slots)
        self.r2t.write(row, 0, torch.tensor(slots, dtype=torch.int64))
        return len(self.rows) - 1

    def append_token(self, i: int) -> int:
        """Give request i one more slot (at position len(kv[i])); returns the slot."""
        (slot,) = self.take(1)
        self.r2t.write(self.rows[i], len(self.kv[i]), torch.tensor([slot]))
        self.kv[i].append(slot)
        return slot


def make_paged(num_kv_heads: int, seed: int = 0) -> Paged:
    torch.manual_seed(seed)
    pool = MHATokenToKVPool(POOL_SIZE, NUM_LAYERS, num_kv_heads, HEAD_DIM, torch.float32)
    for layer_id in range(NUM_LAYERS):
        pool.k_buffer[layer_id].normal_()
        pool.v_buffer[layer_id].normal_()
        # A loud padding sink: any padded position that leaks into attention shows.
        pool.k_buffer[layer_id][0] = 50.0
        pool.v_buffer[layer_id][0] = 1e3
    free = (torch.randperm(POOL_SIZE) + 1).tolist()
    return Paged(pool, ReqToTokenPool(NUM_ROWS, MAX_CONTEXT), free)


def reference(paged: Paged, layer_id: int, i: int, q: torch.Tensor, positions: list[int], num_heads: int):
    """q: [n, Hq, D] of request i at ``positions`` -> [n, Hq, D]."""
    k_buf, v_buf = paged.pool.get_kv_buffer(layer_id)
    idx = torch.tensor(paged.kv[i][: max(positions) + 1])
    k, v = k_buf[idx], v_buf[idx]  # [L, Hkv, D]
    group = num_heads // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # [L, Hq, D]
    mask = torch.arange(idx.numel())[None, :] <= torch.tensor(positions)[:, None]  # [n, L]
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        attn_mask=mask,
        scale=SCALING,
    )
    return out[0].transpose(0, 1)


def forward_batch(paged: Paged, backend, mode: ForwardMode, reqs, prefix_lens, ext_lens) -> ForwardBatch:
    seq_lens = [p + e for p, e in zip(prefix_lens, ext_lens)]
    out_cache_loc = [s for i, p, e in zip(reqs, prefix_lens, ext_lens) for s in paged.kv[i][p : p + e]]
    positions = [pos for p, e in zip(prefix_lens, ext_lens) for pos in range(p, p + e)]
    starts = [sum(ext_lens[:j]) for j in range(len(reqs))]

    def as_t(x):
        return torch.tensor(x, dtype=torch.int64)

    return ForwardBatch(
        forward_mode=mode,
        batch_size=len(reqs),
        input_ids=torch.zeros(len(positions), dtype=torch.int64),
        positions=as_t(positions),
        out_cache_loc=as_t(out_cache_loc),
        req_pool_indices=as_t([paged.rows[i] for i in reqs]),
        seq_lens=as_t(seq_lens),
        seq_lens_cpu=seq_lens,
        extend_prefix_lens_cpu=list(prefix_lens),
        extend_seq_lens_cpu=list(ext_lens),
        extend_start_loc_cpu=starts,
        logits_indices=as_t([s + e - 1 for s, e in zip(starts, ext_lens)]),
        req_to_token_pool=paged.r2t,
        token_to_kv_pool=paged.pool,
        attn_backend=backend,
    )


def decode_batch(paged: Paged, backend, reqs) -> ForwardBatch:
    """Decode pass where every request's last slot is this step's token."""
    lens = [len(paged.kv[i]) for i in reqs]
    return forward_batch(paged, backend, ForwardMode.DECODE, reqs, [n - 1 for n in lens], [1] * len(reqs))


def layer(layer_id: int, num_heads: int, num_kv_heads: int) -> RadixAttention:
    return RadixAttention(layer_id, num_heads, num_kv_heads, HEAD_DIM, SCALING)


def check_decode(paged, backend, fb, reqs, num_heads, num_kv_heads) -> None:
    """Run forward_decode on every layer and compare each request with the reference."""
    q = torch.randn(len(reqs), num_heads, HEAD_DIM)
    for layer_id in range(NUM_LAYERS):
        out = backend.forward_decode(q, layer(layer_id, num_heads, num_kv_heads), fb)
        assert out.shape == q.shape
        for b, i in enumerate(reqs):
            pos = len(paged.kv[i]) - 1
            want = reference(paged, layer_id, i, q[b : b + 1], [pos], num_heads)
            torch.testing.assert_close(out[b : b + 1], want, atol=ATOL, rtol=ATOL)


# ----------------------------------------------------------------------------------------- extend


@pytest.mark.parametrize("num_heads, num_kv_heads", HEADS)
@pytest.mark.parametrize(
    "prefix_lens, ext_lens",
    [
        pytest.param([0, 0, 0], [5, 17, 1], id="no-prefix"),
        pytest.param([0, 9, 33, 1], [7, 1, 12, 30], id="prefix"),
        pytest.param([40], [3], id="single-with-prefix"),
    ],
)
def test_extend_matches_reference(num_heads, num_kv_heads, prefix_lens, ext_lens):
    paged = make_paged(num_kv_heads, seed=len(ext_lens) * 10 + num_heads)
    reqs = [paged.add_request(p + e) for p, e in zip(prefix_lens, ext_lens)]
    backend = TorchNativeAttnBackend(use_cpu_kernel=False)
    fb = forward_batch(paged, backend, ForwardMode.EXTEND, reqs, prefix_lens, ext_lens)
    backend.init_forward_metadata(fb)
    assert [m is None for m in fb.attn_metadata.masks] == [p == 0 for p in prefix_lens]
    q = torch.randn(sum(ext_lens), num_heads, HEAD_DIM)
    for layer_id in range(NUM_LAYERS):
        out = backend.forward_extend(q, layer(layer_id, num_heads, num_kv_heads), fb)
        start = 0
        for i, p, e in zip(reqs, prefix_lens, ext_lens):
            want = reference(paged, layer_id, i, q[start : start + e], list(range(p, p + e)), num_heads)
            torch.testing.assert_close(out[start : start + e], want, atol=ATOL, rtol=ATOL)
            start += e


@pytest.mark.parametrize("num_heads, num_kv_heads", HEADS)
def test_extend_through_radix_attention_writes_kv_then_attends(num_heads, num_kv_heads):
    paged = make_paged(num_kv_heads, seed=3)
    prefix_lens, ext_lens = [12, 0], [6, 9]
    reqs = [paged.add_request(p + e) for p, e in zip(prefix_lens, ext_lens)]
    backend = TorchNativeAttnBackend(use_cpu_kernel=False)
    fb = forward_batch(paged, backend, ForwardMode.EXTEND, reqs, prefix_lens, ext_lens)
    backend.init_forward_metadata(fb)
    n = sum(ext_lens)
    q = torch.randn(n, num_heads * HEAD_DIM)
    k = torch.randn(n, num_kv_heads * HEAD_DIM)
    v = torch.randn(n, num_kv_heads * HEAD_DIM)
    out = layer(1, num_heads, num_kv_heads)(q, k, v, fb)
    assert out.shape == (n, num_heads * HEAD_DIM)
    k_buf, v_buf = paged.pool.get_kv_buffer(1)
    assert torch.equal(k_buf[fb.out_cache_loc], k.view(n, num_kv_heads, HEAD_DIM))
    assert torch.equal(v_buf[fb.out_cache_loc], v.view(n, num_kv_heads, HEAD_DIM))
    q3, out3 = q.view(n, num_heads, HEAD_DIM), out.view(n, num_heads, HEAD_DIM)
    start = 0
    for i, p, e in zip(reqs, prefix_lens, ext_lens):
        want = reference(paged, 1, i, q3[start : start + e], list(range(p, p + e)), num_heads)
        torch.testing.assert_close(out3[start : start + e], want, atol=ATOL, rtol=ATOL)
        start += e


# ----------------------------------------------------------------------------------------- decode


@pytest.mark.parametrize("num_heads, num_kv_heads", HEADS)
@pytest.mark.parametrize("lens", [[1, 9, 40, 23], [64], [2, 2]])
def test_decode_plain_padded_path(monkeypatch, num_heads, num_kv_heads, lens):
    monkeypatch.setattr(torch_native, "WORKSPACE_MAX_BYTES", 0)  # no workspace: gather every step
    paged = make_paged(num_kv_heads, seed=sum(lens))
    reqs = [paged.add_request(n) for n in lens]
    backend = TorchNativeAttnBackend(use_cpu_kernel=False)
    fb = decode_batch(paged, backend, reqs)
    backend.init_forward_metadata(fb)
    meta = fb.attn_metadata
    assert meta.common_indices is None and meta.workspace is None and backend.workspace is None
    assert meta.kv_indices.shape == (len(lens), max(lens))
    check_decode(paged, backend, fb, reqs, num_heads, num_kv_heads)


@pytest.mark.parametrize("num_heads, num_kv_heads", HEADS)
@pytest.mark.parametrize(
    "common, suffixes",
    [
        pytest.param(SHARED_PREFIX_MIN_TOKENS + 8, [1, 5, 17], id="common40"),
        pytest.param(SHARED_PREFIX_MIN_TOKENS, [1, 30], id="exactly-threshold"),
        pytest.param(70, [3, 3, 1, 9, 2], id="five-reqs"),
    ],
)
def test_decode_shared_prefix_path(num_heads, num_kv_heads, common, suffixes):
    paged = make_paged(num_kv_heads, seed=common)
    shared = paged.take(common)
    reqs = [paged.add_request(common + s, shared=shared) for s in suffixes]
    backend = TorchNativeAttnBackend(use_cpu_kernel=False)
    fb = decode_batch(paged, backend, reqs)
    backend.init_forward_metadata(fb)
    meta = fb.attn_metadata
    assert meta.common_indices is not None  # the shared-prefix path is taken
    assert meta.common_indices.tolist() == shared
    assert meta.workspace is None and backend.workspace is None
    assert meta.kv_indices.shape == (len(reqs), max(suffixes))
    check_decode(paged, backend, fb, reqs, num_heads, num_kv_heads)


def test_decode_shared_run_below_threshold_uses_plain_path():
    paged = make_paged(2, seed=5)
    shared = paged.take(SHARED_PREFIX_MIN_TOKENS - 1)
    reqs = [paged.add_request(len(shared) + s, shared=shared) for s in (10, 20)]
    backend = TorchNativeAttnBackend(use_cpu_kernel=False)
    fb = decode_batch(paged, backend, reqs)
    backend.init_forward_metadata(fb)
    assert fb.attn_metadata.common_indices is None
    check_decode(paged, backend, fb, reqs, 4, 2)


def _rows(lists: list[list[int]]) -> torch.Tensor:
    width = max(len(x) for x in lists)
    return torch.tensor([x + [0] * (width - len(x)) for x in lists])


def test_shared_prefix_len():
    t = SHARED_PREFIX_MIN_TOKENS
    base = list(range(1, 100))
    # Identical rows: every request keeps its last slot in the suffix.
    assert shared_prefix_len(_rows([base[:50], base[:50]]), [50, 50]) == 49
    # Limited by the shortest request.
    assert shared_prefix_len(_rows([base[: t + 1], base[:80]]), [t + 1, 80]) == t
    assert shared_prefix_len(_rows([base[:t], base[:80]]), [t, 80]) == 0
    # One request only.
    assert shared_prefix_len(_rows([base[:80]]), [80]) == 0
    # First divergence decides; a later re-match does not count.
    other = base[:40] + [999] + base[41:80]
    assert shared_prefix_len(_rows([base[:80], other]), [80, 80]) == 40
    other = base[: t - 1] + [999] + base[t:80]
    assert shared_prefix_len(_rows([base[:80], other]), [80, 80]) == 0
    # Any one row diverging early cuts the common run for the batch.
    third = [7] + base[1:80]
    assert shared_prefix_len(_rows([base[:80], base[:80], third]), [80, 80, 80]) == 0


# ----------------------------------------------------------------------------------------- decode workspace


def decode_step(paged, backend, reqs, num_heads, num_kv_heads, grow: bool = True):
    """One decode step through RadixAttention on every layer: append a token per request, write its K/V, check."""
    if grow:
        for i in reqs:
            paged.append_token(i)
    fb = decode_batch(paged, backend, reqs)
    backend.init_forward_metadata(fb)
    q = torch.randn(len(reqs), num_heads * HEAD_DIM)
    q3 = q.view(len(reqs), num_heads, HEAD_DIM)
    for layer_id in range(NUM_LAYERS):
        k = torch.randn(len(reqs), num_kv_heads * HEAD_DIM)
        v = torch.randn(len(reqs), num_kv_heads * HEAD_DIM)
        out = layer(layer_id, num_heads, num_kv_heads)(q, k, v, fb).view(len(reqs), num_heads, HEAD_DIM)
        for b, i in enumerate(reqs):
            want = reference(paged, layer_id, i, q3[b : b + 1], [len(paged.kv[i]) - 1], num_heads)
            torch.testing.assert_close(out[b : b + 1], want, atol=ATOL, rtol=ATOL)
    return fb.attn_metadata


@pytest.mark.parametrize("num_heads, num_kv_heads", HEADS)
def test_workspace_reused_over_consecutive_decode_steps(num_heads, num_kv_heads):
    paged = make_paged(num_kv_heads, seed=11)
    reqs = [paged.add_request(n) for n in (3, 20, 11)]
    backend = TorchNativeAttnBackend(use_cpu_kernel=False)
    meta = decode_step(paged, backend, reqs, num_heads, num_kv_heads)
    ws = meta.workspace
    assert ws is not None and ws is backend.workspace and ws.rebuilt
    assert meta.common_indices is None
    for step in range(1, 6):
        meta = decode_step(paged, backend, reqs, num_heads, num_kv_heads)
        assert meta.workspace is ws and backend.workspace is ws, step
        assert not ws.rebuilt
        assert ws.seq_lens == [len(paged.kv[i]) for i in reqs]
        assert sorted(ws.k) == list(range(NUM_LAYERS))


def test_workspace_rebuilt_when_the_batch_changes():
    num_heads, num_kv_heads = 4, 2
    paged = make_paged(num_kv_heads, seed=12)
    reqs = [paged.add_request(n) for n in (5, 8, 13)]
    backend = TorchNativeAttnBackend(use_cpu_kernel=False)
    decode_step(paged, backend, reqs, num_heads, num_kv_heads)
    first = decode_step(paged, backend, reqs, num_heads, num_kv_heads).workspace
    assert not first.rebuilt
    # A request leaves the batch: different slots.
    reqs = reqs[:1] + reqs[2:]
    meta = decode_step(paged, backend, reqs, num_heads, num_kv_heads)
    assert meta.workspace is not first and meta.workspace.rebuilt
    assert meta.workspace.slots == tuple(paged.rows[i] for i in reqs)
    # Same batch again: reused.
    again = decode_step(paged, backend, reqs, num_heads, num_kv_heads).workspace
    assert again is meta.workspace and not again.rebuilt
    # A request joins (at the front, so the row order changes too).
    reqs = [paged.add_request(7), *reqs]
    meta = decode_step(paged, backend, reqs, num_heads, num_kv_heads)
    assert meta.workspace.rebuilt


def test_workspace_rebuilt_when_lengths_do_not_grow_by_one():
    num_heads, num_kv_heads = 4, 4
    paged = make_paged(num_kv_heads, seed=13)
    reqs = [paged.add_request(n) for n in (6, 9)]
    backend = TorchNativeAttnBackend(use_cpu_kernel=False)
    first = decode_step(paged, backend, reqs, num_heads, num_kv_heads).workspace
    # Same slots and lengths (the step is repeated): not a continuation.
    meta = decode_step(paged, backend, reqs, num_heads, num_kv_heads, grow=False)
    assert meta.workspace is not first and meta.workspace.rebuilt
    # Two tokens appended to one request.
    paged.append_token(reqs[0])
    meta = decode_step(paged, backend, reqs, num_heads, num_kv_heads)
    assert meta.workspace.rebuilt


def test_workspace_dropped_by_an_extend_pass():
    num_heads, num_kv_heads = 4, 2
    paged = make_paged(num_kv_heads, seed=14)
    reqs = [paged.add_request(n) for n in (4, 10)]
    backend = TorchNativeAttnBackend(use_cpu_kernel=False)
    decode_step(paged, backend, reqs, num_heads, num_kv_heads)
    assert backend.workspace is not None
    new = paged.add_request(5)
    fb = forward_batch(paged, backend, ForwardMode.EXTEND, [new], [0], [5])
    backend.init_forward_metadata(fb)
    assert backend.workspace is None
    # The running requests' lengths continue, but the workspace starts afresh.
    meta = decode_step(paged, backend, reqs, num_heads, num_kv_heads)
    assert meta.workspace.rebuilt


def test_workspace_rebuilt_when_capacity_is_exceeded(monkeypatch):
    monkeypatch.setattr(torch_native, "WORKSPACE_GROWTH", 2)
    num_heads, num_kv_heads = 4, 2
    paged = make_paged(num_kv_heads, seed=15)
    reqs = [paged.add_request(n) for n in (3, 7)]
    backend = TorchNativeAttnBackend(use_cpu_kernel=False)
    rebuilt = [decode_step(paged, backend, reqs, num_heads, num_kv_heads).workspace.rebuilt for _ in range(7)]
    # Capacity = max_len + 2 at each rebuild: two appends fit, the third rebuilds.
    assert rebuilt == [True, False, False, True, False, False, True]


def test_workspace_and_shared_prefix_alternate():
    """A batch that starts sharing a prefix drops the workspace; one that stops sharing rebuilds it."""
    num_heads, num_kv_heads = 4, 2
    paged = make_paged(num_kv_heads, seed=16)
    shared = paged.take(SHARED_PREFIX_MIN_TOKENS + 4)
    sharing = [paged.add_request(len(shared) + s, shared=shared) for s in (2, 6)]
    loner = paged.add_request(50)
    backend = TorchNativeAttnBackend(use_cpu_kernel=False)
    meta = decode_step(paged, backend, [sharing[0], loner], num_heads, num_kv_heads)
    assert meta.workspace is not None and meta.common_indices is None
    meta = decode_step(paged, backend, sharing, num_heads, num_kv_heads)
    assert meta.common_indices is not None and meta.workspace is None and backend.workspace is None
    meta = decode_step(paged, backend, [sharing[0], loner], num_heads, num_kv_heads)
    assert meta.workspace is not None and meta.workspace.rebuilt
