"""Model layers: vocabulary embedding and LM head (input_ids -> embed_tokens -> decoder ... -> lm head -> logits).

Both hold a [V / tp_size, H] slice of the vocabulary: rank r owns token ids [r * V/tp, (r + 1) * V/tp) and its
``weight_loader`` copies those rows of the checkpoint tensor. With tp_size == 1 (today) that is the whole
matrix and ``VocabParallelEmbedding.forward`` is ``F.embedding``. With tp_size > 1 it returns zeros for ids
outside the rank's range; the caller would sum the ranks' outputs (all-reduce), not implemented yet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sglkit.layers.linear import divide
from sglkit.layers.weight_loader import copy_weight, set_weight_loader, shard_tensor

__all__ = ["ParallelLMHead", "VocabParallelEmbedding"]


class VocabParallelEmbedding(nn.Module):
    """Token embedding table ``weight`` [V / tp_size, H]; input_ids: [T] -> [T, H]."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        dtype: torch.dtype | None = None,
        tp_rank: int = 0,
        tp_size: int = 1,
    ) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings  # the full vocabulary
        self.embedding_dim = embedding_dim
        self.tp_rank = tp_rank
        self.tp_size = tp_size
        self.num_embeddings_per_partition = divide(num_embeddings, tp_size)
        self.vocab_start = tp_rank * self.num_embeddings_per_partition
        self.vocab_end = self.vocab_start + self.num_embeddings_per_partition
        self.weight = nn.Parameter(torch.empty(self.num_embeddings_per_partition, embedding_dim, dtype=dtype))
        set_weight_loader(self.weight, self.weight_loader)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id=None) -> None:
        """Copy this rank's rows [vocab_start, vocab_end) of the full [V, H] checkpoint matrix."""
        if shard_id is not None:
            raise ValueError(f"{type(self).__name__} has no shards; got shard_id={shard_id!r}.")
        copy_weight(param.data, shard_tensor(loaded_weight, 0, self.tp_rank, self.tp_size))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: [T] -> [T, H] (with tp_size > 1: this rank's partial sum, zeros for other ranks' ids)."""
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        local = (input_ids >= self.vocab_start) & (input_ids < self.vocab_end)
        out = F.embedding(torch.where(local, input_ids - self.vocab_start, 0), self.weight)
        return out * local.unsqueeze(-1).to(out.dtype)

    def extra_repr(self) -> str:
        """Sizes (this rank's) and tensor-parallel placement, for ``print(model)``."""
        tp = f", tp_rank={self.tp_rank}, tp_size={self.tp_size}" if self.tp_size > 1 else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{tp}"


class ParallelLMHead(VocabParallelEmbedding):
    """Output projection [V / tp_size, H] of a causal LM; the model computes logits as F.linear(hidden, weight).

    Not a ``Linear``: it is never packed for oneDNN (the logits use ``weight`` directly).
    """

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Not an embedding lookup: the model multiplies hidden states by ``weight``."""
        raise RuntimeError("ParallelLMHead has no forward; use its weight in the model's compute_logits.")
