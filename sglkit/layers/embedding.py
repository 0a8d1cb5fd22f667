"""Model layers: vocabulary embedding and LM head (input_ids -> embed_tokens -> decoder ... -> lm head -> logits).

Both hold a contiguous shard of the vocabulary, SGLang-style: the vocabulary V is padded to a multiple of
tp_size (``num_embeddings_padded``), each rank r owns ids [r * P, (r + 1) * P) with P = padded / tp_size, and its
``weight_loader`` copies those rows of the checkpoint tensor (the padding rows past V stay zero). With
tp_size 1 the shard is the whole matrix and ``forward`` is ``F.embedding``. With tp_size > 1 each rank looks up
its own ids (zeros for the others) and the ranks' rows are summed (all-reduce).

Logits (``vocab_parallel_logits``): each rank multiplies the hidden states by its shard, the shards are
all-gathered along the vocabulary and the padding trimmed, so every rank holds the full [N, V] logits (a tied
LM head uses the embedding's shard). ``tp_rank`` / ``tp_size`` default to ``sglkit.parallel``'s state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sglkit.layers.linear import resolve_tp
from sglkit.layers.quantization.packed import PackedWeight, pack_weight, packed_matmul
from sglkit.layers.weight_loader import copy_weight, set_weight_loader
from sglkit.parallel import tensor_model_parallel_all_gather, tensor_model_parallel_all_reduce

__all__ = ["ParallelLMHead", "VocabParallelEmbedding", "pad_vocab_size", "vocab_parallel_logits"]


def pad_vocab_size(vocab_size: int, tp_size: int) -> int:
    """The vocabulary rounded up to a multiple of ``tp_size`` (every rank then holds as many rows)."""
    return -(-vocab_size // tp_size) * tp_size


class VocabParallelEmbedding(nn.Module):
    """Token embedding table ``weight`` [padded V / tp_size, H]; input_ids: [T] -> [T, H]."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        dtype: torch.dtype | None = None,
        tp_rank: int | None = None,
        tp_size: int | None = None,
    ) -> None:
        super().__init__()
        tp_rank, tp_size = resolve_tp(tp_rank, tp_size)
        self.num_embeddings = num_embeddings  # the full (real) vocabulary
        self.embedding_dim = embedding_dim
        self.tp_rank = tp_rank
        self.tp_size = tp_size
        self.num_embeddings_padded = pad_vocab_size(num_embeddings, tp_size)
        self.num_embeddings_per_partition = self.num_embeddings_padded // tp_size
        self.vocab_start = tp_rank * self.num_embeddings_per_partition  # this rank's ids [start, end)
        self.vocab_end = self.vocab_start + self.num_embeddings_per_partition
        self.num_real_rows = max(0, min(self.vocab_end, num_embeddings) - self.vocab_start)  # rest: padding
        self.weight = nn.Parameter(torch.empty(self.num_embeddings_per_partition, embedding_dim, dtype=dtype))
        set_weight_loader(self.weight, self.weight_loader)
        self.packed_logits_weight: PackedWeight | None = None  # blocked copy for the logits GEMM (CPU)

    def pack_for_logits(self, kernel: str = "auto") -> bool:
        """Keep a blocked copy of ``weight`` for the logits GEMM when this matrix is the LM head (CPU, where a kernel
        takes the dtype: ``pack_weight``, sglkit's kernel or oneDNN): 2x faster than ``F.linear`` on the
        plain matrix at 1-32 rows. The plain weight stays (a tied embedding still looks rows up in it).
        ``pack_linear_weights`` calls it after every weight change; returns whether a packed copy is held."""
        self.packed_logits_weight = pack_weight(self.weight, kernel=kernel)
        return self.packed_logits_weight is not None

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id=None) -> None:
        """Copy this rank's rows [vocab_start, vocab_end) of the full [V, H] checkpoint matrix; zero the padding."""
        if shard_id is not None:
            raise ValueError(f"{type(self).__name__} has no shards; got shard_id={shard_id!r}.")
        if self.tp_size == 1:
            copy_weight(param.data, loaded_weight)
            return
        if loaded_weight.shape[0] != self.num_embeddings:
            raise ValueError(
                f"Vocabulary tensor of shape {tuple(loaded_weight.shape)} does not have {self.num_embeddings} rows."
            )
        real = self.num_real_rows
        copy_weight(param.data[:real], loaded_weight.narrow(0, self.vocab_start, real))
        param.data[real:].zero_()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: [T] -> [T, H] (with tp_size > 1: each rank's own rows, summed over the ranks)."""
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        local = (input_ids >= self.vocab_start) & (input_ids < self.vocab_end)  # [T]
        out = F.embedding(torch.where(local, input_ids - self.vocab_start, 0), self.weight)  # [T, H]
        out = out * local.unsqueeze(-1).to(out.dtype)
        return tensor_model_parallel_all_reduce(out)

    def extra_repr(self) -> str:
        """Sizes (this rank's) and tensor-parallel placement, for ``print(model)``."""
        tp = f", tp_rank={self.tp_rank}, tp_size={self.tp_size}" if self.tp_size > 1 else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{tp}"


class ParallelLMHead(VocabParallelEmbedding):
    """Output projection [padded V / tp_size, H] of a causal LM; logits come from ``vocab_parallel_logits``.

    Not a ``Linear``: the logits use ``weight`` (or its oneDNN copy, ``pack_for_logits``) directly.
    """

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Not an embedding lookup: the model multiplies hidden states by ``weight``."""
        raise RuntimeError("ParallelLMHead has no forward; use its weight in the model's compute_logits.")


def vocab_parallel_logits(hidden: torch.Tensor, head: VocabParallelEmbedding) -> torch.Tensor:
    """hidden: [N, H] -> logits [N, V] float32 over the whole vocabulary, on every rank.

    Each rank computes its shard [N, padded V / tp]; the shards are all-gathered along the vocabulary and the
    padding columns dropped. ``head``: the LM head, or the embedding when tied; its blocked copy is used
    when it holds one (``pack_for_logits``) and ``hidden`` has the weight's dtype.
    """
    packed = head.packed_logits_weight
    if packed is not None and hidden.dtype == head.weight.dtype and not torch.is_grad_enabled():
        logits = packed_matmul(hidden, packed)  # [N, padded V / tp]
    else:
        logits = F.linear(hidden, head.weight)  # [N, padded V / tp]
    if head.tp_size > 1:
        logits = tensor_model_parallel_all_gather(logits, dim=-1)[:, : head.num_embeddings].contiguous()
    return logits.float()
