"""Models: Qwen2 for causal LM — the shared decoder blocks with biases on the q/k/v projection."""

from __future__ import annotations

from sglkit.core.model_config import ModelConfig
from sglkit.models.blocks import AttentionOptions, DecoderOptions
from sglkit.models.llama import LlamaForCausalLM

__all__ = ["Qwen2ForCausalLM"]


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2: q/k/v bias, no o_proj bias, no MLP bias."""

    @classmethod
    def decoder_options(cls, config: ModelConfig) -> DecoderOptions:
        """Qwen2 always has q/k/v biases and never an output bias."""
        return DecoderOptions(attention=AttentionOptions(qkv_bias=True, o_bias=False))
