"""Triton attention backend: paged-KV kernels for CUDA (and Triton's CPU interpreter), behind ``AttentionBackend``.

Per pass, ``init_forward_metadata`` does all host work once (it reads host-side lengths, allocates, launches the
kv-indices kernel); per layer, ``forward_extend`` / ``forward_decode`` only launch kernels on tensors already on
the device (no ``.item()``, ``.tolist()`` or loop over requests), so the decode forward can later run inside a
captured CUDA graph with ``init_forward_metadata`` called outside it. Metadata (``TritonMetadata``):

    kv_indptr [B + 1] int32, kv_indices [sum seq_lens] int32   request b's KV slots, positions 0..seq_len-1
    decode:  num_kv_splits [B] int32 = clamp(cdiv(seq_len, min_split_tokens), 1, max_kv_splits)
    extend:  qo_indptr [B + 1] int32 (packed new tokens), prefix_lens [B] int32, max_extend_len (host int)

The kernels live in ``triton_ops`` (imported here, so only choosing this backend imports triton). On CPU the
backend runs only under ``TRITON_INTERPRET=1`` (slow; for tests). bf16 under the interpreter multiplies in
float32 (its bf16 ``tl.dot`` is wrong); on a GPU the kernels multiply in the pool's dtype (float32: TF32).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate

import torch

from sglkit.core.forward_batch import ForwardBatch
from sglkit.layers.attention.base import AttentionBackend, RadixAttention
from sglkit.layers.attention.triton_ops.decode_attention import decode_attention
from sglkit.layers.attention.triton_ops.extend_attention import extend_attention
from sglkit.layers.attention.triton_ops.kv_indices import build_kv_indices, build_kv_indptr
from sglkit.layers.attention.triton_ops.kv_store import store_kv

__all__ = ["TritonAttnBackend", "TritonMetadata"]

MIN_SPLIT_TOKENS = 32  # a decode split covers at least this many keys: lengths 1..32 use one split, 33.. two
MAX_KV_SPLITS = 16  # most splits of one request
CPU_MAX_KV_SPLITS = 8  # under the interpreter (tests): enough to cover multi-split paths


@dataclass
class TritonMetadata:
    """Per-pass tensors the kernels read (see the module docstring for the layout)."""

    kv_indptr: torch.Tensor
    kv_indices: torch.Tensor
    num_kv_splits: torch.Tensor | None = None
    max_kv_splits: int = 1
    qo_indptr: torch.Tensor | None = None
    prefix_lens: torch.Tensor | None = None
    max_extend_len: int = 0
    workspaces: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def decode_workspace(self, batch: int, num_heads: int, head_dim: int, device) -> tuple:
        """(part_out [B, Hq, max_splits, D], part_lse [B, Hq, max_splits]) float32, shared by all layers."""
        key = (num_heads, head_dim)
        if key not in self.workspaces:
            shape = (batch, num_heads, self.max_kv_splits)
            self.workspaces[key] = (
                torch.empty((*shape, head_dim), dtype=torch.float32, device=device),
                torch.empty(shape, dtype=torch.float32, device=device),
            )
        return self.workspaces[key]


class TritonAttnBackend(AttentionBackend):
    """Split-KV grouped decode and causal extend over the paged pool, with Triton kernels.

    ``max_kv_splits`` caps the splits of one request (default: sized so that batch x KV heads x splits fills
    the GPU about twice, at most 16; 8 under the CPU interpreter).
    """

    supports_cuda_graph = True

    def __init__(
        self,
        device: str | torch.device = "cuda",
        max_kv_splits: int | None = None,
        min_split_tokens: int = MIN_SPLIT_TOKENS,
    ) -> None:
        self.device = torch.device(device)
        self.fixed_max_kv_splits = max_kv_splits
        self.min_split_tokens = min_split_tokens
        self.num_sms = 0
        if self.device.type == "cuda":
            self.num_sms = torch.cuda.get_device_properties(self.device).multi_processor_count

    def max_kv_splits(self, batch_size: int, num_kv_heads: int) -> int:
        """Splits per request at most, for a decode batch of ``batch_size`` (host arithmetic only)."""
        if self.fixed_max_kv_splits is not None:
            return self.fixed_max_kv_splits
        if not self.num_sms:
            return CPU_MAX_KV_SPLITS
        wanted = -(-2 * self.num_sms // max(1, batch_size * num_kv_heads))
        return max(1, min(MAX_KV_SPLITS, wanted))

    def init_forward_metadata(self, forward_batch: ForwardBatch) -> None:
        """Build kv_indptr / kv_indices (and split counts or extend offsets) once for this pass."""
        seq_lens = forward_batch.seq_lens
        device = seq_lens.device
        kv_indptr = build_kv_indptr(seq_lens)
        kv_indices = torch.empty(max(1, sum(forward_batch.seq_lens_cpu)), dtype=torch.int32, device=device)
        build_kv_indices(
            forward_batch.req_to_token_pool.req_to_token,
            forward_batch.req_pool_indices,
            seq_lens,
            kv_indptr,
            kv_indices,
        )
        meta = TritonMetadata(kv_indptr=kv_indptr, kv_indices=kv_indices)
        if forward_batch.forward_mode.is_decode():
            pool = forward_batch.token_to_kv_pool
            meta.max_kv_splits = self.max_kv_splits(forward_batch.batch_size, pool.num_kv_heads)
            splits = (seq_lens + self.min_split_tokens - 1) // self.min_split_tokens
            meta.num_kv_splits = splits.clamp(1, meta.max_kv_splits).to(torch.int32)
        else:
            ext_lens = forward_batch.extend_seq_lens_cpu
            host = [0, *accumulate(ext_lens), *forward_batch.extend_prefix_lens_cpu]
            staged = torch.tensor(host, dtype=torch.int32).to(device, non_blocking=True)  # one copy
            batch = len(ext_lens)
            meta.qo_indptr, meta.prefix_lens = staged[: batch + 1], staged[batch + 1 :]
            meta.max_extend_len = max(ext_lens, default=0)
        forward_batch.attn_metadata = meta

    # ----- CUDA graphs: buffers preallocated once, refilled in place outside the graph -----
    def init_cuda_graph_state(
        self, max_bs: int, max_num_tokens: int, layers: Sequence[RadixAttention]
    ) -> None:
        """kv_indptr [max_bs + 1], kv_indices [max_num_tokens], num_kv_splits [max_bs] (int32) and one flat decode
        workspace per (heads, head_dim) of ``layers``, sized for the most splits any batch size gets."""
        self.graph_kv_indptr = torch.zeros(max_bs + 1, dtype=torch.int32, device=self.device)
        self.graph_kv_indices = torch.zeros(max(1, max_num_tokens), dtype=torch.int32, device=self.device)
        self.graph_num_kv_splits = torch.ones(max_bs, dtype=torch.int32, device=self.device)
        most_splits = self.max_kv_splits(1, 1)  # the split count only falls as batch x heads grows
        self.graph_workspaces: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        for heads, head_dim in sorted({(layer.num_heads, layer.head_dim) for layer in layers}):
            rows = max_bs * heads * most_splits
            self.graph_workspaces[(heads, head_dim)] = (
                torch.empty(rows * head_dim, dtype=torch.float32, device=self.device),
                torch.empty(rows, dtype=torch.float32, device=self.device),
            )
        self.graph_metadata: dict[int, TritonMetadata] = {}

    def _graph_metadata(self, forward_batch: ForwardBatch) -> TritonMetadata:
        """The metadata of the graph of this batch size: views of the preallocated buffers (made once per size)."""
        bs = forward_batch.batch_size
        if bs not in self.graph_metadata:
            splits = self.max_kv_splits(bs, forward_batch.token_to_kv_pool.num_kv_heads)
            workspaces = {
                (heads, dim): (
                    out[: bs * heads * splits * dim].view(bs, heads, splits, dim),
                    lse[: bs * heads * splits].view(bs, heads, splits),
                )
                for (heads, dim), (out, lse) in self.graph_workspaces.items()
            }
            self.graph_metadata[bs] = TritonMetadata(
                kv_indptr=self.graph_kv_indptr[: bs + 1],
                kv_indices=self.graph_kv_indices,
                num_kv_splits=self.graph_num_kv_splits[:bs],
                max_kv_splits=splits,
                workspaces=workspaces,
            )
        return self.graph_metadata[bs]

    def init_forward_metadata_capture_cuda_graph(self, forward_batch: ForwardBatch) -> None:
        """Point the batch at its size's preallocated metadata and fill it (see the replay hook)."""
        self.init_forward_metadata_replay_cuda_graph(forward_batch)

    def init_forward_metadata_replay_cuda_graph(self, forward_batch: ForwardBatch) -> None:
        """Refill kv_indptr, kv_indices and num_kv_splits in place from the padded batch's device tensors
        (no allocation the graph reads, no host sync)."""
        meta = self._graph_metadata(forward_batch)
        seq_lens = forward_batch.seq_lens
        build_kv_indptr(seq_lens, out=meta.kv_indptr)
        build_kv_indices(
            forward_batch.req_to_token_pool.req_to_token,
            forward_batch.req_pool_indices,
            seq_lens,
            meta.kv_indptr,
            meta.kv_indices,
        )
        splits = (seq_lens + self.min_split_tokens - 1) // self.min_split_tokens
        meta.num_kv_splits.copy_(splits.clamp(1, meta.max_kv_splits))
        forward_batch.attn_metadata = meta

    def set_kv_buffer(
        self, layer: RadixAttention, forward_batch: ForwardBatch, k: torch.Tensor, v: torch.Tensor
    ) -> None:
        """k, v: [T, Hkv, D] -> the pool at ``out_cache_loc``: one fused kernel writes K and V of each token."""
        k_buf, v_buf = forward_batch.token_to_kv_pool.get_kv_buffer(layer.layer_id)
        store_kv(k_buf, v_buf, forward_batch.out_cache_loc, k, v)

    def forward_extend(
        self, q: torch.Tensor, layer: RadixAttention, forward_batch: ForwardBatch
    ) -> torch.Tensor:
        """q: [T, Hq, D] -> [T, Hq, D] (causal over each request's prefix + new tokens)."""
        meta: TritonMetadata = forward_batch.attn_metadata
        k_buf, v_buf = forward_batch.token_to_kv_pool.get_kv_buffer(layer.layer_id)
        q_in = q.to(k_buf.dtype)
        out = torch.empty_like(q_in)
        extend_attention(
            q_in,
            out,
            k_buf,
            v_buf,
            meta.qo_indptr,
            meta.prefix_lens,
            meta.kv_indptr,
            meta.kv_indices,
            meta.max_extend_len,
            layer.scaling,
            layer.sliding_window,
            layer.logit_cap,
        )
        return out.to(q.dtype)

    def forward_decode(
        self, q: torch.Tensor, layer: RadixAttention, forward_batch: ForwardBatch
    ) -> torch.Tensor:
        """q: [B, Hq, D] -> [B, Hq, D] (split-KV, grouped GQA, LSE merge)."""
        meta: TritonMetadata = forward_batch.attn_metadata
        k_buf, v_buf = forward_batch.token_to_kv_pool.get_kv_buffer(layer.layer_id)
        q_in = q.to(k_buf.dtype)
        out = torch.empty_like(q_in)
        batch, num_heads, head_dim = q.shape
        part_out, part_lse = meta.decode_workspace(batch, num_heads, head_dim, q.device)
        decode_attention(
            q_in,
            k_buf,
            v_buf,
            out,
            meta.kv_indptr,
            meta.kv_indices,
            meta.num_kv_splits,
            part_out,
            part_lse,
            layer.scaling,
            layer.sliding_window,
            layer.logit_cap,
        )
        return out.to(q.dtype)
