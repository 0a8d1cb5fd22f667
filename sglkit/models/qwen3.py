"""Models: Qwen3 for causal LM — the Llama architecture with per-head RMSNorm on q and k before rotary."""

from __future__ import annotations

from sglkit.models.llama import AttentionOptions, LlamaForCausalLM

__all__ = ["Qwen3ForCausalLM"]


class Qwen3ForCausalLM(LlamaForCausalLM):
    """Qwen3 (dense): Llama blocks with q_norm/k_norm over head_dim; ``attention_bias`` as in the config."""

    @classmethod
    def attention_options(cls, config) -> AttentionOptions:
        """Per-head q/k norm; ``attention_bias`` applies to q/k/v and o."""
        bias = bool(getattr(config, "attention_bias", False))
        return AttentionOptions(qkv_bias=bias, o_bias=bias, qk_norm=True)
