"""Models: the CPU decode stack of a decoder model (``DecoderModel.forward`` -> here -> one C++ call for all layers).

An eager decode step calls ~15 Python functions per decoder layer (modules, views, dispatch) around ~8 kernel
calls; on the 360M ``small`` shape at batch 1 that is ~6 ms of a ~30 ms step. ``CpuDecodeStack`` hands a decode
pass to ``sglkit.layers.cpu_kernels.decode_stack.DecodeStack``, which makes the same kernel calls in C++: the
result is bit-identical, the Python is one call per step (``python -m sglkit.bench.decode_stack``).

It runs a pass when all of this holds, and otherwise leaves it to the layers (``reason`` says what did not):

- the torch_native backend chose sglkit's decode-attention kernel for the pass (``KernelDecodeMetadata``: a CPU
  pool of a dtype and head dim the kernel takes), the fused CPU ops are on, no ``torch.compile`` trace;
- every layer is the pre-norm Llama layer as ``DecoderLayer.decode_stack_parts`` gives it (a dense SiLU MLP;
  Llama, Mistral without a window, Qwen2 with its qkv bias, Qwen3 with its per-head q/k norm ...), all with the
  same head shape;
- no tensor parallelism; every linear holds its weight in sglkit's blocked layout (bfloat16, float32, or int8wo)
  in the model's dtype; norms are RMSNorm (bfloat16: the fused kernel, float32: RMSNorm's own torch code); the
  shared RoPE is the plain one; no layer has a sliding window or a logit cap.

The stack holds the weights' blocked tensors; any change of a linear's form (``update_weights``, a new method)
drops it (``watch_weight_forms``) and the next decode pass checks and builds it again.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sglkit.core.forward_batch import ForwardBatch
from sglkit.layers.attention.base import RadixAttention
from sglkit.layers.attention.cpu_kernel_paths import KernelDecodeMetadata, kernel_takes_layer
from sglkit.layers.cpu_kernels.decode_attention import decode_attention_available
from sglkit.layers.cpu_kernels.decode_stack import (
    CPU_DECODE_STACK_ENV,
    DecodeStack,
    cpu_decode_stack_enabled,
    per_layer_tensors,
)
from sglkit.layers.cpu_kernels.fused_ops import cpu_fused_ops_enabled
from sglkit.layers.linear import Linear
from sglkit.layers.norm import RMSNorm
from sglkit.layers.quantization.base import watch_weight_forms
from sglkit.layers.rotary import RotaryEmbedding

__all__ = ["CpuDecodeStack", "StackLayer"]


@dataclass(frozen=True)
class StackLayer:
    """The parts of one pre-norm Llama decoder layer the decode stack runs (``DecoderLayer.decode_stack_parts``)."""

    input_norm: nn.Module
    qkv: Linear
    o: Linear
    post_norm: nn.Module
    gate_up: Linear
    down: Linear
    attn: RadixAttention
    rotary: nn.Module
    intermediate_size: int
    q_norm: nn.Module | None = None  # per-head norms over head_dim before RoPE (Qwen3), both or neither
    k_norm: nn.Module | None = None


class _NotStackable(Exception):
    """Why a model's decode passes stay on the module path."""


def _norm_mode(norm: nn.Module, dtype: torch.dtype) -> tuple[bool, bool, float]:
    """(fused kernel, weight in float32, weight offset) computing exactly what ``norm`` computes for ``dtype``."""
    if dtype == torch.bfloat16:
        if type(norm).forward is not RMSNorm.forward or norm.fused_weight_mode is None:
            raise _NotStackable(f"a {type(norm).__name__} norm")
        if norm.weight.dtype != dtype:
            raise _NotStackable(f"a {norm.weight.dtype} norm weight")
        return True, norm.fused_weight_mode == "float32", float(norm.weight_offset)
    if type(norm) is not RMSNorm or norm.weight.dtype != dtype:
        raise _NotStackable(f"a {type(norm).__name__} norm in {dtype}")
    return False, False, 0.0


def _linear_tensors(linear: Linear, dtype: torch.dtype) -> list[torch.Tensor | None]:
    """[blocked weight, int8 scales or None, bias or None] of a linear the stack can run."""
    if linear.tp_size != 1:
        raise _NotStackable("tensor parallelism")
    weight = linear.linear_method.kernel_weight()
    if weight is None:
        raise _NotStackable(f"a linear held by {linear.linear_method.name} (not sglkit's blocked layout)")
    if weight.dtype != torch.int8 and (weight.dtype != dtype or linear.weight.dtype != dtype):
        raise _NotStackable(f"a {weight.dtype} linear in a {dtype} model")
    bias = None if linear.bias is None else linear.bias.detach()
    if bias is not None and bias.dtype != dtype:
        raise _NotStackable(f"a {bias.dtype} bias")
    return [weight.data, weight.scales, bias]


