"""Models: Llama-family decoders served as embedders and reward/classification models (embedding runner -> here).

The decoder stack is ``sglkit.models.llama``'s (same paged-KV attention); what differs is the end of the pass:

- ``LlamaEmbeddingModel`` (``LlamaForCausalLM``, ``LlamaModel``, ``MistralModel``, ... with ``--is-embedding``):
  the last token's final hidden state, L2-normalized (gte-Qwen2, e5-mistral). No LM head is built; an
  ``lm_head.weight`` in the checkpoint is skipped.
- ``LlamaForSequenceClassification`` (reward models such as Skywork-Reward): the ``score`` head
  ([num_labels, H], no bias) on the last token's hidden state; the raw logits, not normalized.

Base-model checkpoints (``LlamaModel``, ``Qwen2Model``) name tensors without the ``model.`` prefix; it is added.
Qwen2/Qwen3 variants only change the attention options, as their causal-LM classes do.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from sglkit.core.forward_batch import ForwardBatch
from sglkit.layers.linear import Linear
from sglkit.layers.pooler import Pooler, PoolingType
from sglkit.models.llama import AttentionOptions, LlamaForCausalLM
from sglkit.models.qwen2 import Qwen2ForCausalLM
from sglkit.models.qwen3 import Qwen3ForCausalLM

__all__ = [
    "LlamaEmbeddingModel",
    "Qwen2EmbeddingModel",
    "Qwen3EmbeddingModel",
    "LlamaForSequenceClassification",
    "Qwen2ForSequenceClassification",
]

_HEAD_PREFIXES = ("model.", "score.")


class LlamaEmbeddingModel(LlamaForCausalLM):
    """A Llama decoder whose output is the pooled (last-token, L2-normalized) final hidden state."""

    def __init__(self, config, dtype: torch.dtype | None = None) -> None:
        super().__init__(config, dtype)
        if hasattr(self, "lm_head"):
            del self.lm_head  # never used for embeddings: no memory, no checkpoint tensor required
        self.pooler = Pooler(PoolingType.LAST, normalize=True)

    def pool(self, hidden: torch.Tensor, forward_batch: ForwardBatch) -> torch.Tensor:
        """hidden: [T, H] packed -> [B, H] one vector per sequence."""
        return self.pooler(hidden, forward_batch.seq_lens)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Not available: an embedding model has no LM head."""
        raise RuntimeError(f"{type(self).__name__} is an embedding model; it computes no logits.")

    @staticmethod
    def _checkpoint_names(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        """Drop the LM head; add ``model.`` to base-model names."""
        for name, tensor in weights:
            if name.startswith("lm_head."):
                continue
            yield (name if name.startswith(_HEAD_PREFIXES) else "model." + name), tensor

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load a causal-LM, base-model or sequence-classification checkpoint (see the module docstring)."""
        super().load_weights(self._checkpoint_names(weights))


class Qwen2EmbeddingModel(LlamaEmbeddingModel):
    """Qwen2 decoder as an embedder (gte-Qwen2): q/k/v biases."""

    @classmethod
    def attention_options(cls, config) -> AttentionOptions:
        """Qwen2's attention options."""
        return Qwen2ForCausalLM.attention_options(config)


class Qwen3EmbeddingModel(LlamaEmbeddingModel):
    """Qwen3 decoder as an embedder (Qwen3-Embedding): per-head q/k norm."""

    @classmethod
    def attention_options(cls, config) -> AttentionOptions:
        """Qwen3's attention options."""
        return Qwen3ForCausalLM.attention_options(config)


class LlamaForSequenceClassification(LlamaEmbeddingModel):
    """Llama decoder + ``score`` head on the last token: [B, num_labels] logits (rewards when num_labels == 1)."""

    def __init__(self, config, dtype: torch.dtype | None = None) -> None:
        super().__init__(config, dtype)
        self.score = Linear(config.hidden_size, config.num_labels, bias=False, dtype=self.dtype)
        self.pooler = Pooler(PoolingType.LAST, normalize=False)

    def pool(self, hidden: torch.Tensor, forward_batch: ForwardBatch) -> torch.Tensor:
        """hidden: [T, H] packed -> [B, num_labels] scores of each sequence's last token."""
        return self.score(self.pooler(hidden, forward_batch.seq_lens))


class Qwen2ForSequenceClassification(LlamaForSequenceClassification):
    """Qwen2 decoder + ``score`` head on the last token."""

    @classmethod
    def attention_options(cls, config) -> AttentionOptions:
        """Qwen2's attention options."""
        return Qwen2ForCausalLM.attention_options(config)
