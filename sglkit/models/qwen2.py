"""Models: Qwen2 for causal LM — the Llama architecture with biases on the q/k/v projections."""

from __future__ import annotations

from sglkit.models.llama import AttentionOptions, LlamaForCausalLM

__all__ = ["Qwen2ForCausalLM"]


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2: Llama blocks with q/k/v bias (no o_proj bias)."""

    @classmethod
    def attention_options(cls, config) -> AttentionOptions:
        """Qwen2 always has q/k/v biases and never an output bias."""
        return AttentionOptions(qkv_bias=True, o_bias=False, qk_norm=False)
