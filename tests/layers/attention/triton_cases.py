"""Shared cases for the Triton attention tests: random paged layouts and a float64 reference.

A ``Paged`` layout puts each request's KV at random, non-contiguous pool slots (a shuffled permutation) and its
``req_to_token`` row at a random row; slot 0 (the padding sink) holds loud values so any padded key that leaks
into attention shows. ``reference`` recomputes attention per request in float64 from the pool.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from itertools import accumulate

import pytest
import torch

from sglkit.cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
from sglkit.core.forward_batch import ForwardBatch

# Where the kernels can run in this process: on a GPU, or on CPU when the interpreter was on from the start
# (test_triton_interpreter.py re-runs these files in a child process with TRITON_INTERPRET=1).
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
RUNNABLE = INTERPRETED or torch.cuda.is_available()
DEVICE = "cpu" if INTERPRETED or not torch.cuda.is_available() else "cuda"
needs_triton = pytest.mark.skipif(
    not RUNNABLE,
    reason="no GPU: runs under TRITON_INTERPRET=1 in a child process (test_triton_interpreter.py)",
)

NUM_ROWS = 16
MAX_CONTEXT = 1024
SCALING = 0.37  # not head_dim ** -0.5: a kernel ignoring the layer's scaling would fail
TOLERANCE = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


@dataclass
class Paged:
    """A random KV pool and a req_to_token table whose rows point at random, shuffled slots."""

    pool: MHATokenToKVPool
    r2t: ReqToTokenPool
    free: list[int]
    rows: list[int] = field(default_factory=list)  # req_to_token row of each request
    kv: list[list[int]] = field(default_factory=list)  # pool slots of each request, token order

    def take(self, n: int) -> list[int]:
        """n unused pool slots (never slot 0)."""
        out, self.free = self.free[:n], self.free[n:]
        assert len(out) == n
        return out

    def add_request(self, n: int, shared: list[int] | None = None) -> int:
        """A request of n tokens (its first len(shared) slots shared with another request); returns its index."""
        slots = list(shared or []) + self.take(n - len(shared or []))
        used = set(self.rows)
        row = next(r for r in torch.randperm(NUM_ROWS).tolist() if r not in used and r != 0)
        self.rows.append(row)
        self.kv.append(slots)
        self.r2t.write(row, 0, torch.tensor(slots, dtype=torch.int64))
        return len(self.rows) - 1


def make_paged(
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    pool_size: int = 1200,
    num_layers: int = 1,
    seed: int = 0,
) -> Paged:
    """A pool of ``pool_size`` slots filled with random K/V (slot 0 loud) on DEVICE."""
    gen = torch.Generator().manual_seed(seed)
    pool = MHATokenToKVPool(pool_size, num_layers, num_kv_heads, head_dim, dtype, DEVICE)
    for layer_id in range(num_layers):
        for buf in pool.get_kv_buffer(layer_id):
            buf.copy_(torch.randn(buf.shape, generator=gen).to(dtype))
            buf[0] = 30.0
    free = (torch.randperm(pool_size, generator=gen) + 1).tolist()
    torch.manual_seed(seed)
    return Paged(pool, ReqToTokenPool(NUM_ROWS, MAX_CONTEXT, DEVICE), free)


def reference(
    paged: Paged,
    i: int,
    q: torch.Tensor,
    positions: list[int],
    sliding_window: int | None = None,
    logit_cap: float | None = None,
    layer_id: int = 0,
) -> torch.Tensor:
    """q: [n, Hq, D] of request i at ``positions`` -> [n, Hq, D] float64: softmax over keys <= position (and >
    position - window), scores scaled then capped."""
    k_buf, v_buf = paged.pool.get_kv_buffer(layer_id)
    slots = torch.tensor(paged.kv[i][: max(positions) + 1], device=k_buf.device)
    k, v = k_buf[slots].double().cpu(), v_buf[slots].double().cpu()  # [L, Hkv, D]
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # [L, Hq, D]
    scores = torch.einsum("nhd,lhd->hnl", q.double().cpu(), k) * SCALING
    if logit_cap is not None:
        scores = logit_cap * torch.tanh(scores / logit_cap)
    key_pos = torch.arange(slots.numel())[None, :]
    query_pos = torch.tensor(positions)[:, None]
    mask = key_pos <= query_pos
    if sliding_window is not None:
        mask &= key_pos > query_pos - sliding_window
    scores = scores.masked_fill(~mask[None], -math.inf)
    return torch.einsum("hnl,lhd->nhd", torch.softmax(scores, dim=-1), v)


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    """out (any dtype, any device) matches the float64 reference within the dtype's tolerance."""
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.double().cpu(), ref, atol=tol, rtol=tol)


def make_batch(paged, backend, mode, reqs, prefix_lens, ext_lens) -> ForwardBatch:
    """The ForwardBatch of ``reqs`` adding ``ext_lens`` tokens after ``prefix_lens`` (KV at their slots)."""
    seq_lens = [p + e for p, e in zip(prefix_lens, ext_lens)]
    loc = [s for i, p, e in zip(reqs, prefix_lens, ext_lens) for s in paged.kv[i][p : p + e]]
    positions = [pos for p, e in zip(prefix_lens, ext_lens) for pos in range(p, p + e)]

    def as_t(values):
        return torch.tensor(values, dtype=torch.int64, device=DEVICE)

    return ForwardBatch(
        forward_mode=mode,
        batch_size=len(reqs),
        input_ids=as_t([0] * len(positions)),
        positions=as_t(positions),
        out_cache_loc=as_t(loc),
        req_pool_indices=as_t([paged.rows[i] for i in reqs]),
        seq_lens=as_t(seq_lens),
        seq_lens_cpu=seq_lens,
        extend_prefix_lens_cpu=list(prefix_lens),
        extend_seq_lens_cpu=list(ext_lens),
        logits_indices=as_t(list(range(len(positions)))),
        req_to_token_pool=paged.r2t,
        token_to_kv_pool=paged.pool,
        attn_backend=backend,
        extend_start_loc_cpu=[0, *accumulate(ext_lens)][:-1],
    )
