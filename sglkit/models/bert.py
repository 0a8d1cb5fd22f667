"""Models: BERT encoder for embeddings (embedding runner -> BertModel -> Pooler -> one vector per input).

An encoder: bidirectional attention within each sequence, absolute position and token-type embeddings,
post-norm blocks, no KV cache. Tokens of all sequences arrive packed along dim 0 ([T]); the linears run on the
packed tokens and attention runs once per layer on a padded [B, heads, L_max, head_dim] view with a key mask
(no mask when all lengths are equal). Sequence boundaries come from ``forward_batch.extend_seq_lens_cpu``.

Checkpoint names are HF's (``embeddings.*``, ``encoder.layer.N.*``; a ``bert.`` prefix is accepted); the
separate query/key/value weights load into one fused ``qkv_proj`` (shards "q", "k", "v") through the shared
loader (``sglkit.models.weight_utils``). HF's tanh ``pooler.dense`` head is not used by sentence embedders and
is skipped. Pooling defaults to CLS + L2 normalization; a sentence-transformers folder (``modules.json``)
overrides it (see ``sglkit.models.pooling_config``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sglkit.core.forward_batch import ForwardBatch
from sglkit.core.model_config import ModelConfig
from sglkit.layers.embedding import VocabParallelEmbedding
from sglkit.layers.linear import Linear, QKVParallelLinear
from sglkit.layers.pooler import Pooler, PoolingType
from sglkit.models.weight_utils import StackedParam, load_weights
from sglkit.parallel import get_tp_size

__all__ = ["BertModel"]

# hidden_act name in config.json -> (activation, oneDNN post-op (attr, algorithm) fused into the packed linear).
_ACTIVATIONS = {
    "gelu": (lambda x: F.gelu(x), ("gelu", "none")),
    "gelu_new": (lambda x: F.gelu(x, approximate="tanh"), ("gelu", "tanh")),
    "gelu_pytorch_tanh": (lambda x: F.gelu(x, approximate="tanh"), ("gelu", "tanh")),
    "relu": (F.relu, ("relu", "")),
}
# Checkpoint tensors with no counterpart here: HF's tanh pooler, MLM/NSP heads, the position-id buffer.
_SKIPPED_PREFIXES = ("pooler.", "cls.")
_SKIPPED_SUFFIXES = ("embeddings.position_ids",)
# HF checkpoint modules -> shards of our fused qkv_proj (see sglkit.models.weight_utils).
BERT_STACKED_PARAMS: tuple[StackedParam, ...] = (
    ("qkv_proj", "query", "q"),
    ("qkv_proj", "key", "k"),
    ("qkv_proj", "value", "v"),
)


@dataclass
class PackedLayout:
    """Where the packed tokens of a batch sit in a padded [B, L_max] grid (computed once per forward)."""

    batch_size: int
    max_len: int
    pad_index: (
        torch.Tensor | None
    )  # [T] row of each packed token in the flat [B * L_max] grid; None if uniform
    key_mask: torch.Tensor | None  # [B, 1, 1, L_max] bool, True on real tokens; None if uniform
    padding_index: torch.Tensor | None = None  # [B * L_max - T] rows of the grid that are padding

    @classmethod
    def from_seq_lens(cls, seq_lens: list[int], device: torch.device) -> PackedLayout:
        """Layout of sequences of ``seq_lens`` tokens, packed in order."""
        batch, max_len = len(seq_lens), max(seq_lens)
        if min(seq_lens) == max_len:
            return cls(batch, max_len, None, None)
        lens = torch.tensor(seq_lens, device=device)
        positions = torch.arange(max_len, device=device)
        valid = positions[None, :] < lens[:, None]  # [B, L_max]
        pad_index = torch.nonzero(valid.reshape(-1), as_tuple=False).squeeze(1)  # row-major = packed order
        padding_index = torch.nonzero(~valid.reshape(-1), as_tuple=False).squeeze(1)
        return cls(batch, max_len, pad_index, valid[:, None, None, :], padding_index)

    def to_padded(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, C] -> [B, L_max, C] (zeros on padding: masked keys must stay finite)."""
        if self.pad_index is None:
            return x.view(self.batch_size, self.max_len, -1)
        out = x.new_empty(self.batch_size * self.max_len, x.shape[1])
        out.index_copy_(0, self.pad_index, x)
        out.index_fill_(0, self.padding_index, 0.0)
        return out.view(self.batch_size, self.max_len, -1)

    def to_packed(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, L_max, C] -> [T, C]."""
        flat = x.reshape(self.batch_size * self.max_len, -1)
        return flat if self.pad_index is None else flat.index_select(0, self.pad_index)


class EncoderLinear(Linear):
    """``Linear`` whose activation or residual add runs fused into the prepacked CPU GEMM (one pass over memory).

    Elsewhere (GPU, unpacked, autograd) it computes the same thing unfused.
    """

    def __init__(self, in_features: int, out_features: int, dtype, hidden_act: str | None = None) -> None:
        super().__init__(in_features, out_features, bias=True, dtype=dtype)
        self.act_fn, self.post_op = _ACTIVATIONS[hidden_act] if hidden_act else (None, None)

    def _packed(self, x: torch.Tensor) -> bool:
        return self.packed_weight is not None and not torch.is_grad_enabled() and x.dtype == self.weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, in] -> act(x W^T + b) [T, out]."""
        if self.act_fn is None:
            return super().forward(x)
        if self._packed(x):
            attr, algorithm = self.post_op
            return torch.ops.mkldnn._linear_pointwise(
                x.contiguous(), self.packed_weight, self.bias.detach(), attr, [], algorithm
            )
        return self.act_fn(super().forward(x))

    def forward_add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """x: [T, in], residual: [T, out] -> x W^T + b + residual."""
        if self._packed(x) and residual.dtype == x.dtype:
            return torch.ops.mkldnn._linear_pointwise.binary(
                x.contiguous(), residual.contiguous(), self.packed_weight, self.bias.detach(), "add"
            )
        return super().forward(x) + residual


