"""Model layers: gated activations of the MLP (gate_up_proj -> act_and_mul -> down_proj).

The fused gate/up projection gives [T, 2I]; the first half is the gate, the second the value. ``get_act_and_mul``
maps a config's ``hidden_act`` to the module: silu -> SiluAndMul (SwiGLU: Llama, Qwen, Mistral), gelu /
gelu_pytorch_tanh -> GeluAndMul (GeGLU: exact erf or tanh approximation, as HF's ACT2FN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sglkit.layers.cpu_kernels import fused_ops as cpu_fused_ops
from sglkit.layers.cpu_kernels.fused_ops import cpu_fused_ops_enabled
from sglkit.layers.triton_fused import fused_ops_enabled

__all__ = ["GeluAndMul", "SiluAndMul", "SUPPORTED_GATED_ACTIVATIONS", "get_act_and_mul"]


class SiluAndMul(nn.Module):
    """SwiGLU: the first half of the last dim is the gate (SiLU), the second half the value.

    On CUDA one fused Triton kernel (``sglkit.layers.triton_fused``), on an AVX-512 CPU one C++ pass
    (``sglkit.layers.cpu_kernels.fused_ops``); same numerics as the torch code."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, 2I] -> [T, I] = silu(x[:, :I]) * x[:, I:]."""
        if fused_ops_enabled(x):
            from sglkit.layers.triton_fused.activation import silu_and_mul

            return silu_and_mul(x)
        if cpu_fused_ops_enabled(x):
            return cpu_fused_ops.silu_and_mul(x)
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up


class GeluAndMul(nn.Module):
    """GeGLU: gelu(gate) * value; ``approximate`` "none" (erf, HF "gelu") or "tanh" (HF "gelu_pytorch_tanh")."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GeluAndMul approximate must be 'none' or 'tanh', not {approximate!r}.")
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, 2I] -> [T, I] = gelu(x[:, :I]) * x[:, I:]."""
        gate, up = x.chunk(2, dim=-1)
        return F.gelu(gate, approximate=self.approximate) * up

    def extra_repr(self) -> str:
        """The GELU variant."""
        return f"approximate={self.approximate!r}"


# config.json hidden_act -> factory of the gated activation module.
SUPPORTED_GATED_ACTIVATIONS = {
    "silu": SiluAndMul,
    "gelu": lambda: GeluAndMul("none"),
    "gelu_pytorch_tanh": lambda: GeluAndMul("tanh"),
}


def get_act_and_mul(hidden_act: str) -> nn.Module:
    """The gated activation module for a config's ``hidden_act``; ValueError naming the supported ones."""
    factory = SUPPORTED_GATED_ACTIVATIONS.get(hidden_act)
    if factory is None:
        raise ValueError(
            f"Unsupported hidden_act {hidden_act!r} for a gated MLP; sglkit supports "
            f"{sorted(SUPPORTED_GATED_ACTIVATIONS)}."
        )
    return factory()
