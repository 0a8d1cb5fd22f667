"""Models: OLMo 2 for causal LM (model runner -> Olmo2ForCausalLM -> DecoderModel -> post-norm layers).

OLMo 2 in terms of the shared blocks, each point as HF transformers computes it:

- norms only after the sublayers (``PostNormDecoderLayer`` with ``pre_norms=False``): ``post_attention_layernorm``
  and ``post_feedforward_layernorm``, no input norm; the stack's final ``norm`` as Llama;
- q/k RMSNorm over the full projected width (``q_norm`` over num_heads * head_dim, ``k_norm`` over
  num_kv_heads * head_dim), applied before the split into heads (``Olmo2Attention``); with tensor parallelism
  each rank holds its heads' share of the width and the mean of squares is all-reduced (``ShardedRMSNorm``),
  so it still covers every head exactly (replicated KV heads counted once);
- RMSNorm weight multiplied in float32 before the cast (``Float32WeightRMSNorm``), and rotary applied in float32
  (HF keeps OLMo 2's cos/sin in float32 and casts q/k back afterwards);
- SwiGLU MLP, ``attention_bias`` on q/k/v and o, Llama's rope types.
"""

from __future__ import annotations

import torch

from sglkit.core.model_config import ModelConfig
from sglkit.layers.norm import Float32WeightRMSNorm, RMSNorm, ShardedRMSNorm
from sglkit.layers.rotary import RotaryEmbedding
from sglkit.models.blocks import AttentionBlock, AttentionOptions, DecoderOptions, NormFactory
from sglkit.models.llama import LlamaForCausalLM
from sglkit.models.post_norm_blocks import PostNormDecoderLayer, PostNormOptions

__all__ = ["Olmo2Attention", "Olmo2ForCausalLM"]


class Olmo2Attention(AttentionBlock):
    """Attention with q/k norms over all heads' width (before the split into heads) and float32 rotary.

    The q/k norms are ``ShardedRMSNorm`` (OLMo 2's float32 weight multiply) over this rank's heads, their
    statistics taken over all ranks' heads.
    """

    def __init__(
        self,
        config: ModelConfig,
        layer_id: int,
        rotary_emb: RotaryEmbedding,
        options: AttentionOptions = AttentionOptions(),
        dtype: torch.dtype | None = None,
        norm_cls: NormFactory = RMSNorm,
        norm_eps: float | None = None,
    ) -> None:
        if options.qk_norm:
            raise ValueError(
                "Olmo2Attention normalises q/k over the full width; per-head qk_norm must be off."
            )
        super().__init__(config, layer_id, rotary_emb, options, dtype, norm_cls, norm_eps)
        eps = config.rms_norm_eps if norm_eps is None else norm_eps
        qkv = self.qkv_proj
        tp_rank, tp_size, replicas = qkv.tp_rank, qkv.tp_size, qkv.num_kv_replicas
        self.q_norm = ShardedRMSNorm(self.q_size, eps, dtype, tp_rank, tp_size, tp_size)
        self.k_norm = ShardedRMSNorm(
            self.kv_size, eps, dtype, tp_rank // replicas, tp_size // replicas, tp_size
        )

    def prepare_qk(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q: [T, Hq*D], k: [T, Hkv*D] -> (q [T, Hq, D], k [T, Hkv, D]): norms over all heads at once, then the
        split into heads, then rotary in float32 (cast back to the input dtype)."""
        num_tokens = q.shape[0]
        q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        q32, k32 = self.rotary_emb(positions, q.float(), k.float())
        return q32.to(q.dtype), k32.to(k.dtype)


class Olmo2ForCausalLM(LlamaForCausalLM):
    """OLMo 2 (see the module docstring)."""

    decoder_layer_cls = PostNormDecoderLayer

    @classmethod
    def decoder_options(cls, config: ModelConfig) -> DecoderOptions:
        """Post-norms only, full-width q/k norm; ``attention_bias`` applies to q/k/v and o."""
        bias = bool(getattr(config.hf_config, "attention_bias", False))
        return PostNormOptions(
            attention=AttentionOptions(qkv_bias=bias, o_bias=bias),
            norm_cls=Float32WeightRMSNorm,
            pre_norms=False,
            attention_cls=Olmo2Attention,
        )
