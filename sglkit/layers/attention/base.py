"""Attention seam: models call ``RadixAttention``; it writes new KV into the pool and delegates to a backend.

Backends (torch_native, triton, flashinfer) implement ``AttentionBackend``. Models and the scheduler never
import a concrete backend; ``create_attention_backend`` in ``sglkit.layers.attention`` picks one by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from sglkit.core.forward_batch import ForwardBatch


class AttentionBackend(ABC):
    """Computes attention over the paged KV pool for one ForwardBatch.

    Contract: ``init_forward_metadata`` is called once per forward pass (before any layer runs);
    ``forward_extend`` / ``forward_decode`` are called once per layer, after the layer's new K/V
    have been written to the pool at ``forward_batch.out_cache_loc``.
    """

    @abstractmethod
    def init_forward_metadata(self, forward_batch: ForwardBatch) -> None:
        """Prepare per-pass metadata (index tensors, masks) and store it on ``forward_batch.attn_metadata``."""

    @abstractmethod
    def forward_extend(
        self, q: torch.Tensor, layer: RadixAttention, forward_batch: ForwardBatch
    ) -> torch.Tensor:
        """q: [num_tokens, num_heads, head_dim] -> out [num_tokens, num_heads, head_dim] (causal, with prefix)."""

    @abstractmethod
    def forward_decode(
        self, q: torch.Tensor, layer: RadixAttention, forward_batch: ForwardBatch
    ) -> torch.Tensor:
        """q: [batch_size, num_heads, head_dim] -> out [batch_size, num_heads, head_dim]."""


class RadixAttention(nn.Module):
    """The attention op of one layer: store this pass's K/V in the pool, then attend with the backend."""

    def __init__(
        self, layer_id: int, num_heads: int, num_kv_heads: int, head_dim: int, scaling: float
    ) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scaling = scaling

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, forward_batch: ForwardBatch
    ) -> torch.Tensor:
        """q: [T, Hq*D], k/v: [T, Hkv*D] -> [T, Hq*D]."""
        num_tokens = q.shape[0]
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        forward_batch.token_to_kv_pool.set_kv_buffer(self.layer_id, forward_batch.out_cache_loc, k, v)
        backend = forward_batch.attn_backend
        if forward_batch.forward_mode.is_decode():
            out = backend.forward_decode(q, self, forward_batch)
        else:
            out = backend.forward_extend(q, self, forward_batch)
        return out.reshape(num_tokens, self.num_heads * self.head_dim)
