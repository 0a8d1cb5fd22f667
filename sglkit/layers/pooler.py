"""Model layers: pooling of packed hidden states into one vector per sequence (embedding model -> Pooler -> vector).

Hidden states of all sequences of a batch arrive packed along dim 0 ([T, H], no padding); ``seq_lens`` gives
each sequence's length in order. Pooling types follow sentence-transformers' ``Pooling`` modes:

=============  ================================================  ====================================
type           vector of sequence i                              used by
=============  ================================================  ====================================
LAST           hidden of its last token                          gte-Qwen2, e5-mistral, reward models
CLS            hidden of its first token                         BERT-style [CLS] embedders
MEAN           mean over its tokens                              all-MiniLM-L6-v2 and most ST models
MAX            elementwise max over its tokens                   ST ``pooling_mode_max_tokens``
MEAN_SQRT_LEN  sum over its tokens / sqrt(length)                ST ``pooling_mode_mean_sqrt_len_tokens``
=============  ================================================  ====================================

``normalize`` then L2-normalizes each vector (sentence-transformers' ``Normalize`` module).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PoolingType", "PoolingConfig", "Pooler"]


class PoolingType(str, Enum):
    """How a sequence's token states become one vector."""

    LAST = "last"
    CLS = "cls"
    MEAN = "mean"
    MAX = "max"
    MEAN_SQRT_LEN = "mean_sqrt_len"


@dataclass(frozen=True)
class PoolingConfig:
    """A pooling type plus whether the pooled vector is L2-normalized."""

    pooling_type: PoolingType
    normalize: bool


class Pooler(nn.Module):
    """Packed hidden states [T, H] + sequence lengths [B] -> one vector per sequence [B, H]."""

    def __init__(self, pooling_type: PoolingType | str, normalize: bool) -> None:
        super().__init__()
        self.pooling_type = PoolingType(pooling_type)
        self.normalize = normalize

    @classmethod
    def from_config(cls, config: PoolingConfig) -> Pooler:
        """A Pooler with ``config``'s type and normalization."""
        return cls(config.pooling_type, config.normalize)

    @property
    def config(self) -> PoolingConfig:
        """This pooler's type and normalization."""
        return PoolingConfig(self.pooling_type, self.normalize)

    def forward(self, hidden: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
        """hidden: [T, H] packed, seq_lens: [B] int64 (sum == T) -> [B, H]."""
        seq_lens = seq_lens.to(hidden.device)
        ends = torch.cumsum(seq_lens, 0)
        starts = ends - seq_lens
        kind = self.pooling_type
        if kind is PoolingType.LAST:
            pooled = hidden[ends - 1]
        elif kind is PoolingType.CLS:
            pooled = hidden[starts]
        elif kind is PoolingType.MAX:
            pooled = torch.segment_reduce(hidden, "max", lengths=seq_lens)
        else:
            sums = torch.segment_reduce(hidden, "sum", lengths=seq_lens)  # [B, H]
            lens = seq_lens.to(hidden.dtype)[:, None]
            pooled = sums / (lens if kind is PoolingType.MEAN else lens.sqrt())
        if self.normalize:
            pooled = F.normalize(pooled, p=2, dim=-1)
        return pooled

    def extra_repr(self) -> str:
        """Sizes and settings, for ``print(model)``."""
        return f"pooling_type={self.pooling_type.value}, normalize={self.normalize}"
