"""Models: Llama (and Mistral) for causal LM (model runner -> model.forward -> RadixAttention -> backend).

Tokens of all requests arrive packed along dim 0 ([T]); attention state lives in the KV pool, reached
through ``RadixAttention`` and the ``ForwardBatch``. q/k/v are fused into ``qkv_proj`` and gate/up into
``gate_up_proj``; ``load_weights`` maps HF checkpoint names onto those fused parameters.

Qwen2/Qwen3 reuse these classes through ``AttentionOptions`` (biases, per-head q/k norm).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sglkit.core.forward_batch import ForwardBatch
from sglkit.layers.activation import SiluAndMul
from sglkit.layers.attention.base import RadixAttention
from sglkit.layers.linear import Linear
from sglkit.layers.norm import RMSNorm
from sglkit.layers.rotary import RotaryEmbedding, get_rope

__all__ = ["AttentionOptions", "LlamaForCausalLM", "MistralForCausalLM"]

# (fused parameter, HF checkpoint part, shard id): q/k/v rows of qkv_proj, gate/up rows of gate_up_proj.
STACKED_PARAMS: tuple[tuple[str, str, str], ...] = (
    (".qkv_proj.", ".q_proj.", "q"),
    (".qkv_proj.", ".k_proj.", "k"),
    (".qkv_proj.", ".v_proj.", "v"),
    (".gate_up_proj.", ".gate_proj.", "gate"),
    (".gate_up_proj.", ".up_proj.", "up"),
)

# Buffers some checkpoints carry that are recomputed here.
_IGNORED_WEIGHT_SUFFIXES = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")


@dataclass(frozen=True)
class AttentionOptions:
    """Per-architecture switches of the attention block."""

    qkv_bias: bool = False  # bias on q/k/v projections
    o_bias: bool = False  # bias on the output projection
    qk_norm: bool = False  # per-head RMSNorm on q and k before rotary (Qwen3)


def _head_dim(config) -> int:
    """head_dim from the config (may differ from hidden_size // num_attention_heads)."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _num_kv_heads(config) -> int:
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


def _rope_parameters(config) -> dict:
    """The config's rope parameters (transformers 5 ``rope_parameters``; older rope_theta/rope_scaling accepted)."""
    params = getattr(config, "rope_parameters", None)
    if params:
        return dict(params)
    params = dict(getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return params


class LlamaMLP(nn.Module):
    """SwiGLU MLP: x -> down(silu(gate(x)) * up(x)) with gate/up fused."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool, hidden_act: str, dtype) -> None:
        super().__init__()
        if hidden_act != "silu":
            raise ValueError(f"Unsupported hidden_act {hidden_act!r}; sglkit's Llama MLP supports 'silu'.")
        self.gate_up_proj = Linear(hidden_size, 2 * intermediate_size, bias=bias, dtype=dtype)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=bias, dtype=dtype)
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, H] -> [T, H]."""
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class LlamaAttention(nn.Module):
    """Self-attention: fused qkv projection, optional q/k norm, rotary, paged attention, output projection."""

    def __init__(
        self, config, layer_id: int, rotary_emb: RotaryEmbedding, options: AttentionOptions, dtype
    ) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = _num_kv_heads(config)
        self.head_dim = _head_dim(config)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        hidden = config.hidden_size
        self.qkv_proj = Linear(hidden, self.q_size + 2 * self.kv_size, bias=options.qkv_bias, dtype=dtype)
        self.o_proj = Linear(self.q_size, hidden, bias=options.o_bias, dtype=dtype)
        self.qk_norm = options.qk_norm
        if self.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, dtype=dtype)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, dtype=dtype)
        self.rotary_emb = rotary_emb  # shared by all layers
        self.attn = RadixAttention(
            layer_id, self.num_heads, self.num_kv_heads, self.head_dim, self.head_dim**-0.5
        )

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, forward_batch: ForwardBatch
    ) -> torch.Tensor:
        """positions: [T], hidden: [T, H] -> [T, H]."""
        num_tokens = hidden.shape[0]
        q, k, v = self.qkv_proj(hidden).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary_emb(positions, q, k)
        out = self.attn(q.reshape(num_tokens, -1), k.reshape(num_tokens, -1), v, forward_batch)
        return self.o_proj(out)


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(.)), with the residual add fused into the norms."""

    def __init__(
        self, config, layer_id: int, rotary_emb: RotaryEmbedding, options: AttentionOptions, dtype
    ) -> None:
        super().__init__()
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps, dtype=dtype)
        self.self_attn = LlamaAttention(config, layer_id, rotary_emb, options, dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, dtype=dtype)
        self.mlp = LlamaMLP(
            config.hidden_size,
            config.intermediate_size,
            getattr(config, "mlp_bias", False),
            getattr(config, "hidden_act", "silu"),
            dtype,
        )

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        forward_batch: ForwardBatch,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden, residual: [T, H] -> (mlp output [T, H], residual [T, H]); the sum of the two is the layer output."""
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, forward_batch)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    """Embedding, decoder layers, final norm (the ``model.`` prefix of HF checkpoints)."""

    def __init__(self, config, options: AttentionOptions, dtype) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, dtype=dtype)
        self.rotary_emb = get_rope(
            _head_dim(config), config.max_position_embeddings, _rope_parameters(config)
        )
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, i, self.rotary_emb, options, dtype)
            for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dtype)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: ForwardBatch
    ) -> torch.Tensor:
        """input_ids, positions: [T] -> final hidden states [T, H]."""
        hidden = self.embed_tokens(input_ids)
        residual = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, forward_batch)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class LlamaForCausalLM(nn.Module):
    """Llama decoder with an LM head. ``forward`` returns hidden states; ``compute_logits`` maps them to the vocab."""

    def __init__(self, config, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dtype = dtype or torch.get_default_dtype()
        self.config = config
        self.dtype = dtype
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        # Attention window of the checkpoint (Mistral); None = full attention. The runner caps the context with it.
        self.sliding_window: int | None = getattr(config, "sliding_window", None)
        self.model = LlamaModel(config, self.attention_options(config), dtype)
        if not self.tie_word_embeddings:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False, dtype=dtype)

    @classmethod
    def attention_options(cls, config) -> AttentionOptions:
        """Llama: ``attention_bias`` applies to q/k/v and o; no q/k norm."""
        bias = bool(getattr(config, "attention_bias", False))
        return AttentionOptions(qkv_bias=bias, o_bias=bias, qk_norm=False)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: ForwardBatch
    ) -> torch.Tensor:
        """input_ids, positions: [T] (packed) -> hidden states [T, H]."""
        return self.model(input_ids, positions, forward_batch)

    @property
    def lm_head_weight(self) -> torch.Tensor:
        """[V, H] output projection (the embedding matrix when tied)."""
        return self.model.embed_tokens.weight if self.tie_word_embeddings else self.lm_head.weight

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, H] -> logits [N, V] float32."""
        return F.linear(hidden, self.lm_head_weight).float()

    def _shard_rows(self, shard: str) -> tuple[int, int]:
        """(start, length) of a checkpoint shard's rows inside a fused parameter."""
        attn = self.model.layers[0].self_attn
        q_size, kv_size, inter = attn.q_size, attn.kv_size, self.config.intermediate_size
        return {
            "q": (0, q_size),
            "k": (q_size, kv_size),
            "v": (q_size + kv_size, kv_size),
            "gate": (0, inter),
            "up": (inter, inter),
        }[shard]

    @staticmethod
    def _shards_of(param_name: str) -> list[str | None]:
        """Shard ids of a fused parameter name, or [None] for a plain one."""
        return [shard for fused, _, shard in STACKED_PARAMS if fused in param_name] or [None]

    def expected_weight_shards(self) -> set[tuple[str, str | None]]:
        """Every (parameter name, shard id or None) that a full checkpoint must provide."""
        return {(name, shard) for name, _ in self.named_parameters() for shard in self._shards_of(name)}

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named checkpoint tensors into the (fused) parameters.

        Raises ValueError for a name the model does not have or a parameter the checkpoint never provided,
        and torch's own RuntimeError ("The size of tensor a (64) must match the size of tensor b (96) ...")
        for a tensor of another size.
        """
        params = dict(self.named_parameters())
        loaded: set[tuple[str, str | None]] = set()
        for name, tensor in weights:
            if name.endswith(_IGNORED_WEIGHT_SUFFIXES):
                continue
            if self.tie_word_embeddings and name == "lm_head.weight":
                continue
            target, shard = name, None
            for fused, part, shard_id in STACKED_PARAMS:
                if part in name:
                    target, shard = name.replace(part, fused), shard_id
                    break
            param = params.get(target)
            if param is None:
                raise ValueError(
                    f"Unexpected weight {name!r} in checkpoint for {type(self).__name__} "
                    f"(hidden_size={self.config.hidden_size}, num_hidden_layers={self.config.num_hidden_layers})."
                )
            dst = param.data
            if shard is not None:
                start, length = self._shard_rows(shard)
                dst = dst[start : start + length]
            _copy_weight(dst, tensor, name)
            # An already-fused tensor (e.g. our own state_dict) provides every shard at once.
            loaded.update([(target, shard)] if shard else [(target, s) for s in self._shards_of(target)])
        missing = sorted(f"{n}[{s}]" if s else n for n, s in self.expected_weight_shards() - loaded)
        if missing:
            shown = ", ".join(missing[:8]) + (f", ... ({len(missing)} in all)" if len(missing) > 8 else "")
            raise ValueError(
                f"Checkpoint did not provide these parameters of {type(self).__name__}: {shown}."
            )


def _copy_weight(dst: torch.Tensor, src: torch.Tensor, name: str) -> None:
    """dst.copy_(src), refusing silent broadcasting; a size mismatch raises torch's own message."""
    dst.copy_(src)  # RuntimeError "The size of tensor a (..) must match the size of tensor b (..) ..."
    if dst.shape != src.shape:  # copy_ broadcast a smaller tensor: still a checkpoint of another size
        raise RuntimeError(
            f"Size mismatch for {name}: checkpoint tensor {tuple(src.shape)} vs parameter {tuple(dst.shape)}."
        )


class MistralForCausalLM(LlamaForCausalLM):
    """Mistral: the Llama architecture; ``sliding_window`` (if set in the config) is exposed for the runner."""
