"""Model layers, CPU: a whole decode pass of a Llama-style stack in one C++ call (decoder model ->
``sglkit.models.cpu_decode_stack`` -> here -> csrc/decode_stack.cpp).

``DecodeStack`` holds, per layer, the norm weights, the four linears' blocked weights (bfloat16 / float32, or
int8 with their scales) and biases, and the layer's K/V pool buffers; ``forward`` runs every layer with the same
kernel calls the modules make (fused RMSNorm or RMSNorm's torch code, ``blocked_linear``, per-head q/k norms,
RoPE, the KV write, ``decode_attention``, SiLU-and-mul), so its output is bit-identical to the module path,
without the ~4-6 ms of per-layer Python a batch-1 decode step of the 360M shape spends (docs/cpu.md).

On wherever the fused ops run (``sglkit.layers.cpu_kernels.fused_ops``); ``SGLKIT_CPU_DECODE_STACK=0`` (read at
import) or ``set_cpu_decode_stack(False)`` keeps the module path (for A/B runs).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from sglkit.layers.cpu_kernels import require_kernels

__all__ = [
    "CPU_DECODE_STACK_ENV",
    "DecodeStack",
    "cpu_decode_stack_enabled",
    "per_layer_tensors",
    "set_cpu_decode_stack",
]

CPU_DECODE_STACK_ENV = "SGLKIT_CPU_DECODE_STACK"
_enabled = os.environ.get(CPU_DECODE_STACK_ENV, "").lower() not in ("0", "off", "false")


def cpu_decode_stack_enabled() -> bool:
    """Whether decode passes may go through ``DecodeStack`` (the switch; each model still checks it applies)."""
    return _enabled


def set_cpu_decode_stack(enabled: bool) -> bool:
    """Switch the decode stack on or off for this process (benchmarks and tests compare both); returns the old
    setting."""
    global _enabled
    old, _enabled = _enabled, bool(enabled)
    return old


def per_layer_tensors() -> int:
    """How many tensors ``DecodeStack`` takes per layer (see its docstring for their order)."""
    return int(require_kernels("DecodeStack").DECODE_STACK_PER_LAYER)


class DecodeStack:
    """The C++ decode pass over a stack of layers.

    ``tensors``: per layer, in this order (None where absent): input norm weight; qkv blocked weight, its int8
    scales, its bias; o_proj weight, scales, bias; post-attention norm weight; gate_up weight, scales, bias; down
    weight, scales, bias; the layer's K and V pool buffers [S, Hkv, D]; the per-head q and k norm weights [D]
    (Qwen3; both or neither). ``dims``: hidden, query heads, KV heads, head dim, intermediate, rotary dim. ``eps``:
    four per layer (input norm, post-attention norm, q norm, k norm; any number where absent). ``fused_norm``:
    the fused RMSNorm kernel (``weight_fp32`` / ``offset`` as ``fused_ops.rms_norm``), else RMSNorm's torch code.
    """

    def __init__(
        self,
        tensors: list[torch.Tensor | None],
        dims: tuple[int, int, int, int, int, int],
        eps: list[float],
        scaling: float,
        fused_norm: bool,
        weight_fp32: bool = False,
        offset: float = 0.0,
    ) -> None:
        kernels = require_kernels("DecodeStack")
        self._stack: Any = kernels.DecodeStack(
            tensors, list(dims), list(eps), scaling, fused_norm, weight_fp32, offset
        )

    @property
    def num_layers(self) -> int:
        """Layers in the stack."""
        return int(self._stack.num_layers)

    def forward(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        req_to_token: torch.Tensor,
        req_pool_indices: torch.Tensor,
        seq_lens: torch.Tensor,
        out_cache_loc: torch.Tensor,
        cos_sin_cache: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden: [B, H] embeddings, positions: [B] (rotary cache rows), the pass's table rows, lengths and new
        slots -> (last layer's MLP output [B, H], residual [B, H]), as the layer loop returns them."""
        return self._stack.forward(
            hidden, positions, req_to_token, req_pool_indices, seq_lens, out_cache_loc, cos_sin_cache
        )
