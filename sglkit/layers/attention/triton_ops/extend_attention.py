"""Extend attention (backend.forward_extend -> here): new tokens attend causally over prefix + new KV in the pool.

Covers prefill, chunked prefill and radix hits alike: request b has ``prefix_lens[b]`` tokens already in the pool
(a cached prefix or earlier chunks) and ``ext = qo_indptr[b + 1] - qo_indptr[b]`` new tokens, whose K/V the layer
stored in the pool before attending. Its KV slots, positions [0, seq_len), are
``kv_indices[kv_indptr[b]:kv_indptr[b + 1]]`` (the ``kv_indices`` module), so one loop over the pool covers
prefix and new tokens.

Grid (batch, q_heads, cdiv(max_ext, BLOCK_M)): program (b, h, m) holds BLOCK_M new tokens of request b for
query head h (KV head h // group) and runs an online softmax over keys [lo, hi): hi stops after the block's last
query (causal), lo skips keys before its first query's sliding window. New token i sits at position
prefix + i and attends keys at positions <= prefix + i (and > prefix + i - window with a window).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sglkit.layers.attention.triton_ops.common import (
    NO_WINDOW,
    accumulate_values,
    head_block,
    interpreting,
    needs_upcast,
    paged_scores,
)

__all__ = ["extend_attention", "extend_blocks"]


@triton.jit
def _extend_kernel(
    q_ptr,
    o_ptr,
    k_buf_ptr,
    v_buf_ptr,
    qo_indptr_ptr,
    prefix_lens_ptr,
    kv_indptr_ptr,
    kv_indices_ptr,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_buf_s,
    stride_buf_h,
    scaling,
    window,
    LOGIT_CAP: tl.constexpr,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    m_block = tl.program_id(2)
    q_start = tl.load(qo_indptr_ptr + b)
    ext_len = tl.load(qo_indptr_ptr + b + 1) - q_start
    if m_block * BLOCK_M >= ext_len:
        return
    prefix = tl.load(prefix_lens_ptr + b)
    kv_begin = tl.load(kv_indptr_ptr + b)
    seq_len = tl.load(kv_indptr_ptr + b + 1) - kv_begin
    kv_head = h // GROUP

    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < ext_len
    q_pos = prefix + offs_m
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    rows = (q_start + offs_m).to(tl.int64)
    q = tl.load(
        q_ptr + rows[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
        mask=mask_m[:, None] & mask_d[None, :],
        other=0.0,
    )  # [BLOCK_M, BLOCK_D]
    if UPCAST:
        q = q.to(tl.float32)
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    head_off = kv_head * stride_buf_h
    lo = tl.maximum(prefix + m_block * BLOCK_M - window + 1, 0)
    hi = tl.minimum(seq_len, prefix + (m_block + 1) * BLOCK_M)
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < hi
        slots = tl.load(kv_indices_ptr + kv_begin + offs_n, mask=mask_n, other=0).to(tl.int64)
        s = paged_scores(
            q, k_buf_ptr, slots, head_off, stride_buf_s, offs_d, mask_d, mask_n, scaling, UPCAST, LOGIT_CAP
        )  # [BLOCK_M, BLOCK_N]
        attend = mask_n[None, :] & (offs_n[None, :] <= q_pos[:, None])
        attend = attend & (offs_n[None, :] > q_pos[:, None] - window)
        s = tl.where(attend, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing attended yet
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = accumulate_values(
            acc, p, alpha, v_buf_ptr, slots, head_off, stride_buf_s, offs_d, mask_d, mask_n, UPCAST
        )
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(
        o_ptr + rows[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
        out.to(o_ptr.dtype.element_ty),
        mask=mask_m[:, None] & mask_d[None, :],
    )


def extend_blocks(head_dim: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) for ``head_dim``: 64 x 64 on a GPU (32 x 64 past head dim 128), 32 x 64 interpreted."""
    if interpreting():
        return 32, 64
    return (64, 64) if head_dim <= 128 else (32, 64)


def extend_attention(
    q: torch.Tensor,
    out: torch.Tensor,
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    qo_indptr: torch.Tensor,
    prefix_lens: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    max_extend_len: int,
    scaling: float,
    sliding_window: int | None = None,
    logit_cap: float | None = None,
) -> torch.Tensor:
    """q: [T, Hq, D] packed new tokens (request b's at rows qo_indptr[b]:qo_indptr[b + 1]), k_buf/v_buf:
    [S, Hkv, D] pool buffers already holding the new K/V, prefix_lens: [B] int32, kv_indptr: [B + 1] /
    kv_indices: int32 KV slots of positions [0, prefix + ext), max_extend_len: host int (grid size) ->
    out [T, Hq, D] (returned)."""
    num_tokens, num_heads, head_dim = q.shape
    batch = prefix_lens.shape[0]
    if num_tokens == 0 or batch == 0:
        return out
    assert q.stride(2) == 1 and out.stride(2) == 1 and k_buf.stride(2) == 1
    assert k_buf.stride() == v_buf.stride()
    block_m, block_n = extend_blocks(head_dim)
    grid = (batch, num_heads, triton.cdiv(max_extend_len, block_m))
    _extend_kernel[grid](
        q,
        out,
        k_buf,
        v_buf,
        qo_indptr,
        prefix_lens,
        kv_indptr,
        kv_indices,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        k_buf.stride(0),
        k_buf.stride(1),
        scaling,
        sliding_window or NO_WINDOW,
        LOGIT_CAP=float(logit_cap or 0.0),
        GROUP=num_heads // k_buf.shape[1],
        HEAD_DIM=head_dim,
        BLOCK_D=head_block(head_dim),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        UPCAST=needs_upcast(q.dtype),
        num_warps=4,
    )
    return out