class BertEmbeddings(nn.Module):
    """Word + absolute position + token type (0) embeddings, then LayerNorm."""

    def __init__(self, config, dtype) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.word_embeddings = VocabParallelEmbedding(config.vocab_size, hidden, dtype=dtype)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, hidden, dtype=dtype)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, hidden, dtype=dtype)
        self.LayerNorm = nn.LayerNorm(hidden, eps=config.layer_norm_eps, dtype=dtype)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """input_ids, positions: [T] -> [T, H]."""
        x = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings.weight[0]
            + self.position_embeddings(positions)
        )
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    """Fused q/k/v projection and bidirectional attention within each sequence."""

    def __init__(self, config, dtype) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size, self.head_dim, self.num_heads, self.num_heads, bias=True, dtype=dtype
        )

    def forward(self, hidden: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
        """hidden: [T, H] -> attention output before the output projection [T, H]."""
        qkv = layout.to_padded(self.qkv_proj(hidden))  # [B, L, 3H]
        batch, length = qkv.shape[:2]
        qkv = qkv.view(batch, length, 3, self.num_heads, self.head_dim).permute(
            2, 0, 3, 1, 4
        )  # [3, B, h, L, d]
        out = F.scaled_dot_product_attention(
            qkv[0], qkv[1], qkv[2], attn_mask=layout.key_mask
        )  # [B, h, L, d]
        return layout.to_packed(out.transpose(1, 2))


class BertOutput(nn.Module):
    """dense -> LayerNorm(dense(x) + residual): HF's BertSelfOutput and BertOutput."""

    def __init__(self, in_features: int, config, dtype) -> None:
        super().__init__()
        self.dense = EncoderLinear(in_features, config.hidden_size, dtype)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, dtype=dtype)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """x: [T, in], residual: [T, H] -> [T, H]."""
        return self.LayerNorm(self.dense.forward_add(x, residual))


