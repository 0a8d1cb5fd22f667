"""Models: Llama and Mistral for causal LM (model runner -> LlamaForCausalLM -> shared decoder blocks).

``LlamaForCausalLM`` is the decoder-only LM of the Llama family: ``DecoderModel`` (the ``model.`` prefix of HF
checkpoints: embedding, layers, final norm) plus the LM head, ``compute_logits`` and ``load_weights``. Other
families (Mistral, Qwen2, Qwen3) subclass it and only state their ``decoder_options``; HF names are mapped by
``STACKED_PARAMS`` and loaded by ``sglkit.models.weight_utils.load_weights``. Families whose structure differs
set ``decoder_model_cls`` / ``decoder_layer_cls``. Mistral's ``sliding_window`` is applied by the attention of
each layer (``ModelConfig.layer_sliding_window``); requests may be longer than the window.

Constructors take a transformers config or an already-normalised ``ModelConfig``; sizes are read from the
``ModelConfig`` (``model.model_config``), and ``model.config`` stays the HF config.

Tensor parallelism needs no plumbing here: built after ``sglkit.parallel.initialize_model_parallel``, every
layer holds this rank's share (heads, intermediate dim, vocabulary rows), the row-parallel projections and the
embedding all-reduce, and ``compute_logits`` all-gathers the vocabulary shards, so each rank returns the full
[N, V] logits. ``num_kv_heads_per_rank`` is what this rank's KV pool must hold.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from sglkit.core.forward_batch import ForwardBatch
from sglkit.core.model_config import ModelConfig
from sglkit.layers.embedding import ParallelLMHead, VocabParallelEmbedding, vocab_parallel_logits
from sglkit.models.blocks import AttentionOptions, DecoderLayer, DecoderModel, DecoderOptions
from sglkit.models.weight_utils import StackedParam, load_weights

__all__ = ["LlamaForCausalLM", "MistralForCausalLM", "STACKED_PARAMS"]

# HF checkpoint modules -> shards of our fused ones (see sglkit.models.weight_utils).
STACKED_PARAMS: tuple[StackedParam, ...] = (
    ("qkv_proj", "q_proj", "q"),
    ("qkv_proj", "k_proj", "k"),
    ("qkv_proj", "v_proj", "v"),
    ("gate_up_proj", "gate_proj", 0),
    ("gate_up_proj", "up_proj", 1),
)
# Buffers some checkpoints carry that are recomputed here.
ROTARY_BUFFER_SUFFIXES = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")


class LlamaForCausalLM(nn.Module):
    """Llama 2 / 3 / 3.1 (default, linear, llama3 rope) with an LM head; the base of the other decoder families.

    ``forward`` returns hidden states; ``compute_logits`` maps them to the vocab.
    """

    stacked_params: tuple[StackedParam, ...] = STACKED_PARAMS
    decoder_model_cls: type[DecoderModel] = DecoderModel
    decoder_layer_cls: type[DecoderLayer] = DecoderLayer
    # False for embedding variants (no head, and an lm_head.weight in the checkpoint is skipped).
    has_lm_head = True

    def __init__(self, config: Any, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        model_config = ModelConfig.from_hf(config)
        self.model_config = model_config
        self.config = model_config.hf_config if model_config.hf_config is not None else model_config
        self.dtype = dtype or torch.get_default_dtype()
        self.tie_word_embeddings = model_config.tie_word_embeddings
        # Attention window of the checkpoint (Mistral); None = full attention. Applied per layer by attention.
        self.sliding_window: int | None = model_config.sliding_window
        self.model = self.decoder_model_cls(
            model_config, self.decoder_options(model_config), self.dtype, self.decoder_layer_cls
        )
        if self.has_lm_head and not self.tie_word_embeddings:
            self.lm_head = ParallelLMHead(model_config.vocab_size, model_config.hidden_size, dtype=self.dtype)

    @classmethod
    def decoder_options(cls, config: ModelConfig) -> DecoderOptions:
        """Llama: ``attention_bias`` applies to q/k/v and o, ``mlp_bias`` to gate/up and down; no q/k norm.

        Subclasses (other families) override this and nothing else.
        """
        bias = bool(getattr(config.hf_config, "attention_bias", False))
        return DecoderOptions(
            attention=AttentionOptions(qkv_bias=bias, o_bias=bias),
            mlp_bias=bool(getattr(config.hf_config, "mlp_bias", False)),
        )

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: ForwardBatch
    ) -> torch.Tensor:
        """input_ids, positions: [T] (packed) -> hidden states [T, H]."""
        return self.model(input_ids, positions, forward_batch)

    @property
    def logits_head(self) -> VocabParallelEmbedding:
        """The output projection's module: the LM head, or the embedding when tied (this rank's vocab rows)."""
        return self.model.embed_tokens if self.tie_word_embeddings else self.lm_head

    @property
    def lm_head_weight(self) -> torch.Tensor:
        """[V / tp (padded), H] output projection of this rank (the embedding matrix when tied)."""
        return self.logits_head.weight

    @property
    def num_kv_heads_per_rank(self) -> int:
        """KV heads this rank's attention (and KV pool) holds: its QKV projection's (replicated ones count 1)."""
        return self.model.layers[0].self_attn.num_kv_heads

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, H] -> logits [N, V] float32 (all ranks' vocabulary shards gathered)."""
        return vocab_parallel_logits(hidden, self.logits_head)

    def checkpoint_name(self, name: str) -> str | None:
        """A checkpoint tensor's name in this model, or None to skip it (rotary buffers, a tied LM head)."""
        if name.endswith(ROTARY_BUFFER_SUFFIXES):
            return None
        if name == "lm_head.weight" and not hasattr(self, "lm_head"):
            return None
        return name

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named (or our own fused) tensors; see ``sglkit.models.weight_utils.load_weights``."""
        load_weights(self, weights, self.stacked_params, rename=self.checkpoint_name)


class MistralForCausalLM(LlamaForCausalLM):
    """Mistral: the Llama architecture, with the config's ``sliding_window`` (if set) on every layer."""
