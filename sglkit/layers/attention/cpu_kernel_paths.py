"""Model layers: the torch_native backend's CPU-kernel paths (backend -> here -> ``sglkit.layers.cpu_kernels``).

On a CPU where sglkit's attention kernels run (AVX-512; float32, or bfloat16 with AVX512-BF16 for prefill), a
decode pass reads each request's KV straight from the pool (``decode_attention``) and an extend pass attends
causally over each request's cached and new KV there (``extend_attention``): neither builds gather indices,
masks, a padded workspace or a gathered K/V copy; ``store`` writes a pass's K and V into the pool in one pass.
``kernel_metadata`` says at init whether a pass goes this way and copies the host lengths the kernels and any
fallback need; per layer, ``decode`` / ``extend`` run the kernel or return None for a layer it does not take (a
sliding window, a logit cap, a head shape or dtype it lacks), which then runs SDPA on metadata built lazily from
the copied lengths.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sglkit.core.forward_batch import ForwardBatch
from sglkit.layers.attention.base import RadixAttention
from sglkit.layers.cpu_kernels.decode_attention import decode_attention, decode_attention_available
from sglkit.layers.cpu_kernels.extend_attention import extend_attention, extend_attention_available
from sglkit.layers.cpu_kernels.fused_ops import cpu_fused_ops_enabled, store_kv

__all__ = [
    "KernelDecodeMetadata",
    "KernelExtendMetadata",
    "decode",
    "extend",
    "kernel_metadata",
    "kernel_takes_layer",
    "store",
]


@dataclass
class KernelDecodeMetadata:
    """A decode pass for sglkit's CPU kernel: it reads the table itself; ``sdpa`` is built on demand (for a layer
    with options) from the lengths copied here at init, so no forward reads the batch's host lists."""

    seq_lens_cpu: list[int]
    sdpa: Any = None  # the backend's SDPA decode metadata, once a layer needed it


@dataclass
class KernelExtendMetadata:
    """An extend pass for sglkit's CPU kernel: per request how many tokens were cached and how many are new (as
    [B] int64 tensors for the kernel, and as lists for a lazily built SDPA fallback in ``sdpa``)."""

    prefix_lens: torch.Tensor
    extend_lens: torch.Tensor
    prefix_lens_cpu: list[int]
    extend_lens_cpu: list[int]
    sdpa: Any = None  # the backend's SDPA extend metadata, once a layer needed it


def kernel_metadata(forward_batch: ForwardBatch) -> KernelDecodeMetadata | KernelExtendMetadata | None:
    """The pass's metadata when its KV pool is on the CPU and the kernel of its mode runs the pool's dtype and
    head dim here; None otherwise (the SDPA paths)."""
    pool = forward_batch.token_to_kv_pool
    if torch.device(pool.device).type != "cpu":
        return None
    if forward_batch.forward_mode.is_decode():
        if not decode_attention_available(pool.dtype, pool.dtype, pool.head_dim, 1):
            return None
        return KernelDecodeMetadata(list(forward_batch.seq_lens_cpu))
    if not extend_attention_available(pool.dtype, pool.dtype, pool.head_dim, 1):
        return None
    prefix, new = list(forward_batch.extend_prefix_lens_cpu), list(forward_batch.extend_seq_lens_cpu)
    return KernelExtendMetadata(torch.tensor(prefix), torch.tensor(new), prefix, new)


def kernel_takes_layer(
    available: Callable[[torch.dtype, torch.dtype, int, int], bool],
    dtype: torch.dtype,
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    layer: RadixAttention,
) -> bool:
    """Whether a kernel (``available(dtype, kv_dtype, head_dim, group)``) takes this layer's queries of ``dtype``:
    no options, CPU pool K/V of one shape with the layer's KV heads, whole groups."""
    heads, kv_heads = layer.num_heads, layer.num_kv_heads
    if layer.has_options or k_buf.device.type != "cpu" or k_buf.shape != v_buf.shape:
        return False
    if k_buf.shape[1] != kv_heads or heads % kv_heads:
        return False
    return available(dtype, k_buf.dtype, layer.head_dim, heads // kv_heads)


def _kernel_takes(
    available: Callable[[torch.dtype, torch.dtype, int, int], bool],
    q: torch.Tensor,
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    layer: RadixAttention,
) -> bool:
    """``kernel_takes_layer`` for this pass's q: [T, Hq, D] with the layer's query heads and head dim."""
    if q.shape[1] != layer.num_heads or q.shape[-1] != layer.head_dim:
        return False
    return kernel_takes_layer(available, q.dtype, k_buf, v_buf, layer)


def decode(q: torch.Tensor, layer: RadixAttention, forward_batch: ForwardBatch) -> torch.Tensor | None:
    """q: [B, Hq, D] -> [B, Hq, D] from the decode kernel, or None where this layer needs SDPA."""
    k_buf, v_buf = forward_batch.token_to_kv_pool.get_kv_buffer(layer.layer_id)
    if not _kernel_takes(decode_attention_available, q, k_buf, v_buf, layer):
        return None
    table = forward_batch.req_to_token_pool.req_to_token
    return decode_attention(
        q, k_buf, v_buf, table, forward_batch.req_pool_indices, forward_batch.seq_lens, layer.scaling
    )


def extend(
    q: torch.Tensor, layer: RadixAttention, forward_batch: ForwardBatch, meta: KernelExtendMetadata
) -> torch.Tensor | None:
    """q: [T, Hq, D] -> [T, Hq, D] from the extend kernel, or None where this layer needs SDPA."""
    k_buf, v_buf = forward_batch.token_to_kv_pool.get_kv_buffer(layer.layer_id)
    if not _kernel_takes(extend_attention_available, q, k_buf, v_buf, layer):
        return None
    table = forward_batch.req_to_token_pool.req_to_token
    return extend_attention(
        q,
        k_buf,
        v_buf,
        table,
        forward_batch.req_pool_indices,
        meta.prefix_lens,
        meta.extend_lens,
        layer.scaling,
    )


def _rows_contiguous(t: torch.Tensor) -> bool:
    """Whether each token's [H, D] of a [T, H, D] tensor is one contiguous run (any token stride)."""
    return t.dim() == 3 and t.stride(2) == 1 and t.stride(1) == t.shape[2]


def store(layer: RadixAttention, forward_batch: ForwardBatch, k: torch.Tensor, v: torch.Tensor) -> bool:
    """k, v: [T, Hkv, D] -> the pool at ``out_cache_loc`` in one C++ pass for both (``fused_ops.store_kv``, every
    slot checked); False, having written nothing, where it does not apply (not a CPU pool of k's dtype, the fused
    ops off, tokens not contiguous)."""
    k_buf, v_buf = forward_batch.token_to_kv_pool.get_kv_buffer(layer.layer_id)
    if not (k.dtype == v.dtype == k_buf.dtype == v_buf.dtype and k_buf.device.type == "cpu"):
        return False
    if not (_rows_contiguous(k) and _rows_contiguous(v) and cpu_fused_ops_enabled(k)):
        return False
    store_kv(k_buf, v_buf, forward_batch.out_cache_loc, k, v)
    return True
