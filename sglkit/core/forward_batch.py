"""Model-runner input: the tensors one forward pass needs (scheduler -> ForwardBatch -> model -> attention).

A ``ForwardBatch`` is built by the scheduler's batch from plain ``Req`` objects. Tokens of all
requests are packed (ragged) along the first dimension; no padding. Index ranges:

    request i owns packed tokens [extend_start_loc[i], extend_start_loc[i] + extend_seq_lens[i])
    its KV lives at req_to_token[req_pool_indices[i], :seq_lens[i]]
    of which [:extend_prefix_lens[i]] was already in the pool (radix hit / earlier chunk)
    and [extend_prefix_lens[i]:seq_lens[i]] is written by this pass at out_cache_loc
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch


class ForwardMode(Enum):
    """Kind of forward pass: EXTEND (prefill, possibly on top of a cached prefix) or DECODE (one token each)."""

    EXTEND = 1
    DECODE = 2

    def is_extend(self) -> bool:
        """True for prefill/extend passes."""
        return self is ForwardMode.EXTEND

    def is_decode(self) -> bool:
        """True for one-token-per-request decode passes."""
        return self is ForwardMode.DECODE


@dataclass
class ForwardBatch:
    """Everything the model and the attention backend read during one forward pass."""

    forward_mode: ForwardMode
    batch_size: int
    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    out_cache_loc: torch.Tensor  # [num_tokens] int64, KV pool slots written by this pass
    req_pool_indices: torch.Tensor  # [batch_size] int64
    seq_lens: torch.Tensor  # [batch_size] int64, total KV length after this pass
    seq_lens_cpu: list[int]
    extend_prefix_lens_cpu: list[int]  # [batch_size] cached tokens before this pass (0s for decode)
    extend_seq_lens_cpu: list[int]  # [batch_size] new tokens in this pass (1s for decode)
    logits_indices: torch.Tensor  # [num_logit_rows] packed-token rows whose logits are computed
    req_to_token_pool: Any  # sglkit.cache.ReqToTokenPool (None for an encoder)
    token_to_kv_pool: Any  # sglkit.cache.MHATokenToKVPool (None for an encoder)
    attn_backend: Any  # sglkit.layers.attention.AttentionBackend
    # Backend-private metadata set by ``attn_backend.init_forward_metadata``.
    attn_metadata: Any = None
    extend_start_loc_cpu: list[int] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        """Number of packed tokens in this pass."""
        return int(self.input_ids.shape[0])
