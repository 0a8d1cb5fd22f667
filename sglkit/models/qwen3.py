"""Models: Qwen3 for causal LM — the shared decoder blocks with per-head RMSNorm on q and k before rotary."""

from __future__ import annotations

from sglkit.core.model_config import ModelConfig
from sglkit.models.blocks import AttentionOptions, DecoderOptions
from sglkit.models.llama import LlamaForCausalLM

__all__ = ["Qwen3ForCausalLM"]


class Qwen3ForCausalLM(LlamaForCausalLM):
    """Qwen3 (dense): q_norm/k_norm over head_dim; ``attention_bias`` as in the config."""

    @classmethod
    def decoder_options(cls, config: ModelConfig) -> DecoderOptions:
        """Per-head q/k norm; ``attention_bias`` applies to q/k/v and o."""
        bias = bool(getattr(config.hf_config, "attention_bias", False))
        return DecoderOptions(attention=AttentionOptions(qkv_bias=bias, o_bias=bias, qk_norm=True))
