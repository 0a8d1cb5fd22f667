"""Models: Phi-3 / Phi-3.5 / Phi-4-mini for causal LM (model runner -> Phi3ForCausalLM -> shared decoder blocks).

The Llama architecture with Phi-3's switches, all read from the config: no biases; checkpoints store q/k/v and
gate/up already fused (``self_attn.qkv_proj``, ``mlp.gate_up_proj``, rows [q; k; v] and [gate; up]), which the
fused layers' weight loaders take whole (split per tensor-parallel rank); LongRoPE (``rope_type`` "longrope",
"su" in early configs) with its per-request choice of short or long factors; ``partial_rotary_factor``
(Phi-4-mini: 0.75); ``sliding_window`` on every layer (Phi-3-mini-4k: 2047), as HF's Phi3 applies it.
"""

from __future__ import annotations

import torch

from sglkit.core.forward_batch import ForwardBatch
from sglkit.core.model_config import ModelConfig
from sglkit.layers.rotary import LongRopeRotaryEmbedding
from sglkit.models.blocks import DecoderLayer, DecoderModel, DecoderOptions
from sglkit.models.llama import LlamaForCausalLM

__all__ = ["Phi3DecoderModel", "Phi3ForCausalLM", "token_seq_lens"]


def token_seq_lens(forward_batch: ForwardBatch) -> torch.Tensor:
    """[T] int64: for each packed token, its request's total length after this pass (``seq_lens`` per token)."""
    if forward_batch.forward_mode.is_decode():
        return forward_batch.seq_lens  # one token per request
    seq_lens = forward_batch.seq_lens
    repeats = torch.tensor(forward_batch.extend_seq_lens_cpu, dtype=torch.int64, device=seq_lens.device)
    return torch.repeat_interleave(seq_lens, repeats, output_size=forward_batch.num_tokens)


class Phi3DecoderModel(DecoderModel):
    """``DecoderModel`` whose tokens read the rotary cache row ``rotary_emb.cache_rows`` picks for them.

    For LongRoPE that row depends on the token's request length (HF: long factors for every position once the
    sequence is longer than ``original_max_position_embeddings``); for other rope types it is the position.
    """

    def __init__(
        self,
        config: ModelConfig,
        options: DecoderOptions,
        dtype: torch.dtype | None = None,
        layer_cls: type[DecoderLayer] = DecoderLayer,
    ) -> None:
        super().__init__(config, options, dtype, layer_cls)
        self.rotary_emb.uses_cache_rows = True  # LongRoPE refuses raw positions without this

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: ForwardBatch
    ) -> torch.Tensor:
        """input_ids, positions: [T] -> final hidden states [T, H]; layers receive cache rows as positions."""
        if isinstance(self.rotary_emb, LongRopeRotaryEmbedding):
            positions = self.rotary_emb.cache_rows(positions, token_seq_lens(forward_batch))
        return super().forward(input_ids, positions, forward_batch)


class Phi3ForCausalLM(LlamaForCausalLM):
    """Phi-3 family: no q/k/v, o or MLP bias; fused checkpoint tensors load as is (HF names already match).

    Separate ``q_proj`` / ``gate_proj`` ... names (converted checkpoints) also load, through ``STACKED_PARAMS``.
    """

    decoder_model_cls = Phi3DecoderModel

    @classmethod
    def decoder_options(cls, config: ModelConfig) -> DecoderOptions:
        """Phi-3: the Llama defaults (RMSNorm with the config's eps, no biases, no q/k norm)."""
        return DecoderOptions()
