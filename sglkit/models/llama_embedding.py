"""Models: Llama-family decoders served as embedders and reward/classification models (embedding runner -> here).

The decoder stack is ``sglkit.models.llama``'s (same paged-KV attention); what differs is the end of the pass:

- ``LlamaEmbeddingModel`` (``LlamaForCausalLM``, ``LlamaModel``, ``MistralModel``, ... with ``--is-embedding``):
  the last token's final hidden state, L2-normalized (gte-Qwen2, e5-mistral). No LM head is built; an
  ``lm_head.weight`` in the checkpoint is skipped.
- ``LlamaForSequenceClassification`` (reward models such as Skywork-Reward): the ``score`` head
  ([num_labels, H], no bias) on the last token's hidden state; the raw logits, not normalized.

Base-model checkpoints (``LlamaModel``, ``Qwen2Model``) name tensors without the ``model.`` prefix; it is added
by ``checkpoint_name`` before the shared loader applies the usual table. Qwen2/Qwen3 variants only change the
decoder options, as their causal-LM classes do.
"""

from __future__ import annotations

import torch

from sglkit.core.forward_batch import ForwardBatch
from sglkit.core.model_config import ModelConfig
from sglkit.layers.linear import Linear
from sglkit.layers.pooler import Pooler, PoolingType
from sglkit.models.blocks import DecoderOptions
from sglkit.models.llama import LlamaForCausalLM
from sglkit.models.qwen2 import Qwen2ForCausalLM
from sglkit.models.qwen3 import Qwen3ForCausalLM
from sglkit.parallel import get_tp_size

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

    has_lm_head = False  # never used for embeddings: no memory, no checkpoint tensor required

    def __init__(self, config, dtype: torch.dtype | None = None) -> None:
        if get_tp_size() > 1:
            raise ValueError(
                f"Embedding models do not support tensor parallelism (tp_size={get_tp_size()}); use tp_size=1."
            )
        super().__init__(config, dtype)
        self.pooler = Pooler(PoolingType.LAST, normalize=True)

    def pool(self, hidden: torch.Tensor, forward_batch: ForwardBatch) -> torch.Tensor:
        """hidden: [T, H] packed -> [B, H] one vector per sequence."""
        return self.pooler(hidden, forward_batch.seq_lens)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Not available: an embedding model has no LM head."""
        raise RuntimeError(f"{type(self).__name__} is an embedding model; it computes no logits.")

    def checkpoint_name(self, name: str) -> str | None:
        """Drop the LM head and rotary buffers; add ``model.`` to base-model names."""
        if name.startswith("lm_head."):
            return None
        return super().checkpoint_name(name if name.startswith(_HEAD_PREFIXES) else "model." + name)


class Qwen2EmbeddingModel(LlamaEmbeddingModel):
    """Qwen2 decoder as an embedder (gte-Qwen2): q/k/v biases."""

    @classmethod
    def decoder_options(cls, config: ModelConfig) -> DecoderOptions:
        """Qwen2's decoder options."""
        return Qwen2ForCausalLM.decoder_options(config)


class Qwen3EmbeddingModel(LlamaEmbeddingModel):
    """Qwen3 decoder as an embedder (Qwen3-Embedding): per-head q/k norm."""

    @classmethod
    def decoder_options(cls, config: ModelConfig) -> DecoderOptions:
        """Qwen3's decoder options."""
        return Qwen3ForCausalLM.decoder_options(config)


class LlamaForSequenceClassification(LlamaEmbeddingModel):
    """Llama decoder + ``score`` head on the last token: [B, num_labels] logits (rewards when num_labels == 1)."""

    def __init__(self, config, dtype: torch.dtype | None = None) -> None:
        super().__init__(config, dtype)
        self.score = Linear(
            self.model_config.hidden_size, self.config.num_labels, bias=False, dtype=self.dtype
        )
        self.pooler = Pooler(PoolingType.LAST, normalize=False)

    def pool(self, hidden: torch.Tensor, forward_batch: ForwardBatch) -> torch.Tensor:
        """hidden: [T, H] packed -> [B, num_labels] scores of each sequence's last token."""
        return self.score(self.pooler(hidden, forward_batch.seq_lens))


class Qwen2ForSequenceClassification(LlamaForSequenceClassification):
    """Qwen2 decoder + ``score`` head on the last token."""

    @classmethod
    def decoder_options(cls, config: ModelConfig) -> DecoderOptions:
        """Qwen2's decoder options."""
        return Qwen2ForCausalLM.decoder_options(config)