class CpuDecodeStack:
    """Runs a decoder model's CPU decode passes as one ``DecodeStack`` call where it applies (module docstring).

    ``model.decode_stack_layers()`` gives the model's ``StackLayer`` list, or raises ValueError naming a layer it
    cannot describe; the stack is built on the first decode pass against a pool and kept until a weight form
    changes.
    """

    def __init__(self, model: nn.Module) -> None:
        self._model = weakref.ref(model)  # the model owns this object
        self._stack: DecodeStack | None = None
        self._rotary: Any = None
        self._dtype: torch.dtype | None = None
        self._checked_pool: Any = None  # the pool the stack was last checked (and built) against
        self.reason: str | None = (
            "not checked yet"  # why the last check left passes to the layers; None: it runs
        )
        self.passes = 0  # decode passes it ran
        watch_weight_forms(self)

    def weight_forms_changed(self) -> None:
        """A linear's form changed: drop the stack (and the blocked tensors it holds); check again next pass."""
        self._stack = None
        self._checked_pool = None
        self.reason = "not checked yet"

    def check(self, pool: Any, dtype: torch.dtype) -> str | None:
        """Build the stack for ``dtype`` passes over ``pool`` now (as the first decode pass would); why it would not
        run them, or None when it will (given the backend picks sglkit's decode kernel, which ``run`` checks)."""
        if not cpu_decode_stack_enabled():
            return f"{CPU_DECODE_STACK_ENV} is off"
        if not cpu_fused_ops_enabled(torch.empty(0, dtype=dtype)):
            return f"sglkit's fused CPU ops do not run {dtype} here"
        self._build(pool, dtype)
        return self.reason

    def run(
        self, hidden: torch.Tensor, positions: torch.Tensor, forward_batch: ForwardBatch
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """hidden: [B, H] embeddings of a decode pass, positions: [B] -> (last MLP output, residual) [B, H] each,
        as the layer loop returns them; None where the pass goes through the layers."""
        if torch.compiler.is_compiling() or not cpu_decode_stack_enabled():
            return None
        if not isinstance(forward_batch.attn_metadata, KernelDecodeMetadata) or not cpu_fused_ops_enabled(
            hidden
        ):
            return None
        pool = forward_batch.token_to_kv_pool
        if pool is not self._checked_pool:
            self._build(pool, hidden.dtype)
        if self._stack is None or hidden.dtype != self._dtype:
            return None
        self.passes += 1
        return self._stack.forward(
            hidden,
            positions,
            forward_batch.req_to_token_pool.req_to_token,
            forward_batch.req_pool_indices,
            forward_batch.seq_lens,
            forward_batch.out_cache_loc,
            self._rotary.cos_sin_cache,
        )

    def _build(self, pool: Any, dtype: torch.dtype) -> None:
        self._checked_pool, self._dtype, self._stack = pool, dtype, None
        try:
            self._stack = self._make(pool, dtype)
            self.reason = None
        except _NotStackable as e:
            self.reason = str(e)

    def _make(self, pool: Any, dtype: torch.dtype) -> DecodeStack:
        model = self._model()
        try:
            layers: list[StackLayer] = model.decode_stack_layers()
        except ValueError as e:
            raise _NotStackable(str(e)) from None
        first = layers[0]
        rotary, attn0 = first.rotary, first.attn
        if type(rotary).forward is not RotaryEmbedding.forward or rotary.cos_sin_cache.dtype != torch.float32:
            raise _NotStackable(f"a {type(rotary).__name__} rotary embedding")
        modes, tensors, eps = set(), [], []
        for layer in layers:
            attn = layer.attn
            shape = (attn.num_heads, attn.num_kv_heads, attn.head_dim, attn.scaling, layer.intermediate_size)
            if shape != (
                attn0.num_heads,
                attn0.num_kv_heads,
                attn0.head_dim,
                attn0.scaling,
                first.intermediate_size,
            ):
                raise _NotStackable("layers of different shapes")
            if attn.has_options:
                raise _NotStackable("a sliding window or logit cap")
            if layer.rotary is not rotary:
                raise _NotStackable("layers with their own rotary embeddings")
            k_buf, v_buf = pool.get_kv_buffer(attn.layer_id)
            if not kernel_takes_layer(decode_attention_available, dtype, k_buf, v_buf, attn):
                raise _NotStackable("a head shape or KV pool the decode kernel does not take")
            norms = [layer.input_norm, layer.post_norm, layer.q_norm, layer.k_norm]
            if (layer.q_norm is None) != (layer.k_norm is None):
                raise _NotStackable("a q norm without a k norm")
            modes.update(_norm_mode(norm, dtype) for norm in norms if norm is not None)
            eps += [0.0 if norm is None else float(norm.eps) for norm in norms]
            tensors.append(layer.input_norm.weight.detach())
            tensors += _linear_tensors(layer.qkv, dtype) + _linear_tensors(layer.o, dtype)
            tensors.append(layer.post_norm.weight.detach())
            tensors += _linear_tensors(layer.gate_up, dtype) + _linear_tensors(layer.down, dtype)
            tensors += [k_buf, v_buf]
            tensors += [None if norm is None else norm.weight.detach() for norm in norms[2:]]
        if len(modes) != 1:
            raise _NotStackable("norms of different kinds")
        if len(tensors) != per_layer_tensors() * len(layers):
            raise RuntimeError("the decode stack's per-layer tensors do not match the extension's")
        fused_norm, weight_fp32, offset = modes.pop()
        hidden = layers[0].o.out_features
        dims = (hidden, attn0.num_heads, attn0.num_kv_heads, attn0.head_dim, first.intermediate_size)
        self._rotary = rotary
        return DecodeStack(
            tensors, (*dims, rotary.rotary_dim), eps, attn0.scaling, fused_norm, weight_fp32, offset
        )
