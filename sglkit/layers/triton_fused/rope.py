"""Fused Triton ops: rotary embedding of q and k in one kernel (attention: qkv_proj -> rotary -> attention).

Rotate-half (NeoX) layout as ``sglkit.layers.rotary``: dim i pairs with i + R/2 over the first R =
``rotary_dim`` dims of each head; dims past R pass through. The kernel only applies rows of the cos|sin
cache the rotary module already built (default, linear, llama3 and LongRoPE frequencies all live there);
``positions`` are cache rows. cos/sin are rounded to q's dtype first, as the torch code does; the products
are then summed in float32 and rounded once. One program per token does all of its q and k heads.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["apply_rope"]


@triton.jit
def _rotate_heads(
    src_ptr,
    dst_ptr,
    token,
    src_token_stride,
    src_head_stride,
    dst_token_stride,
    dst_head_stride,
    num_heads,
    cos,
    sin,
    HALF: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BLOCK_PASS: tl.constexpr,
    COPY_PASS: tl.constexpr,
):
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (heads < num_heads) & (dims < HALF)
    src = src_ptr + token * src_token_stride + heads * src_head_stride
    dst = dst_ptr + token * dst_token_stride + heads * dst_head_stride
    x1 = tl.load(src + dims, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF + dims, mask=mask, other=0.0).to(tl.float32)
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    tl.store(dst + dims, o1.to(dst_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + HALF + dims, o2.to(dst_ptr.dtype.element_ty), mask=mask)
    if COPY_PASS:  # out of place with partial rotary: copy the unrotated tail of each head
        rest = tl.arange(0, BLOCK_PASS)[None, :]
        rest_mask = (heads < num_heads) & (rest < HEAD_DIM - 2 * HALF)
        tail = tl.load(src + 2 * HALF + rest, mask=rest_mask, other=0.0)
        tl.store(dst + 2 * HALF + rest, tail, mask=rest_mask)


@triton.jit
def _rope_kernel(
    positions_ptr,
    cache_ptr,
    cache_row_stride,
    q_ptr,
    k_ptr,
    q_out_ptr,
    k_out_ptr,
    q_token_stride,
    q_head_stride,
    k_token_stride,
    k_head_stride,
    q_out_token_stride,
    q_out_head_stride,
    k_out_token_stride,
    k_out_head_stride,
    num_q_heads,
    num_kv_heads,
    HALF: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HKV: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BLOCK_PASS: tl.constexpr,
    COPY_PASS: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    row = tl.load(positions_ptr + token).to(tl.int64)
    dims = tl.arange(0, BLOCK_HALF)[None, :]
    cache_row = cache_ptr + row * cache_row_stride
    cos = tl.load(cache_row + dims, mask=dims < HALF, other=0.0)
    sin = tl.load(cache_row + HALF + dims, mask=dims < HALF, other=0.0)
    cos = cos.to(q_ptr.dtype.element_ty).to(tl.float32)  # the torch code rounds cos/sin to q's dtype
    sin = sin.to(q_ptr.dtype.element_ty).to(tl.float32)
    _rotate_heads(
        q_ptr, q_out_ptr, token, q_token_stride, q_head_stride, q_out_token_stride, q_out_head_stride,
        num_q_heads, cos, sin, HALF, HEAD_DIM, BLOCK_HQ, BLOCK_HALF, BLOCK_PASS, COPY_PASS,
    )  # fmt: skip
    _rotate_heads(
        k_ptr, k_out_ptr, token, k_token_stride, k_head_stride, k_out_token_stride, k_out_head_stride,
        num_kv_heads, cos, sin, HALF, HEAD_DIM, BLOCK_HKV, BLOCK_HALF, BLOCK_PASS, COPY_PASS,
    )  # fmt: skip


def apply_rope(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    rotary_dim: int,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (cache rows): [T], q: [T, Hq, D], k: [T, Hkv, D], cos_sin_cache: [rows, R] -> rotated (q, k).

    q and k may be strided views (e.g. of a fused qkv projection) with a unit stride on the last dim.
    ``inplace`` writes into q and k and returns them; otherwise new contiguous tensors of q's dtype.
    """
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    if inplace:
        q_out, k_out = q, k
    else:
        q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if num_tokens == 0:
        return q_out, k_out
    half = rotary_dim // 2
    pass_dims = head_dim - rotary_dim
    cache = cos_sin_cache if cos_sin_cache.stride(-1) == 1 else cos_sin_cache.contiguous()
    _rope_kernel[(num_tokens,)](
        positions,
        cache,
        cache.stride(0),
        q,
        k,
        q_out,
        k_out,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        q_out.stride(0),
        q_out.stride(1),
        k_out.stride(0),
        k_out.stride(1),
        num_q_heads,
        num_kv_heads,
        HALF=half,
        HEAD_DIM=head_dim,
        BLOCK_HQ=triton.next_power_of_2(num_q_heads),
        BLOCK_HKV=triton.next_power_of_2(num_kv_heads),
        BLOCK_HALF=triton.next_power_of_2(half),
        BLOCK_PASS=triton.next_power_of_2(max(pass_dims, 1)),
        COPY_PASS=pass_dims > 0 and not inplace,
        num_warps=4,
    )
    return q_out, k_out
