"""FlashInfer metadata (ForwardBatch -> here -> FlashInfer plan()): page table and plan arguments, pure torch.

The FlashInfer backend (``flashinfer_backend.py``) hands FlashInfer our paged pool as a page table with one token
per page (``PAGE_SIZE = 1``). Everything FlashInfer is told about a pass is built here, with torch alone, so it is
unit-tested on CPU without flashinfer (tests/layers/attention/test_flashinfer_backend.py)::

    qo_indptr [B + 1] int32 (host)    request b's query rows are q[qo_indptr[b]:qo_indptr[b + 1]]
                                      (extend: its new tokens; decode: one row each, arange(B + 1))
    kv_indptr [B + 1] int32 (host)    request b's pages are kv_indices[kv_indptr[b]:kv_indptr[b + 1]]
    kv_indices [sum seq_lens] int32   = req_to_token[req_pool_indices[b], :seq_lens[b]], positions in order
                                      (device; under CUDA graphs, a prefix of the graph's fixed buffer)
    kv_last_page_len [B] int32 (host) all ones: with one token per page every last page is full,
                                      so FlashInfer's kv_len = page_size * (pages - 1) + last = seq_len

A layer's options become plan arguments (``LayerSpec``): ``sm_scale = layer.scaling``; ``window_left =
sliding_window - 1`` (FlashInfer's window counts the keys left of the query, ours counts the query's own key
too; -1 = no window); ``logits_soft_cap = layer.logit_cap`` (FlashInfer computes cap * tanh(scaled score /
cap), as RadixAttention specifies). Layers with equal specs share one plan. The pool's per-layer K/V buffers
[S, Hkv, D] are passed as NHD pages ``(k[:, None], v[:, None])`` of shape [S, 1, Hkv, D]: views, no copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sglkit.layers.attention.base import RadixAttention

__all__ = [
    "KV_LAYOUT",
    "PAGE_SIZE",
    "SUPPORTED_DTYPES",
    "WORKSPACE_BYTES",
    "LayerSpec",
    "PagedKV",
    "build_paged_kv",
    "check_kv_dtype",
    "decode_plan_args",
    "extend_plan_args",
    "layer_spec",
    "paged_kv_cache",
]

PAGE_SIZE = 1  # one token per page: the pool's slots are FlashInfer's pages
KV_LAYOUT = "NHD"  # a page is [page_size, num_kv_heads, head_dim], as the pool stores a slot
WORKSPACE_BYTES = 128 * 1024 * 1024  # FlashInfer's recommended float workspace; one, shared by every wrapper
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)  # FlashInfer's attention kernels take half precision
TENSOR_CORE_MIN_GROUP = 4  # decode on tensor cores from this many query heads per KV head (SGLang's rule)


@dataclass(frozen=True)
class LayerSpec:
    """What one plan() fixes about a layer: head shape, softmax scale, window and soft cap."""

    num_qo_heads: int
    num_kv_heads: int
    head_dim: int
    sm_scale: float
    window_left: int  # -1: no sliding window
    logits_soft_cap: float | None  # None: no soft cap

    @property
    def use_tensor_cores(self) -> bool:
        """Decode through FlashInfer's tensor-core (prefill) kernels: faster for GQA groups of 4 and more."""
        return self.num_qo_heads // self.num_kv_heads >= TENSOR_CORE_MIN_GROUP


def layer_spec(layer: RadixAttention) -> LayerSpec:
    """The plan arguments ``layer`` needs (see the module docstring for the window's off-by-one)."""
    window = layer.sliding_window
    return LayerSpec(
        num_qo_heads=layer.num_heads,
        num_kv_heads=layer.num_kv_heads,
        head_dim=layer.head_dim,
        sm_scale=float(layer.scaling),
        window_left=-1 if window is None else window - 1,
        logits_soft_cap=None if layer.logit_cap is None else float(layer.logit_cap),
    )


def check_kv_dtype(dtype: torch.dtype) -> None:
    """Raise a clear error for a KV pool FlashInfer's kernels cannot read (float32)."""
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"attention_backend='flashinfer' needs a float16 or bfloat16 model (got {dtype}); "
            "pass --dtype bfloat16 (or float16), or use --attention-backend triton."
        )


@dataclass
class PagedKV:
    """One pass's page table in FlashInfer's CSR form, page size 1 (layout in the module docstring)."""

    qo_indptr: torch.Tensor
    kv_indptr: torch.Tensor
    kv_indices: torch.Tensor
    kv_last_page_len: torch.Tensor

    @property
    def batch_size(self) -> int:
        """Number of requests (rows of the page table)."""
        return int(self.kv_last_page_len.shape[0])


