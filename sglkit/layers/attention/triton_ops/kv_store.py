"""KV store (model layer -> RadixAttention -> here -> KV pool): one fused K+V write per token at ``out_cache_loc``.

Program ``t`` copies token t's K and V (all KV heads) into pool slot ``loc[t]`` (already in the pool's dtype).
Padded rows of a padded batch carry ``loc = 0``: they land in the pool's reserved padding slot 0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["store_kv"]


@triton.jit
def _store_kv_kernel(
    k_ptr,
    v_ptr,
    k_buf_ptr,
    v_buf_ptr,
    loc_ptr,
    stride_kt,
    stride_vt,
    stride_buf,
    ROW: tl.constexpr,  # num_kv_heads * head_dim elements per token
    BLOCK: tl.constexpr,
):
    t = tl.program_id(0)
    slot = tl.load(loc_ptr + t).to(tl.int64)
    row = t.to(tl.int64)
    for start in tl.static_range(0, ROW, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < ROW
        k = tl.load(k_ptr + row * stride_kt + offs, mask=mask)
        v = tl.load(v_ptr + row * stride_vt + offs, mask=mask)
        tl.store(k_buf_ptr + slot * stride_buf + offs, k, mask=mask)
        tl.store(v_buf_ptr + slot * stride_buf + offs, v, mask=mask)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x: [T, H, D] -> the same values with each token's [H, D] contiguous (a view when already so)."""
    if x.stride(2) == 1 and x.stride(1) == x.shape[2]:
        return x
    return x.contiguous()


def store_kv(
    k_buf: torch.Tensor, v_buf: torch.Tensor, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> None:
    """k_buf/v_buf: [S, Hkv, D] pool buffers, loc: [T] slots, k/v: [T, Hkv, D] -> written at those slots."""
    num_tokens = loc.shape[0]
    if num_tokens == 0:
        return
    assert k_buf.is_contiguous() and v_buf.is_contiguous() and k_buf.stride(0) == v_buf.stride(0)
    # Cast in torch (a no-op when the model and pool dtypes agree): round-to-nearest everywhere, where the
    # interpreter's in-kernel bf16 cast truncates.
    k, v = _rows(k.to(k_buf.dtype)), _rows(v.to(v_buf.dtype))
    # The kernel reads slot i at loc + i: a strided view (e.g. a bench's column of steps) is copied first.
    loc = loc.contiguous()
    row = k.shape[1] * k.shape[2]
    block = min(triton.next_power_of_2(row), 4096)
    _store_kv_kernel[(num_tokens,)](
        k, v, k_buf, v_buf, loc, k.stride(0), v.stride(0), k_buf.stride(0), ROW=row, BLOCK=block
    )
