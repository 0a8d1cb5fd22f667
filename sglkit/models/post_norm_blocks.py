"""Models: decoder layers with norms after the sublayers (DecoderModel -> PostNormDecoderLayer -> attention / MLP).

Gemma 2 / 3 wrap each sublayer in a "sandwich" of norms (``pre_norms=True``)::

    x = x + post_attention_layernorm(attn(input_layernorm(x)))
    x = x + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x)))

OLMo 2 norms only the sublayer outputs (``pre_norms=False``)::

    x = x + post_attention_layernorm(attn(x))
    x = x + post_feedforward_layernorm(mlp(x))

The layer keeps ``DecoderModel``'s calling convention (it returns the sublayer output and the residual stream, whose
sum is the layer output), so the shared stack, its final norm and ``build_mlp`` overrides work unchanged. Parameter
names follow HF (``input_layernorm``, ``post_attention_layernorm``, ``pre_feedforward_layernorm``,
``post_feedforward_layernorm``); the attention block class is a switch (OLMo 2 normalises q/k over all heads).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from sglkit.core.forward_batch import ForwardBatch
from sglkit.core.model_config import ModelConfig
from sglkit.layers.rotary import RotaryEmbedding
from sglkit.models.blocks import AttentionBlock, DecoderLayer, DecoderOptions

__all__ = ["PostNormDecoderLayer", "PostNormOptions"]


@dataclass(frozen=True)
class PostNormOptions(DecoderOptions):
    """``DecoderOptions`` plus the switches of the post-norm layer."""

    pre_norms: bool = True  # norms before the sublayers too (Gemma's sandwich); False: only after (OLMo 2)
    attention_cls: type[AttentionBlock] = AttentionBlock  # same constructor signature as AttentionBlock


class PostNormDecoderLayer(DecoderLayer):
    """Decoder layer with a norm on each sublayer's output, and optionally on its input (see the module docstring).

    Built directly rather than through ``DecoderLayer.__init__`` (whose norms are the pre-norm pair); inherits
    ``build_mlp``, so an MoE feed-forward plugs in the same way.
    """

    def __init__(
        self,
        config: ModelConfig,
        layer_id: int,
        rotary_emb: RotaryEmbedding,
        options: DecoderOptions = PostNormOptions(),
        dtype: torch.dtype | None = None,
    ) -> None:
        nn.Module.__init__(self)
        if not isinstance(options, PostNormOptions):
            options = PostNormOptions(**{f.name: getattr(options, f.name) for f in fields(DecoderOptions)})
        hidden, eps, norm_cls = config.hidden_size, options.eps(config), options.norm_cls
        self.pre_norms = options.pre_norms
        if self.pre_norms:
            self.input_layernorm = norm_cls(hidden, eps, dtype=dtype)
        self.self_attn = options.attention_cls(
            config, layer_id, rotary_emb, options.attention, dtype, norm_cls=norm_cls, norm_eps=eps
        )
        self.post_attention_layernorm = norm_cls(hidden, eps, dtype=dtype)
        if self.pre_norms:
            self.pre_feedforward_layernorm = norm_cls(hidden, eps, dtype=dtype)
        self.mlp = self.build_mlp(config, layer_id, options, dtype)
        self.post_feedforward_layernorm = norm_cls(hidden, eps, dtype=dtype)

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        forward_batch: ForwardBatch,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden, residual: [T, H] -> (normed mlp output [T, H], residual stream [T, H]); their sum is the output.

        ``residual`` is None for the first layer (``hidden`` is then the residual stream itself).
        """
        stream = hidden if residual is None else hidden + residual
        attn_in = self.input_layernorm(stream) if self.pre_norms else stream
        stream = stream + self.post_attention_layernorm(self.self_attn(positions, attn_in, forward_batch))
        mlp_in = self.pre_feedforward_layernorm(stream) if self.pre_norms else stream
        return self.post_feedforward_layernorm(self.mlp(mlp_in)), stream
