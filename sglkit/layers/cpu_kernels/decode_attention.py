"""Model layers, CPU: decode attention from the paged KV pool (torch_native ``forward_decode`` -> here -> C++).

``csrc/decode_attention.cpp``: one task per request and range of its KV heads (at most 16 query heads) reads
the request's slots from its row of the request-to-token table; token by token, the task's part of each K row
is dotted with its query heads (one vector of scores per token), a softmax per query head follows, then P.V in
tiles of 16 tokens with the accumulators in registers. The K/V rows are read once, in place, with software
prefetch through the table (K ahead, V into L2 during the scores, the next task's K during P.V): no gathered,
padded or workspace copy and no per-step index tensors, which the SDPA path needs
(``sglkit.layers.attention.torch_native``). Plain causal decode only (no logit cap, no sliding window); float32
or bfloat16 with q, K and V of one dtype; head dims that are multiples of 16 up to 128, and 256; up to 16 query
heads per KV head.
"""

from __future__ import annotations

from functools import cache

import torch

from sglkit.layers.cpu_kernels import load_kernels, require_kernels

__all__ = ["decode_attention", "decode_attention_available"]

DTYPES = (torch.float32, torch.bfloat16)


@cache
def decode_attention_available(dtype: torch.dtype, kv_dtype: torch.dtype, head_dim: int, group: int) -> bool:
    """Whether ``decode_attention`` takes q of ``dtype``, a KV pool of ``kv_dtype``, ``head_dim`` and ``group``
    query heads per KV head on this machine."""
    if dtype not in DTYPES or kv_dtype != dtype:
        return False
    kernels = load_kernels()
    return kernels is not None and kernels.decode_attention_supported(head_dim, group)


def decode_attention(
    q: torch.Tensor,
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """q: [B, Hq, D]; k_buf, v_buf: [S, Hkv, D]; req_to_token: [R, C]; req_pool_indices, seq_lens: [B]
    -> [B, Hq, D]: each request's query attends to KV slots req_to_token[row, :seq_len]."""
    kernels = require_kernels("decode_attention")
    return kernels.decode_attention(q, k_buf, v_buf, req_to_token, req_pool_indices, seq_lens, scale)
