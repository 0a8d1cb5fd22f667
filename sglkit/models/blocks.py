"""Models: the shared decoder blocks (causal LM -> DecoderModel -> DecoderLayer -> AttentionBlock / GatedMLP).

Families differ by switches, not by code: ``AttentionOptions`` (q/k/v and output biases, per-head q/k norm,
logit cap, scaling) and ``DecoderOptions`` (those, the MLP bias, and the norm class and eps). Sizes (heads,
KV heads, head_dim, intermediate size, activation) and each layer's sliding window come from the
``ModelConfig``. Where a family's structure differs (a mixture-of-experts MLP, norms after the sublayers), it
subclasses ``DecoderLayer`` (``build_mlp``, ``forward``) or ``DecoderModel`` and hands the class to the stack.

Tokens of all requests arrive packed along dim 0 ([T]); attention state lives in the KV pool, reached through
``RadixAttention`` and the ``ForwardBatch``. Parameter names follow HF Llama (``self_attn.qkv_proj``,
``mlp.gate_up_proj``, ``input_layernorm`` ...), with q/k/v and gate/up fused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from sglkit.core.forward_batch import ForwardBatch
from sglkit.core.model_config import ModelConfig
from sglkit.layers.activation import SiluAndMul, get_act_and_mul
from sglkit.layers.attention.base import RadixAttention
from sglkit.layers.embedding import VocabParallelEmbedding
from sglkit.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from sglkit.layers.norm import RMSNorm
from sglkit.layers.rotary import RotaryEmbedding, get_rope
from sglkit.models.cpu_decode_stack import CpuDecodeStack, StackLayer

__all__ = [
    "AttentionBlock",
    "AttentionOptions",
    "DecoderLayer",
    "DecoderModel",
    "DecoderOptions",
    "GatedMLP",
    "NormFactory",
]

# norm_cls(hidden_size, eps, dtype=dtype) -> a module with forward(x) -> y and forward(x, residual) -> (y, x + residual)
NormFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class AttentionOptions:
    """Per-architecture switches of the attention block."""

    qkv_bias: bool = False  # bias on the q/k/v projection
    o_bias: bool = False  # bias on the output projection
    qk_norm: bool = False  # per-head norm on q and k before rotary (Qwen3)
    logit_cap: float | None = None  # RadixAttention soft cap of the scores (None: none)
    scaling: float | None = None  # score scale (None: head_dim ** -0.5)


@dataclass(frozen=True)
class DecoderOptions:
    """Per-architecture switches of a decoder layer (and the final norm of the stack)."""

    attention: AttentionOptions = field(default_factory=AttentionOptions)
    mlp_bias: bool = False
    norm_cls: NormFactory = RMSNorm
    norm_eps: float | None = None  # None: the config's rms_norm_eps

    def eps(self, config: ModelConfig) -> float:
        """The norm eps: ``norm_eps`` when set, else ``config.rms_norm_eps``."""
        return config.rms_norm_eps if self.norm_eps is None else self.norm_eps


class GatedMLP(nn.Module):
    """Dense gated MLP: x -> down(act(gate(x)) * up(x)), gate/up fused; ``hidden_act`` silu, gelu, ...

    With tensor parallelism each rank holds a share of the intermediate dim and ``down_proj`` all-reduces;
    ``reduce_results=False`` returns this rank's partial sum instead (the caller reduces, e.g. with other sums).
    """

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        hidden_act: str = "silu",
        bias: bool = False,
        dtype: torch.dtype | None = None,
        reduce_results: bool = True,
    ) -> None:
        super().__init__()
        self.act_fn = get_act_and_mul(hidden_act)  # first: an unsupported activation fails before allocating
        self.gate_up_proj = MergedColumnParallelLinear(
            hidden_size, [intermediate_size, intermediate_size], bias=bias, dtype=dtype
        )
        self.down_proj = RowParallelLinear(
            intermediate_size, hidden_size, bias=bias, dtype=dtype, reduce_results=reduce_results
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, H] -> [T, H] (a partial sum over this rank's intermediate share if ``reduce_results`` is off)."""
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class AttentionBlock(nn.Module):
    """Self-attention: fused qkv -> optional per-head q/k norm -> rotary -> RadixAttention -> o_proj.

    The layer's sliding window is ``config.layer_sliding_window(layer_id)``.
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
        super().__init__()
        hidden, head_dim = config.hidden_size, config.head_dim
        self.qkv_proj = QKVParallelLinear(
            hidden,
            head_dim,
            config.num_attention_heads,
            config.num_key_value_heads,
            bias=options.qkv_bias,
            dtype=dtype,
        )
        # This rank's heads (all of them without tensor parallelism); o_proj takes this rank's q width and
        # all-reduces, so the block output is whole on every rank.
        self.num_heads = self.qkv_proj.num_heads
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.head_dim = head_dim
        self.q_size = self.qkv_proj.q_size
        self.kv_size = self.qkv_proj.kv_size
        self.o_proj = RowParallelLinear(config.q_size, hidden, bias=options.o_bias, dtype=dtype)
        self.qk_norm = options.qk_norm
        if self.qk_norm:
            eps = config.rms_norm_eps if norm_eps is None else norm_eps
            self.q_norm = norm_cls(head_dim, eps, dtype=dtype)
            self.k_norm = norm_cls(head_dim, eps, dtype=dtype)
        self.rotary_emb = rotary_emb  # shared by all layers
        scaling = head_dim**-0.5 if options.scaling is None else options.scaling
        self.attn = RadixAttention(
            layer_id,
            self.num_heads,
            self.num_kv_heads,
            head_dim,
            scaling,
            sliding_window=config.layer_sliding_window(layer_id),
            logit_cap=options.logit_cap,
        )

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, forward_batch: ForwardBatch
    ) -> torch.Tensor:
        """positions: [T], hidden: [T, H] -> [T, H]."""
        num_tokens = hidden.shape[0]
        q, k, v = self.qkv_proj(hidden).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.prepare_qk(positions, q, k)
        out = self.attn(q.reshape(num_tokens, -1), k.reshape(num_tokens, -1), v, forward_batch)
        return self.o_proj(out)

    def prepare_qk(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q: [T, Hq*D], k: [T, Hkv*D] -> (q [T, Hq, D], k [T, Hkv, D]): split into heads, per-head norm when
        ``qk_norm``, rotary. Families that normalise or rotate differently (OLMo 2) override this."""
        num_tokens = q.shape[0]
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return self.rotary_emb(positions, q, k)


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(.)), with the residual add fused into the norms."""

    def __init__(
        self,
        config: ModelConfig,
        layer_id: int,
        rotary_emb: RotaryEmbedding,
        options: DecoderOptions = DecoderOptions(),
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        hidden, eps, norm_cls = config.hidden_size, options.eps(config), options.norm_cls
        self.input_layernorm = norm_cls(hidden, eps, dtype=dtype)
        self.self_attn = AttentionBlock(
            config, layer_id, rotary_emb, options.attention, dtype, norm_cls=norm_cls, norm_eps=eps
        )
        self.post_attention_layernorm = norm_cls(hidden, eps, dtype=dtype)
        self.mlp = self.build_mlp(config, layer_id, options, dtype)

    def build_mlp(
        self, config: ModelConfig, layer_id: int, options: DecoderOptions, dtype: torch.dtype | None
    ) -> nn.Module:
        """The feed-forward sublayer ([T, H] -> [T, H]): a dense gated MLP; MoE families override this."""
        if config.intermediate_size is None:
            raise ValueError("A decoder layer needs the config's intermediate_size.")
        return GatedMLP(
            config.hidden_size, config.intermediate_size, config.hidden_act, options.mlp_bias, dtype
        )

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        forward_batch: ForwardBatch,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden, residual: [T, H] -> (mlp output [T, H], residual [T, H]); their sum is the layer output.

        ``residual`` is None for the first layer (its input is the residual stream itself).
        """
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, forward_batch)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual

    def decode_stack_parts(self) -> StackLayer:
        """This layer's parts for the CPU decode stack (``sglkit.models.cpu_decode_stack``); ValueError when the
        layer computes something else (a family's own forward or q/k preparation, an MLP other than the dense
        SiLU one)."""
        attn, mlp = self.self_attn, self.mlp
        if type(self).forward is not DecoderLayer.forward:
            raise ValueError(f"{type(self).__name__} has its own forward")
        if (
            type(attn).forward is not AttentionBlock.forward
            or type(attn).prepare_qk is not AttentionBlock.prepare_qk
        ):
            raise ValueError(f"{type(attn).__name__} prepares q/k its own way")
        if type(mlp).forward is not GatedMLP.forward:
            raise ValueError(f"a {type(mlp).__name__} MLP")
        if type(mlp.act_fn) is not SiluAndMul:
            raise ValueError(f"a {type(mlp.act_fn).__name__} activation")
        return StackLayer(
            input_norm=self.input_layernorm,
            qkv=attn.qkv_proj,
            o=attn.o_proj,
            post_norm=self.post_attention_layernorm,
            gate_up=mlp.gate_up_proj,
            down=mlp.down_proj,
            attn=attn.attn,
            rotary=attn.rotary_emb,
            intermediate_size=mlp.down_proj.in_features,
            q_norm=attn.q_norm if attn.qk_norm else None,
            k_norm=attn.k_norm if attn.qk_norm else None,
        )


