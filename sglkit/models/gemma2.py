"""Models: Gemma 2 for causal LM (model runner -> Gemma2ForCausalLM -> GemmaDecoderModel -> post-norm layers).

Gemma 2 in terms of the shared blocks, each point as HF transformers computes it:

- sandwich norms around attention and MLP (``PostNormDecoderLayer`` with ``pre_norms=True``);
- ``GemmaRMSNorm``: ``x * rsqrt(mean(x^2) + eps) * (1 + w)`` all in float32, then cast;
- the embedding times ``sqrt(hidden_size)``, the factor first rounded to the model dtype;
- attention scale ``query_pre_attn_scalar ** -0.5``; scores soft-capped by ``attn_logit_softcapping``
  (``RadixAttention.logit_cap``); logits soft-capped by ``final_logit_softcapping`` in ``compute_logits``;
- local (``sliding_window``) and global layers alternating as the config's ``layer_types`` say;
- GeGLU MLP with the config's ``hidden_activation`` (gelu tanh).

``GemmaDecoderModel`` also gives each layer type its own rotary embedding when the config has one rope per type
(Gemma 3, ``sglkit.models.gemma3``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sglkit.core.forward_batch import ForwardBatch
from sglkit.core.model_config import ModelConfig
from sglkit.layers.norm import GemmaRMSNorm
from sglkit.layers.rotary import get_rope
from sglkit.models.blocks import AttentionOptions, DecoderLayer, DecoderModel, DecoderOptions
from sglkit.models.llama import LlamaForCausalLM
from sglkit.models.post_norm_blocks import PostNormDecoderLayer, PostNormOptions

__all__ = ["Gemma2ForCausalLM", "GemmaDecoderModel", "embedding_scale"]


def embedding_scale(hidden_size: int, dtype: torch.dtype) -> float:
    """``sqrt(hidden_size)`` rounded to ``dtype``, as HF Gemma multiplies it (a float32 tensor cast to the dtype)."""
    return torch.tensor(hidden_size**0.5, dtype=torch.float32, device="cpu").to(dtype).item()


class GemmaDecoderModel(DecoderModel):
    """``DecoderModel`` with Gemma's scaled embedding, and one rotary embedding per layer type where the config
    gives one rope per type (Gemma 3's local and global layers); layers are ``PostNormDecoderLayer`` by default.
    """

    def __init__(
        self,
        config: ModelConfig,
        options: DecoderOptions,
        dtype: torch.dtype | None = None,
        layer_cls: type[DecoderLayer] = PostNormDecoderLayer,
    ) -> None:
        super().__init__(config, options, dtype, layer_cls)
        self.embed_scale = embedding_scale(config.hidden_size, dtype or torch.get_default_dtype())
        # Layer type -> its rotary embedding (the stack's own ``rotary_emb`` serves the full-attention layers).
        self.layer_type_rotary = nn.ModuleDict()
        if config.rope_parameters_by_layer_type is None:
            return
        for layer_id, layer in enumerate(self.layers):
            params = config.layer_rope_parameters(layer_id)
            if params == config.rope_parameters:
                continue
            layer_type = config.layer_types[layer_id] if config.layer_types else "full_attention"
            if layer_type not in self.layer_type_rotary:
                self.layer_type_rotary[layer_type] = get_rope(config.head_dim, config.context_len, params)
            layer.self_attn.rotary_emb = self.layer_type_rotary[layer_type]

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: ForwardBatch
    ) -> torch.Tensor:
        """input_ids, positions: [T] -> final hidden states [T, H]."""
        hidden = self.embed_tokens(input_ids) * self.embed_scale
        residual = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, forward_batch)
        hidden, _ = self.norm(hidden, residual)
        return hidden


def _positive_or_none(hf_config: Any, name: str) -> float | None:
    """A soft-cap of the config: None (off) or a positive float; ValueError otherwise."""
    value = getattr(hf_config, name, None)
    if value is None:
        return None
    if value <= 0:
        raise ValueError(f"{name} must be positive or null, not {value}.")
    return float(value)


def check_gemma_config(config: ModelConfig) -> None:
    """ValueError for Gemma 2 / 3 settings sglkit does not run (causal LM only; windows need ``layer_types``)."""
    hf_config = config.hf_config
    if getattr(hf_config, "use_bidirectional_attention", None):
        raise ValueError(
            "use_bidirectional_attention=True (a Gemma embedding model) is not supported: sglkit runs Gemma as a "
            "causal LM."
        )
    if config.sliding_window is not None and config.layer_types is None:
        raise ValueError(
            "This Gemma config has a sliding_window but no layer_types, so the local layers are unknown; "
            "load it with transformers >= 5 (which fills layer_types in)."
        )
    if getattr(hf_config, "query_pre_attn_scalar", None) is None:
        raise ValueError(
            "A Gemma config needs query_pre_attn_scalar (the attention scale is its -1/2 power)."
        )


class Gemma2ForCausalLM(LlamaForCausalLM):
    """Gemma 2 (see the module docstring); tied embeddings by default, an untied ``lm_head`` loads too."""

    decoder_model_cls = GemmaDecoderModel
    decoder_layer_cls = PostNormDecoderLayer
    qk_norm = False  # Gemma 3: per-head q/k norm
    attention_softcap = True  # Gemma 3: HF leaves attn_logit_softcapping unused

    def __init__(self, config: Any, dtype: torch.dtype | None = None) -> None:
        super().__init__(config, dtype)
        self.final_logit_softcapping = _positive_or_none(
            self.model_config.hf_config, "final_logit_softcapping"
        )

    @classmethod
    def decoder_options(cls, config: ModelConfig) -> DecoderOptions:
        """Gemma norms before and after each sublayer; attention scale, bias and soft-cap from the config."""
        check_gemma_config(config)
        hf_config = config.hf_config
        bias = bool(getattr(hf_config, "attention_bias", False))
        cap = _positive_or_none(hf_config, "attn_logit_softcapping") if cls.attention_softcap else None
        attention = AttentionOptions(
            qkv_bias=bias,
            o_bias=bias,
            qk_norm=cls.qk_norm,
            logit_cap=cap,
            scaling=hf_config.query_pre_attn_scalar**-0.5,
        )
        return PostNormOptions(attention=attention, norm_cls=GemmaRMSNorm, pre_norms=True)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, H] -> logits [N, V] float32, soft-capped: cap * tanh(logits / cap) when the config sets it."""
        logits = super().compute_logits(hidden)
        cap = self.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap
