"""FlashInfer attention backend: FlashInfer's paged prefill/decode kernels over our pool, behind ``AttentionBackend``.

Written against FlashInfer's documented plan/run API (``flashinfer-python`` >= 0.2; never run on a GPU here,
see docs/gpu.md). Per pass, ``init_forward_metadata`` builds the page table once (``flashinfer_metadata``, page
size 1) and calls ``plan()`` once per distinct layer spec (head shape, scale, window, soft cap); per layer,
``forward_extend`` / ``forward_decode`` only call ``run(q, (k_pages, v_pages))`` on the layer's pool buffers.

    extend: BatchPrefillWithPagedKVCacheWrapper, causal over prefix + new tokens (the layer stores its new K/V
            in the pool first, so prefill, chunked prefill and radix hits are one paged call)
    decode: BatchDecodeWithPagedKVCacheWrapper (tensor cores for GQA groups >= 4); under CUDA graphs one wrapper
            per (captured batch size, spec) with use_cuda_graph=True over fixed kv_indptr / kv_indices /
            kv_last_page_len buffers, re-planned outside the graph before each replay

All wrappers share one zero-initialised float workspace (``WORKSPACE_BYTES``). flashinfer is imported when the
backend is built (the factory builds it only for ``--attention-backend flashinfer``). The layer specs are learned
from the layers: ``init_cuda_graph_state`` lists them; in eager runs a spec is planned the first time a layer
shows it (once, in that pass's first such layer) and from then on in ``init_forward_metadata``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sglkit.core.forward_batch import ForwardBatch
from sglkit.layers.attention.base import AttentionBackend, RadixAttention
from sglkit.layers.attention.flashinfer_metadata import (
    KV_LAYOUT,
    WORKSPACE_BYTES,
    LayerSpec,
    PagedKV,
    build_paged_kv,
    check_kv_dtype,
    decode_plan_args,
    extend_plan_args,
    layer_spec,
    paged_kv_cache,
)

__all__ = ["FLASHINFER_MISSING", "FlashInferAttnBackend", "FlashInferMetadata", "import_flashinfer"]

FLASHINFER_MISSING = (
    "attention_backend='flashinfer' needs the flashinfer package: pip install 'sglkit[flashinfer]' "
    "(on PyPI: flashinfer-python; it needs a CUDA build of torch)."
)


def import_flashinfer() -> Any:
    """The ``flashinfer`` module, or an ImportError that says how to install it."""
    try:
        import flashinfer
    except ImportError as e:
        raise ImportError(FLASHINFER_MISSING) from e
    return flashinfer


@dataclass
class FlashInferMetadata:
    """One pass: its page table, the pool dtype, and the planned wrapper of each layer spec."""

    paged: PagedKV
    is_decode: bool
    kv_dtype: torch.dtype
    graph_bs: int | None = None  # the captured batch size whose fixed buffers ``paged`` lives in
    wrappers: dict[LayerSpec, Any] = field(default_factory=dict)


class FlashInferAttnBackend(AttentionBackend):
    """Paged prefill and decode with FlashInfer; decode CUDA graphs through fixed-buffer wrappers.

    ``device`` is a CUDA device in practice (the factory refuses others); ``workspace_bytes`` sizes the one
    float workspace all wrappers share (FlashInfer recommends 128 MB).
    """

    supports_cuda_graph = True

    def __init__(self, device: str | torch.device = "cuda", workspace_bytes: int = WORKSPACE_BYTES) -> None:
        self.flashinfer = import_flashinfer()
        self.device = torch.device(device)
        self.workspace = torch.zeros(workspace_bytes, dtype=torch.uint8, device=self.device)
        self.specs: dict[LayerSpec, None] = {}  # every layer spec seen, in order (a set that keeps order)
        self.prefill_wrappers: dict[LayerSpec, Any] = {}
        self.decode_wrappers: dict[LayerSpec, Any] = {}
        self.graph_wrappers: dict[tuple[int, LayerSpec], Any] = {}

    # ----- per pass -----
    def init_forward_metadata(self, forward_batch: ForwardBatch) -> None:
        """Build the page table and plan every known layer spec, once for this pass (host work here only)."""
        pool = forward_batch.token_to_kv_pool
        check_kv_dtype(pool.dtype)
        is_decode = forward_batch.forward_mode.is_decode()
        paged = build_paged_kv(
            forward_batch.req_to_token_pool.req_to_token,
            forward_batch.req_pool_indices,
            forward_batch.seq_lens_cpu,
            None if is_decode else forward_batch.extend_seq_lens_cpu,
        )
        meta = FlashInferMetadata(paged=paged, is_decode=is_decode, kv_dtype=pool.dtype)
        for spec in self.specs:
            self._plan(meta, spec)
        forward_batch.attn_metadata = meta

    def _wrapper(self, meta: FlashInferMetadata, spec: LayerSpec) -> Any:
        """The wrapper that serves ``spec`` in this pass (made on first use)."""
        fi = self.flashinfer
        if not meta.is_decode:
            if spec not in self.prefill_wrappers:
                self.prefill_wrappers[spec] = fi.BatchPrefillWithPagedKVCacheWrapper(
                    self.workspace, KV_LAYOUT
                )
            return self.prefill_wrappers[spec]
        if meta.graph_bs is None:
            if spec not in self.decode_wrappers:
                self.decode_wrappers[spec] = fi.BatchDecodeWithPagedKVCacheWrapper(
                    self.workspace, KV_LAYOUT, use_tensor_cores=spec.use_tensor_cores
                )
            return self.decode_wrappers[spec]
        bs = meta.graph_bs
        if (bs, spec) not in self.graph_wrappers:
            self.graph_wrappers[(bs, spec)] = fi.BatchDecodeWithPagedKVCacheWrapper(
                self.workspace,
                KV_LAYOUT,
                use_cuda_graph=True,
                use_tensor_cores=spec.use_tensor_cores,
                paged_kv_indptr_buffer=self.graph_kv_indptr[: bs + 1],
                paged_kv_indices_buffer=self.graph_kv_indices,
                paged_kv_last_page_len_buffer=self.graph_kv_last_page_len[:bs],
            )
        return self.graph_wrappers[(bs, spec)]

    def _plan(self, meta: FlashInferMetadata, spec: LayerSpec) -> Any:
        """plan() the wrapper of ``spec`` for this pass and record it on ``meta``; returns the wrapper."""
        wrapper = self._wrapper(meta, spec)
        build_args = decode_plan_args if meta.is_decode else extend_plan_args
        args, kwargs = build_args(spec, meta.paged, meta.kv_dtype)
        wrapper.plan(*args, **kwargs)
        meta.wrappers[spec] = wrapper
        return wrapper

    # ----- CUDA graphs: fixed buffers, plan() outside the graph before each replay -----
    def init_cuda_graph_state(
        self, max_bs: int, max_num_tokens: int, layers: Sequence[RadixAttention]
    ) -> None:
        """kv_indptr [max_bs + 1], kv_indices [max_num_tokens], kv_last_page_len [max_bs] (all ones) int32,
        shared by the graph wrappers of every size (each takes a prefix); the specs of ``layers``."""
        self.graph_kv_indptr = torch.zeros(max_bs + 1, dtype=torch.int32, device=self.device)
        self.graph_kv_indices = torch.zeros(max(1, max_num_tokens), dtype=torch.int32, device=self.device)
        self.graph_kv_last_page_len = torch.ones(max_bs, dtype=torch.int32, device=self.device)
        for layer in layers:
            self.specs.setdefault(layer_spec(layer))
        self.graph_wrappers = {}

    def init_forward_metadata_capture_cuda_graph(self, forward_batch: ForwardBatch) -> None:
        """Make this size's wrappers (over the fixed buffers) and plan them, as before a replay."""
        self.init_forward_metadata_replay_cuda_graph(forward_batch)

    def init_forward_metadata_replay_cuda_graph(self, forward_batch: ForwardBatch) -> None:
        """Refill kv_indices in place from the padded batch, then plan() each spec's wrapper of this size (which
        copies kv_indptr / kv_last_page_len into the fixed buffers and sets the plan the graph's kernels read)."""
        pool = forward_batch.token_to_kv_pool
        check_kv_dtype(pool.dtype)
        paged = build_paged_kv(
            forward_batch.req_to_token_pool.req_to_token,
            forward_batch.req_pool_indices,
            forward_batch.seq_lens_cpu,
            kv_indices_out=self.graph_kv_indices,
        )
        meta = FlashInferMetadata(
            paged=paged, is_decode=True, kv_dtype=pool.dtype, graph_bs=forward_batch.batch_size
        )
        for spec in self.specs:
            self._plan(meta, spec)
        forward_batch.attn_metadata = meta

    # ----- per layer -----
    def _run(self, q: torch.Tensor, layer: RadixAttention, forward_batch: ForwardBatch) -> torch.Tensor:
        """q: [N, Hq, D] -> [N, Hq, D]: run() of this layer's planned wrapper over its pool buffers."""
        meta: FlashInferMetadata = forward_batch.attn_metadata
        spec = layer_spec(layer)
        wrapper = meta.wrappers.get(spec)
        if wrapper is None:  # a layer kind not seen before: plan it now; later passes plan it up front
            if meta.graph_bs is not None:
                raise RuntimeError(f"layer {layer.layer_id}'s {spec} was not listed in init_cuda_graph_state")
            self.specs[spec] = None
            wrapper = self._plan(meta, spec)
        k_buf, v_buf = forward_batch.token_to_kv_pool.get_kv_buffer(layer.layer_id)
        q_in = q.to(k_buf.dtype).contiguous()  # the dtype plan() was given
        out = wrapper.run(q_in, paged_kv_cache(k_buf, v_buf))
        return out.to(q.dtype)

    def forward_extend(
        self, q: torch.Tensor, layer: RadixAttention, forward_batch: ForwardBatch
    ) -> torch.Tensor:
        """q: [T, Hq, D] -> [T, Hq, D] (causal over each request's prefix + new tokens)."""
        return self._run(q, layer, forward_batch)

    def forward_decode(
        self, q: torch.Tensor, layer: RadixAttention, forward_batch: ForwardBatch
    ) -> torch.Tensor:
        """q: [B, Hq, D] -> [B, Hq, D]."""
        return self._run(q, layer, forward_batch)
