"""Models: Gemma 3 text for causal LM (model runner -> Gemma3ForCausalLM -> GemmaDecoderModel -> post-norm layers).

Gemma 3 (text-only, config class ``Gemma3TextConfig``, ``model_type`` "gemma3_text") is Gemma 2 plus:

- per-head q/k norm (``GemmaRMSNorm`` over head_dim) before rotary;
- one rope per layer type: local (sliding) layers use their own base (``rope_parameters["sliding_attention"]``
  in transformers 5, ``rope_local_base_freq`` before), global layers theirs, possibly linear-scaled;
- ``final_logit_softcapping`` is None by default (applied when set, as in HF);
- ``attn_logit_softcapping``: HF transformers' Gemma 3 attention never applies it, so neither does sglkit (a
  warning says so when a config sets it).

Local and global layers follow the config's ``layer_types`` (HF's default: five local layers, then one global).
"""

from __future__ import annotations

import logging

from sglkit.core.model_config import ModelConfig
from sglkit.models.blocks import DecoderOptions
from sglkit.models.gemma2 import Gemma2ForCausalLM

__all__ = ["Gemma3ForCausalLM"]

logger = logging.getLogger(__name__)


class Gemma3ForCausalLM(Gemma2ForCausalLM):
    """Gemma 3 text (see the module docstring); the multimodal ``Gemma3ForConditionalGeneration`` is not here."""

    qk_norm = True
    attention_softcap = False

    @classmethod
    def decoder_options(cls, config: ModelConfig) -> DecoderOptions:
        """Gemma 2's options with per-head q/k norm and no attention soft-cap."""
        cap = getattr(config.hf_config, "attn_logit_softcapping", None)
        if cap is not None:
            logger.warning(
                "Gemma 3 config sets attn_logit_softcapping=%s; HF transformers does not apply it in Gemma 3 "
                "attention, and neither does sglkit.",
                cap,
            )
        return super().decoder_options(config)