def _indptr(lengths: list[int]) -> torch.Tensor:
    """lengths [B] (host) -> [B + 1] int32 host tensor: 0, then running sums."""
    out = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    if lengths:
        out[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), dim=0).to(torch.int32)
    return out


def build_paged_kv(
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens_cpu: list[int],
    qo_lens_cpu: list[int] | None = None,
    kv_indices_out: torch.Tensor | None = None,
) -> PagedKV:
    """req_to_token: [R, C], req_pool_indices: [B] (device), seq_lens_cpu: [B] KV length of each request after
    this pass, qo_lens_cpu: [B] new tokens of each request (None: decode, one each) -> ``PagedKV``.

    ``kv_indices`` is gathered on the device without a host sync (its length comes from the host lengths); with
    ``kv_indices_out`` ([>= sum seq_lens] int32, a CUDA graph's buffer) it is written into that buffer's prefix.
    """
    batch = len(seq_lens_cpu)
    device = req_to_token.device
    kv_indptr = _indptr(list(seq_lens_cpu))
    total = int(kv_indptr[-1])
    qo_indptr = torch.arange(batch + 1, dtype=torch.int32) if qo_lens_cpu is None else _indptr(qo_lens_cpu)
    if kv_indices_out is None:
        kv_indices = torch.empty(total, dtype=torch.int32, device=device)
    else:
        if kv_indices_out.shape[0] < total:
            raise ValueError(f"kv_indices_out holds {kv_indices_out.shape[0]} slots, {total} needed")
        kv_indices = kv_indices_out[:total]
    if total:
        host = torch.tensor([*seq_lens_cpu, *kv_indptr[:-1].tolist()], dtype=torch.int64)
        lens, starts = host.to(device, non_blocking=True).split(batch)  # one copy to the device
        rows = torch.repeat_interleave(req_pool_indices, lens, output_size=total)  # [total] request row
        first = torch.repeat_interleave(starts, lens, output_size=total)  # [total] its first entry
        positions = torch.arange(total, device=device) - first  # [total] position within the request
        kv_indices.copy_(req_to_token[rows, positions])
    return PagedKV(
        qo_indptr=qo_indptr,
        kv_indptr=kv_indptr,
        kv_indices=kv_indices,
        kv_last_page_len=torch.ones(batch, dtype=torch.int32),
    )


def extend_plan_args(
    spec: LayerSpec, paged: PagedKV, kv_dtype: torch.dtype
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(args, kwargs) of ``BatchPrefillWithPagedKVCacheWrapper.plan``: causal over each request's prefix + new
    tokens (FlashInfer aligns the causal mask bottom-right: query row i of a request sees keys
    j <= kv_len - qo_len + i), queries cast to the pool's dtype."""
    args = (
        paged.qo_indptr,
        paged.kv_indptr,
        paged.kv_indices,
        paged.kv_last_page_len,
        spec.num_qo_heads,
        spec.num_kv_heads,
        spec.head_dim,
        PAGE_SIZE,
    )
    return args, dict(causal=True, **_shared_plan_kwargs(spec, kv_dtype))


def decode_plan_args(
    spec: LayerSpec, paged: PagedKV, kv_dtype: torch.dtype
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(args, kwargs) of ``BatchDecodeWithPagedKVCacheWrapper.plan``: one query per request over all its keys."""
    args = (
        paged.kv_indptr,
        paged.kv_indices,
        paged.kv_last_page_len,
        spec.num_qo_heads,
        spec.num_kv_heads,
        spec.head_dim,
        PAGE_SIZE,
    )
    return args, _shared_plan_kwargs(spec, kv_dtype)


def _shared_plan_kwargs(spec: LayerSpec, kv_dtype: torch.dtype) -> dict[str, Any]:
    """The keyword arguments both ``plan`` calls take from the layer spec and the pool's dtype."""
    return dict(
        pos_encoding_mode="NONE",  # RoPE is applied by the model before attention
        sm_scale=spec.sm_scale,
        window_left=spec.window_left,
        logits_soft_cap=spec.logits_soft_cap,
        q_data_type=kv_dtype,
        kv_data_type=kv_dtype,
    )


def paged_kv_cache(k_buf: torch.Tensor, v_buf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """k_buf, v_buf: [S, Hkv, D] (one layer of the pool) -> FlashInfer's NHD pages, each [S, 1, Hkv, D] (views)."""
    return k_buf.unsqueeze(1), v_buf.unsqueeze(1)
