"""Models: Mixtral for causal LM (model runner -> MixtralForCausalLM -> shared decoder blocks with an MoE MLP).

Mixtral is Mistral with every layer's MLP replaced by a sparse mixture of experts (``sglkit.layers.moe``):
``num_local_experts`` experts of ``intermediate_size``, ``num_experts_per_tok`` chosen per token, the chosen
weights always renormalised and kept in float32. Checkpoints name the block ``block_sparse_moe``
(``.gate``, ``.experts.{e}.w1`` gate / ``w2`` down / ``w3`` up); HF transformers 5's in-memory names
(``mlp.gate``, ``mlp.experts.gate_up_proj`` / ``down_proj`` stacked) load too.

``router_jitter_noise``, ``output_router_logits`` and ``router_aux_loss_coef`` act only in training (HF skips
them in eval), so they have no effect here. ``sliding_window`` applies to every layer, as in Mistral.
"""

from __future__ import annotations

import torch
from torch import nn

from sglkit.core.model_config import ModelConfig
from sglkit.layers.moe import SparseMoeBlock, expert_stacked_params, rename_fused_experts
from sglkit.models.blocks import AttentionOptions, DecoderLayer, DecoderOptions
from sglkit.models.llama import STACKED_PARAMS, LlamaForCausalLM
from sglkit.models.weight_utils import StackedParam

__all__ = ["MIXTRAL_STACKED_PARAMS", "MixtralDecoderLayer", "MixtralForCausalLM", "moe_config_value"]

# Per-expert checkpoint tensors into the stacked experts, then the attention's q/k/v.
MIXTRAL_STACKED_PARAMS: tuple[StackedParam, ...] = expert_stacked_params("w1", "w2", "w3") + STACKED_PARAMS


def moe_config_value(config: ModelConfig, name: str) -> object:
    """``config.hf_config.<name>``; ValueError when the config lacks it (an MoE model needs its expert sizes)."""
    value = getattr(config.hf_config, name, None)
    if value is None:
        raise ValueError(f"{config.architectures or 'This MoE model'}: the config must set {name!r}.")
    return value


class MixtralDecoderLayer(DecoderLayer):
    """A Mistral decoder layer whose MLP is a ``SparseMoeBlock`` (router + experts)."""

    def build_mlp(
        self, config: ModelConfig, layer_id: int, options: DecoderOptions, dtype: torch.dtype | None
    ) -> nn.Module:
        """The sparse MoE block: top-k of ``num_local_experts`` experts of ``intermediate_size``, renormalised."""
        return SparseMoeBlock(
            num_experts=int(moe_config_value(config, "num_local_experts")),
            top_k=int(moe_config_value(config, "num_experts_per_tok")),
            hidden_size=config.hidden_size,
            intermediate_size=int(moe_config_value(config, "intermediate_size")),
            hidden_act=config.hidden_act,
            renormalize=True,
            weights_in_input_dtype=False,  # HF Mixtral scales the expert outputs by float32 weights
            dtype=dtype,
        )


class MixtralForCausalLM(LlamaForCausalLM):
    """Mixtral 8x7B / 8x22B: Mistral attention (no biases), a sparse MoE MLP in every layer."""

    stacked_params = MIXTRAL_STACKED_PARAMS
    decoder_layer_cls = MixtralDecoderLayer

    @classmethod
    def decoder_options(cls, config: ModelConfig) -> DecoderOptions:
        """No biases anywhere, no q/k norm."""
        return DecoderOptions(attention=AttentionOptions(qkv_bias=False, o_bias=False))

    def checkpoint_name(self, name: str) -> str | None:
        """``block_sparse_moe`` (checkpoints) -> ``mlp``; HF 5's stacked expert names -> ours; then Llama's rules."""
        name = rename_fused_experts(name.replace(".block_sparse_moe.", ".mlp."))
        return super().checkpoint_name(name)
