"""KV indices (backend metadata -> here): a batch's KV slots as one flat int32 list, built on the device.

    kv_indptr[i] .. kv_indptr[i + 1]  -> request i's slots, positions [0, seq_lens[i]), in token order,
    copied from req_to_token[req_pool_indices[i], :seq_lens[i]].

No host sync: ``kv_indptr`` is a device cumsum and program i copies its own row; the caller sizes ``kv_indices``
from the host-side sequence lengths it already has (or a preallocated maximum).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["build_kv_indptr", "build_kv_indices"]

COPY_BLOCK = 512


@triton.jit
def _kv_indices_kernel(
    req_to_token_ptr,
    req_pool_indices_ptr,
    seq_lens_ptr,
    kv_indptr_ptr,
    kv_indices_ptr,
    stride_r2t,
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0)
    row = tl.load(req_pool_indices_ptr + i).to(tl.int64)
    seq_len = tl.load(seq_lens_ptr + i).to(tl.int32)
    out_start = tl.load(kv_indptr_ptr + i).to(tl.int64)
    for start in range(0, seq_len, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < seq_len
        slots = tl.load(req_to_token_ptr + row * stride_r2t + offs, mask=mask)
        tl.store(kv_indices_ptr + out_start + offs, slots.to(tl.int32), mask=mask)


def build_kv_indptr(seq_lens: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """seq_lens: [B] -> kv_indptr [B + 1] int32 (0, then running sums), on seq_lens' device."""
    if out is None:
        out = torch.empty(seq_lens.shape[0] + 1, dtype=torch.int32, device=seq_lens.device)
    out[:1] = 0
    out[1:] = torch.cumsum(seq_lens, dim=0)
    return out


def build_kv_indices(
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
) -> torch.Tensor:
    """req_to_token: [R, C], req_pool_indices/seq_lens: [B], kv_indptr: [B + 1] -> fills kv_indices [>= total]
    int32 with each request's KV slots (see the module docstring) and returns it."""
    batch = req_pool_indices.shape[0]
    if batch:
        assert req_to_token.stride(1) == 1
        _kv_indices_kernel[(batch,)](
            req_to_token,
            req_pool_indices,
            seq_lens,
            kv_indptr,
            kv_indices,
            req_to_token.stride(0),
            BLOCK=COPY_BLOCK,
        )
    return kv_indices