class DecoderModel(nn.Module):
    """Token embedding, decoder layers, final norm (the ``model.`` prefix of HF checkpoints).

    ``layer_cls`` builds each layer (``DecoderLayer`` or a family's subclass with the same signature).
    """

    def __init__(
        self,
        config: ModelConfig,
        options: DecoderOptions,
        dtype: torch.dtype | None = None,
        layer_cls: type[DecoderLayer] = DecoderLayer,
    ) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, dtype=dtype)
        self.rotary_emb = get_rope(config.head_dim, config.context_len, config.rope_parameters)
        self.layers = nn.ModuleList(
            layer_cls(config, i, self.rotary_emb, options, dtype) for i in range(config.num_hidden_layers)
        )
        self.norm = options.norm_cls(config.hidden_size, options.eps(config), dtype=dtype)
        # CPU decode passes in one C++ call where every layer allows it (sglkit.models.cpu_decode_stack)
        self.cpu_decode_stack = CpuDecodeStack(self)

    def decode_stack_layers(self) -> list[StackLayer]:
        """Every layer's ``decode_stack_parts`` (ValueError naming the first layer that has none)."""
        parts = []
        for i, layer in enumerate(self.layers):
            if not hasattr(layer, "decode_stack_parts"):
                raise ValueError(f"layer {i} is a {type(layer).__name__}")
            try:
                parts.append(layer.decode_stack_parts())
            except ValueError as e:
                raise ValueError(f"layer {i}: {e}") from None
        return parts

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: ForwardBatch
    ) -> torch.Tensor:
        """input_ids, positions: [T] -> final hidden states [T, H]."""
        hidden = self.embed_tokens(input_ids)
        stacked = None
        if forward_batch.forward_mode.is_decode():
            stacked = self.cpu_decode_stack.run(hidden, positions, forward_batch)
        if stacked is not None:
            hidden, residual = stacked
        else:
            residual = None
            for layer in self.layers:
                hidden, residual = layer(positions, hidden, residual, forward_batch)
        hidden, _ = self.norm(hidden, residual)
        return hidden
