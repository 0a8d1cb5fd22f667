"""Model layers: RMSNorm with an optional fused residual add (decoder layer -> norm -> attention/MLP).

Numerics follow HF Llama: normalize in float32, cast back to the input dtype, then multiply by the weight.
A decoder layer takes its norm class as an argument (``norm_cls(hidden_size, eps, dtype=...)``), so a variant
with the same call convention plugs in without touching the layer: ``Float32WeightRMSNorm`` multiplies by the
weight in float32 before the cast (HF OLMo 2), ``GemmaRMSNorm`` likewise by ``(1 + weight)`` (HF Gemma 2 / 3).
"""

from __future__ import annotations

import torch
from torch import nn

from sglkit.layers.weight_loader import default_weight_loader, set_weight_loader

__all__ = ["Float32WeightRMSNorm", "GemmaRMSNorm", "RMSNorm"]


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension, with a learned per-channel weight."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype))
        set_weight_loader(self.weight, default_weight_loader)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., H] -> [..., H] normalized (float32 math), times weight."""
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x: [..., H] -> normed [..., H]; with ``residual``: (norm(x + residual), x + residual)."""
        if residual is None:
            return self._norm(x)
        x = x + residual
        return self._norm(x), x

    def extra_repr(self) -> str:
        """Size and eps, for ``print(model)``."""
        return f"{self.hidden_size}, eps={self.eps}"


class Float32WeightRMSNorm(RMSNorm):
    """RMSNorm whose weight multiply happens in float32, before the cast back to the input dtype (HF OLMo 2).

    ``weight_offset`` is added to the weight first (0 here; 1 for Gemma's zero-centred weights).
    """

    weight_offset = 0.0

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., H] -> [..., H]: x * rsqrt(mean(x^2) + eps) * (offset + weight), all in float32, then cast."""
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        weight = self.weight.float()
        if self.weight_offset:
            weight = self.weight_offset + weight
        return (x32 * weight).to(x.dtype)


class GemmaRMSNorm(Float32WeightRMSNorm):
    """Gemma's RMSNorm: scales by ``(1 + weight)`` in float32 (weights are stored zero-centred; init 0)."""

    weight_offset = 1.0

    def __init__(self, hidden_size: int, eps: float = 1e-6, dtype: torch.dtype | None = None) -> None:
        super().__init__(hidden_size, eps, dtype)
        nn.init.zeros_(self.weight)  # the identity, as HF initialises it
