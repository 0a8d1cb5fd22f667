"""Models: Qwen2-MoE and Qwen3-MoE for causal LM (model runner -> Qwen*MoeForCausalLM -> decoder blocks + MoE MLP).

Both put a sparse mixture of experts (``sglkit.layers.moe``) in the MLP of the layers that
``decoder_sparse_step`` selects (layer i is sparse when ``(i + 1) % decoder_sparse_step == 0``) and that
``mlp_only_layers`` does not list; the other layers (and all of them when ``num_experts`` is 0) keep a dense
gated MLP of ``intermediate_size``. Experts have ``moe_intermediate_size``; ``num_experts_per_tok`` are chosen
per token, their weights renormalised when ``norm_topk_prob`` and cast to the model dtype (as HF does).

- Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): q/k/v biases (``qkv_bias``, default on), and a dense shared expert
  (``shared_expert_intermediate_size``) added to every sparse block, scaled by sigmoid(``shared_expert_gate``).
- Qwen3-MoE (Qwen3-30B-A3B, 235B-A22B): per-head q/k RMSNorm as Qwen3, ``attention_bias``, no shared expert.

Checkpoints store ``mlp.gate`` and ``mlp.experts.{e}.gate_proj / up_proj / down_proj``; HF transformers 5's
stacked in-memory names (``mlp.experts.gate_up_proj`` / ``down_proj``) load too. ``output_router_logits`` and
``router_aux_loss_coef`` act only in training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sglkit.core.model_config import ModelConfig
from sglkit.layers.linear import Linear
from sglkit.layers.moe import SparseMoeBlock, expert_stacked_params, rename_fused_experts
from sglkit.models.blocks import AttentionOptions, DecoderLayer, DecoderOptions, GatedMLP
from sglkit.models.llama import STACKED_PARAMS, LlamaForCausalLM
from sglkit.models.mixtral import moe_config_value
from sglkit.models.weight_utils import StackedParam

__all__ = [
    "QWEN_MOE_STACKED_PARAMS",
    "Qwen2MoeDecoderLayer",
    "Qwen2MoeForCausalLM",
    "Qwen2MoeSparseMoeBlock",
    "QwenMoeDecoderLayer",
    "Qwen3MoeForCausalLM",
    "is_sparse_layer",
]

# Per-expert checkpoint tensors into the stacked experts (before Llama's gate_proj / up_proj rows, which the
# dense layers and the shared expert use), then q/k/v and gate/up.
QWEN_MOE_STACKED_PARAMS: tuple[StackedParam, ...] = (
    expert_stacked_params("gate_proj", "down_proj", "up_proj") + STACKED_PARAMS
)


def is_sparse_layer(config: ModelConfig, layer_id: int) -> bool:
    """Whether layer ``layer_id`` has the MoE block (HF's rule), else a dense MLP; ValueError for a bad step."""
    hf = config.hf_config
    num_experts = int(getattr(hf, "num_experts", 0) or 0)
    step = int(getattr(hf, "decoder_sparse_step", 1) or 0)
    if num_experts > 0 and step <= 0:
        raise ValueError(f"decoder_sparse_step must be a positive integer, not {step}.")
    mlp_only_layers = getattr(hf, "mlp_only_layers", None) or ()
    return layer_id not in mlp_only_layers and num_experts > 0 and (layer_id + 1) % step == 0


class Qwen2MoeSparseMoeBlock(SparseMoeBlock):
    """The routed experts plus a dense shared expert for every token, gated by sigmoid(shared_expert_gate(x)).

    With tensor parallelism both are partial sums over this rank's intermediate share (the gates are
    replicated), added before the block's single all-reduce.
    """

    def __init__(self, shared_expert_intermediate_size: int, **moe_kwargs) -> None:
        super().__init__(**moe_kwargs)
        hidden, dtype = moe_kwargs["hidden_size"], moe_kwargs.get("dtype")
        act = moe_kwargs.get("hidden_act", "silu")
        self.shared_expert = GatedMLP(
            hidden, shared_expert_intermediate_size, act, bias=False, dtype=dtype, reduce_results=False
        )
        self.shared_expert_gate = Linear(hidden, 1, bias=False, dtype=dtype)

    def forward_partial(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [T, H] -> routed experts [T, H] + sigmoid(gate [T, 1]) * shared expert [T, H] (this rank's part)."""
        routed = super().forward_partial(hidden)
        shared = F.sigmoid(self.shared_expert_gate(hidden)) * self.shared_expert(hidden)
        return routed + shared


class QwenMoeDecoderLayer(DecoderLayer):
    """A Qwen-MoE decoder layer (Qwen3-MoE's as is): the sparse MoE block on the layers ``is_sparse_layer`` selects."""

    def build_mlp(
        self, config: ModelConfig, layer_id: int, options: DecoderOptions, dtype: torch.dtype | None
    ) -> nn.Module:
        """The MoE block on sparse layers; the dense gated MLP of ``intermediate_size`` on the others."""
        if not is_sparse_layer(config, layer_id):
            return super().build_mlp(config, layer_id, options, dtype)
        return self.moe_block_cls()(**self.moe_kwargs(config, dtype))

    def moe_block_cls(self) -> type[SparseMoeBlock]:
        """The class of the sparse block (Qwen2-MoE adds the shared expert)."""
        return SparseMoeBlock

    def moe_kwargs(self, config: ModelConfig, dtype: torch.dtype | None) -> dict:
        """Constructor arguments of the sparse block, from the config."""
        return dict(
            num_experts=int(moe_config_value(config, "num_experts")),
            top_k=int(moe_config_value(config, "num_experts_per_tok")),
            hidden_size=config.hidden_size,
            intermediate_size=int(moe_config_value(config, "moe_intermediate_size")),
            hidden_act=config.hidden_act,
            renormalize=bool(getattr(config.hf_config, "norm_topk_prob", False)),
            weights_in_input_dtype=True,  # HF Qwen-MoE casts the routing weights to the router's dtype
            dtype=dtype,
        )


class Qwen2MoeDecoderLayer(QwenMoeDecoderLayer):
    """Qwen2-MoE's layer: the sparse block carries a shared expert."""

    def moe_block_cls(self) -> type[SparseMoeBlock]:
        """``Qwen2MoeSparseMoeBlock``."""
        return Qwen2MoeSparseMoeBlock

    def moe_kwargs(self, config: ModelConfig, dtype: torch.dtype | None) -> dict:
        """The routed experts' arguments plus ``shared_expert_intermediate_size``."""
        shared = int(moe_config_value(config, "shared_expert_intermediate_size"))
        return dict(super().moe_kwargs(config, dtype), shared_expert_intermediate_size=shared)


class _QwenMoeNames(LlamaForCausalLM):
    """The checkpoint-name rules both Qwen-MoE families share."""

    stacked_params = QWEN_MOE_STACKED_PARAMS

    def checkpoint_name(self, name: str) -> str | None:
        """HF 5's stacked expert names -> ours; then Llama's rules."""
        return super().checkpoint_name(rename_fused_experts(name))


class Qwen2MoeForCausalLM(_QwenMoeNames):
    """Qwen2-MoE: q/k/v biases (``qkv_bias``), MoE layers with a shared expert, dense ones per the config."""

    decoder_layer_cls = Qwen2MoeDecoderLayer

    @classmethod
    def decoder_options(cls, config: ModelConfig) -> DecoderOptions:
        """q/k/v biases unless the config sets ``qkv_bias`` false; never an output or MLP bias."""
        qkv_bias = bool(getattr(config.hf_config, "qkv_bias", True))
        return DecoderOptions(attention=AttentionOptions(qkv_bias=qkv_bias, o_bias=False))


class Qwen3MoeForCausalLM(_QwenMoeNames):
    """Qwen3-MoE: per-head q/k norm, ``attention_bias`` on q/k/v and o, MoE layers without a shared expert."""

    decoder_layer_cls = QwenMoeDecoderLayer

    @classmethod
    def decoder_options(cls, config: ModelConfig) -> DecoderOptions:
        """Per-head q/k norm; ``attention_bias`` applies to q/k/v and o."""
        bias = bool(getattr(config.hf_config, "attention_bias", False))
        return DecoderOptions(attention=AttentionOptions(qkv_bias=bias, o_bias=bias, qk_norm=True))
