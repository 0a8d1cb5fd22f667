"""Model layers, CPU: causal prefill attention from the paged KV pool (torch_native ``forward_extend`` -> here -> C++).

``csrc/extend_attention.cpp``: each request's new tokens attend to its cached prefix and to the new tokens up to
their own position, reading K and V straight from the pool through the request-to-token table (the new tokens'
K/V are written there first). Flash style: per (request, KV head, block of 32 new tokens) the query rows of all
the KV head's query heads stream the keys in blocks of 32 with an online softmax, so no gathered K/V, no mask and
no [tokens, keys] score matrix are built; both products are vdpbf16ps (bfloat16, AVX512-BF16) or FMA (float32)
tiles. It serves chunked prefill and radix-cache hits alike (a prefix is just keys already in the pool).
Plain causal layers only (no logit cap, no sliding window); head dims that are multiples of 16 up to 128, and 256.
"""

from __future__ import annotations

from functools import cache

import torch

from sglkit.layers.cpu_kernels import load_kernels, require_kernels

__all__ = ["extend_attention", "extend_attention_available"]


@cache
def extend_attention_available(dtype: torch.dtype, kv_dtype: torch.dtype, head_dim: int, group: int) -> bool:
    """Whether ``extend_attention`` takes q of ``dtype``, a KV pool of ``kv_dtype``, ``head_dim`` and ``group``
    query heads per KV head on this machine (bfloat16 needs AVX512-BF16)."""
    if dtype not in (torch.float32, torch.bfloat16) or kv_dtype != dtype:
        return False
    kernels = load_kernels()
    name = str(dtype).removeprefix("torch.")
    return kernels is not None and kernels.extend_attention_supported(name, head_dim, group)


def extend_attention(
    q: torch.Tensor,
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    prefix_lens: torch.Tensor,
    extend_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """q: [T, Hq, D] (new tokens, packed in request order); k_buf, v_buf: [S, Hkv, D]; req_to_token: [R, C];
    req_pool_indices, prefix_lens, extend_lens: [B] -> [T, Hq, D]: new token j of request b (position
    prefix_lens[b] + j) attends to the KV at req_to_token[req_pool_indices[b], : prefix_lens[b] + j + 1]."""
    kernels = require_kernels("extend_attention")
    return kernels.extend_attention(
        q, k_buf, v_buf, req_to_token, req_pool_indices, prefix_lens, extend_lens, scale
    )
