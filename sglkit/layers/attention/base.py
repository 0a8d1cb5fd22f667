"""Attention seam: models call ``RadixAttention``; it writes new KV into the pool and delegates to a backend.

Backends (torch_native, triton, flashinfer) implement ``AttentionBackend``. Models and the scheduler never
import a concrete backend; ``create_attention_backend`` in ``sglkit.layers.attention`` picks one by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from sglkit.layers.compiled_ops import compiled_attention

if TYPE_CHECKING:
    from sglkit.core.forward_batch import ForwardBatch


class AttentionBackend(ABC):
    """Computes attention over the paged KV pool for one ForwardBatch.

    Contract: ``init_forward_metadata`` is called once per forward pass (before any layer runs);
    ``forward_extend`` / ``forward_decode`` are called once per layer, after the layer's new K/V
    have been written to the pool at ``forward_batch.out_cache_loc``.
    """

    supports_cuda_graph: bool = False  # True when the decode forward is graph-safe (hooks below implemented)

    def set_kv_buffer(
        self, layer: RadixAttention, forward_batch: ForwardBatch, k: torch.Tensor, v: torch.Tensor
    ) -> None:
        """Store this pass's k, v ([T, Hkv, D]) in the pool at ``forward_batch.out_cache_loc`` (the pool's own
        write by default; a backend may fuse it, e.g. one kernel for K and V)."""
        forward_batch.token_to_kv_pool.set_kv_buffer(layer.layer_id, forward_batch.out_cache_loc, k, v)

    @abstractmethod
    def init_forward_metadata(self, forward_batch: ForwardBatch) -> None:
        """Prepare per-pass metadata (index tensors, masks) and store it on ``forward_batch.attn_metadata``."""

    # ----- CUDA graphs (sglkit.runtime.executor.cuda_graph_runner) -----
    def init_cuda_graph_state(
        self, max_bs: int, max_num_tokens: int, layers: Sequence[RadixAttention]
    ) -> None:
        """Preallocate what decode graphs of up to ``max_bs`` rows (``max_num_tokens`` KV slots in all) read, for
        these attention ``layers``. Default: nothing (a backend whose metadata is built fresh per pass)."""
        return None

    def init_forward_metadata_capture_cuda_graph(self, forward_batch: ForwardBatch) -> None:
        """Metadata for capturing the decode graph of ``forward_batch.batch_size`` rows, outside the graph; the
        graph keeps reading the tensors set here. Default: ``init_forward_metadata``."""
        self.init_forward_metadata(forward_batch)

    def init_forward_metadata_replay_cuda_graph(self, forward_batch: ForwardBatch) -> None:
        """Refresh, in place and outside the graph, the metadata the captured graph of this batch size reads,
        from the padded batch's static inputs. Default: ``init_forward_metadata``."""
        self.init_forward_metadata(forward_batch)

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
    """The attention op of one layer: store this pass's K/V in the pool, then attend with the backend.

    Options a backend must honour (None = off, the default fast path):

    - ``sliding_window``: a query at position p attends keys at positions > p - window (the window counts the
      query's own key; HF's ``sliding_window_overlay``, Mistral / Gemma 2 local layers).
    - ``logit_cap``: scores become cap * tanh(scores / cap) before the softmax (Gemma 2 soft-capping).
    """

    compiled_handle: int | None = None  # this layer's number for torch.compile's opaque op (compiled_ops)

    def __init__(
        self,
        layer_id: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        scaling: float,
        sliding_window: int | None = None,
        logit_cap: float | None = None,
    ) -> None:
        super().__init__()
        if sliding_window is not None and sliding_window < 1:
            raise ValueError(f"sliding_window must be a positive number of tokens, not {sliding_window}.")
        if logit_cap is not None and logit_cap <= 0:
            raise ValueError(f"logit_cap must be positive, not {logit_cap}.")
        self.layer_id = layer_id
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scaling = scaling
        self.sliding_window = sliding_window
        self.logit_cap = logit_cap

    @property
    def has_options(self) -> bool:
        """True when a sliding window or a logit cap is set (backends leave their default path)."""
        return self.sliding_window is not None or self.logit_cap is not None

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, forward_batch: ForwardBatch
    ) -> torch.Tensor:
        """q: [T, Hq*D], k/v: [T, Hkv*D] -> [T, Hq*D]. Under torch.compile: one opaque op running the same."""
        if torch.compiler.is_compiling():
            return compiled_attention(self, q, k, v)
        return self.forward_eager(q, k, v, forward_batch)

    def forward_eager(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, forward_batch: ForwardBatch
    ) -> torch.Tensor:
        """q: [T, Hq*D], k/v: [T, Hkv*D] -> [T, Hq*D]: write k/v to the pool, attend with the backend."""
        num_tokens = q.shape[0]
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        backend = forward_batch.attn_backend
        backend.set_kv_buffer(self, forward_batch, k, v)
        if forward_batch.forward_mode.is_decode():
            out = backend.forward_decode(q, self, forward_batch)
        else:
            out = backend.forward_extend(q, self, forward_batch)
        return out.reshape(num_tokens, self.num_heads * self.head_dim)

    def extra_repr(self) -> str:
        """Layer id, head counts and the options that are set."""
        text = f"layer_id={self.layer_id}, heads={self.num_heads}, kv_heads={self.num_kv_heads}"
        text += f", head_dim={self.head_dim}"
        if self.sliding_window is not None:
            text += f", sliding_window={self.sliding_window}"
        if self.logit_cap is not None:
            text += f", logit_cap={self.logit_cap}"
        return text
