"""Decode attention (backend.forward_decode -> here): one query token per request over its paged KV, split-KV.

Two kernels per layer:

1. ``_decode_split_kernel``, grid (batch, kv_heads, max_splits): program (b, g, s) takes request b's attended
   keys [first, seq_len) (first = seq_len - window with a sliding window, else 0), cuts them into
   ``num_kv_splits[b]`` equal chunks and attends chunk s for all query heads of KV head g at once (grouped GQA:
   the group's queries are the rows of one ``tl.dot``; K/V are loaded once for the group). It writes the
   chunk's normalised partial output and its log-sum-exp (-inf for an empty chunk). Programs with
   s >= num_kv_splits[b] return at once, so each request uses as many splits as its length asks for.
2. ``_merge_splits_kernel``, grid (batch, q_heads): the exact softmax over all chunks from the partial outputs
   and LSEs (out = sum_s exp(lse_s - m) * out_s / sum_s exp(lse_s - m)).

A request of length 0 (a padded row) gets a zero output. Scores are scaled, then soft-capped
(cap * tanh(s / cap)) when a logit cap is set, then masked.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sglkit.layers.attention.triton_ops.common import (
    NO_WINDOW,
    accumulate_values,
    head_block,
    needs_upcast,
    paged_scores,
)

__all__ = ["decode_attention"]

DECODE_BLOCK_N = 32


@triton.jit
def _decode_split_kernel(
    q_ptr,
    k_buf_ptr,
    v_buf_ptr,
    kv_indptr_ptr,
    kv_indices_ptr,
    num_splits_ptr,
    part_out_ptr,
    part_lse_ptr,
    stride_qb,
    stride_qh,
    stride_buf_s,
    stride_buf_h,
    stride_pb,
    stride_ph,
    stride_ps,
    stride_lb,
    stride_lh,
    scaling,
    window,
    LOGIT_CAP: tl.constexpr,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr,
):
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    num_splits = tl.load(num_splits_ptr + b)
    if split >= num_splits:
        return
    kv_begin = tl.load(kv_indptr_ptr + b)
    seq_len = tl.load(kv_indptr_ptr + b + 1) - kv_begin
    first = tl.maximum(seq_len - window, 0)
    split_len = tl.cdiv(seq_len - first, num_splits)
    lo = first + split * split_len
    hi = tl.minimum(lo + split_len, seq_len)

    offs_g = tl.arange(0, BLOCK_H)
    offs_h = kv_head * GROUP + offs_g
    mask_h = offs_g < GROUP
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    q = tl.load(
        q_ptr + b * stride_qb + offs_h[:, None] * stride_qh + offs_d[None, :],
        mask=mask_h[:, None] & mask_d[None, :],
        other=0.0,
    )  # [BLOCK_H, BLOCK_D]
    if UPCAST:
        q = q.to(tl.float32)
    m_i = tl.zeros([BLOCK_H], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    head_off = kv_head * stride_buf_h
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < hi
        slots = tl.load(kv_indices_ptr + kv_begin + offs_n, mask=mask_n, other=0).to(tl.int64)
        s = paged_scores(
            q, k_buf_ptr, slots, head_off, stride_buf_s, offs_d, mask_d, mask_n, scaling, UPCAST, LOGIT_CAP
        )  # [BLOCK_H, BLOCK_N]
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every block holds at least one key
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = accumulate_values(
            acc, p, alpha, v_buf_ptr, slots, head_off, stride_buf_s, offs_d, mask_d, mask_n, UPCAST
        )
        m_i = m_new
    nonempty = l_i > 0
    denom = tl.where(nonempty, l_i, 1.0)
    out = acc / denom[:, None]
    lse = tl.where(nonempty, m_i + tl.log(denom), float("-inf"))
    tl.store(
        part_out_ptr + b * stride_pb + offs_h[:, None] * stride_ph + split * stride_ps + offs_d[None, :],
        out,
        mask=mask_h[:, None] & mask_d[None, :],
    )
    tl.store(part_lse_ptr + b * stride_lb + offs_h * stride_lh + split, lse, mask=mask_h)


@triton.jit
def _merge_splits_kernel(
    part_out_ptr,
    part_lse_ptr,
    num_splits_ptr,
    o_ptr,
    stride_pb,
    stride_ph,
    stride_ps,
    stride_lb,
    stride_lh,
    stride_ob,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    num_splits = tl.load(num_splits_ptr + b)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    m = tl.zeros([1], dtype=tl.float32) - float("inf")
    total = tl.zeros([1], dtype=tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for s in range(0, num_splits):
        lse = tl.load(part_lse_ptr + b * stride_lb + h * stride_lh + s + tl.zeros([1], dtype=tl.int32))
        part = tl.load(
            part_out_ptr + b * stride_pb + h * stride_ph + s * stride_ps + offs_d, mask=mask_d, other=0.0
        )
        m_new = tl.maximum(m, lse)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_safe)
        weight = tl.exp(lse - m_safe)
        total = total * alpha + weight
        acc = acc * alpha + weight * part
        m = m_new
    out = acc / tl.where(total > 0, total, 1.0)
    tl.store(o_ptr + b * stride_ob + h * stride_oh + offs_d, out.to(o_ptr.dtype.element_ty), mask=mask_d)


def decode_attention(
    q: torch.Tensor,
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    out: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    num_kv_splits: torch.Tensor,
    part_out: torch.Tensor,
    part_lse: torch.Tensor,
    scaling: float,
    sliding_window: int | None = None,
    logit_cap: float | None = None,
) -> torch.Tensor:
    """q: [B, Hq, D], k_buf/v_buf: [S, Hkv, D] pool buffers, kv_indptr: [B + 1] / kv_indices: int32 KV slots
    (``kv_indices`` module), num_kv_splits: [B] int32 in [1, max_splits], part_out: [B, Hq, max_splits, D]
    float32 and part_lse: [B, Hq, max_splits] float32 workspaces -> out [B, Hq, D] (returned)."""
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_buf.shape[1]
    group = num_heads // num_kv_heads
    max_splits = part_out.shape[2]
    if batch == 0:
        return out
    assert q.stride(2) == 1 and out.stride(2) == 1 and k_buf.stride(2) == 1 and part_out.stride(3) == 1
    assert k_buf.stride() == v_buf.stride() and part_lse.stride(2) == 1
    block_d = head_block(head_dim)
    _decode_split_kernel[(batch, num_kv_heads, max_splits)](
        q,
        k_buf,
        v_buf,
        kv_indptr,
        kv_indices,
        num_kv_splits,
        part_out,
        part_lse,
        q.stride(0),
        q.stride(1),
        k_buf.stride(0),
        k_buf.stride(1),
        part_out.stride(0),
        part_out.stride(1),
        part_out.stride(2),
        part_lse.stride(0),
        part_lse.stride(1),
        scaling,
        sliding_window or NO_WINDOW,
        LOGIT_CAP=float(logit_cap or 0.0),
        GROUP=group,
        HEAD_DIM=head_dim,
        BLOCK_H=max(16, triton.next_power_of_2(group)),
        BLOCK_D=block_d,
        BLOCK_N=DECODE_BLOCK_N,
        UPCAST=needs_upcast(q.dtype),
        num_warps=4,
    )
    _merge_splits_kernel[(batch, num_heads)](
        part_out,
        part_lse,
        num_kv_splits,
        out,
        part_out.stride(0),
        part_out.stride(1),
        part_out.stride(2),
        part_lse.stride(0),
        part_lse.stride(1),
        out.stride(0),
        out.stride(1),
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        num_warps=4,
    )
    return out