class BertAttention(nn.Module):
    """Self-attention plus its output block (names as HF: ``attention.self``, ``attention.output``)."""

    def __init__(self, config, dtype) -> None:
        super().__init__()
        self.self = BertSelfAttention(config, dtype)
        self.output = BertOutput(config.hidden_size, config, dtype)

    def forward(self, hidden: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
        """hidden: [T, H] -> [T, H]."""
        return self.output(self.self(hidden, layout), hidden)


class BertIntermediate(nn.Module):
    """dense -> activation (the MLP's first half)."""

    def __init__(self, config, dtype) -> None:
        super().__init__()
        act = getattr(config, "hidden_act", "gelu")
        if act not in _ACTIVATIONS:
            raise ValueError(
                f"Unsupported hidden_act {act!r} for BertModel; supported: {sorted(_ACTIVATIONS)}."
            )
        self.dense = EncoderLinear(config.hidden_size, config.intermediate_size, dtype, hidden_act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, H] -> [T, I]."""
        return self.dense(x)


class BertLayer(nn.Module):
    """Post-norm encoder block: attention, then MLP, each with residual + LayerNorm."""

    def __init__(self, config, dtype) -> None:
        super().__init__()
        self.attention = BertAttention(config, dtype)
        self.intermediate = BertIntermediate(config, dtype)
        self.output = BertOutput(config.intermediate_size, config, dtype)

    def forward(self, hidden: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
        """hidden: [T, H] -> [T, H]."""
        attn = self.attention(hidden, layout)
        return self.output(self.intermediate(attn), attn)


class BertEncoder(nn.Module):
    """The stack of encoder layers (``encoder.layer.N``)."""

    def __init__(self, config, dtype) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config, dtype) for _ in range(config.num_hidden_layers))

    def forward(self, hidden: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
        """hidden: [T, H] -> [T, H]."""
        for layer in self.layer:
            hidden = layer(hidden, layout)
        return hidden


class BertModel(nn.Module):
    """BERT encoder serving embeddings. ``forward`` returns token states; ``pool`` one vector per sequence."""

    uses_kv_cache = False  # encoder: attention sees only this pass's tokens

    def __init__(self, config: Any, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if get_tp_size() > 1:
            raise ValueError(
                f"Embedding models do not support tensor parallelism (tp_size={get_tp_size()}); use tp_size=1."
            )
        dtype = dtype or torch.get_default_dtype()
        self.model_config = ModelConfig.from_hf(config)
        # The blocks read BertConfig fields ModelConfig does not normalise (layer_norm_eps, type_vocab_size, ...).
        config = self.model_config.hf_config
        kind = getattr(config, "position_embedding_type", "absolute") or "absolute"
        if kind != "absolute":
            raise ValueError(
                f"BertModel with position_embedding_type={kind!r} is not supported (only 'absolute')."
            )
        self.config = config
        self.dtype = dtype
        self.embeddings = BertEmbeddings(config, dtype)
        self.encoder = BertEncoder(config, dtype)
        # Not HF's tanh pooler (whose weights are skipped): the embedding pooling, replaceable by the runner.
        self.pooler = Pooler(PoolingType.CLS, normalize=True)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: ForwardBatch
    ) -> torch.Tensor:
        """input_ids, positions: [T] (packed) -> last hidden states [T, H]."""
        layout = PackedLayout.from_seq_lens(forward_batch.extend_seq_lens_cpu, input_ids.device)
        return self.encoder(self.embeddings(input_ids, positions), layout)

    def pool(self, hidden: torch.Tensor, forward_batch: ForwardBatch) -> torch.Tensor:
        """hidden: [T, H] -> [B, H] pooled (and normalized if configured)."""
        return self.pooler(hidden, forward_batch.seq_lens)

    @staticmethod
    def checkpoint_name(name: str) -> str | None:
        """A checkpoint tensor's name here (``bert.`` prefix dropped), or None for HF's pooler / heads / buffers."""
        name = name.removeprefix("bert.")
        if name.startswith(_SKIPPED_PREFIXES) or name.endswith(_SKIPPED_SUFFIXES):
            return None
        return name

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors in (query/key/value into ``qkv_proj``); ValueError for unknown or missing ones."""
        load_weights(self, weights, BERT_STACKED_PARAMS, rename=self.checkpoint_name)
