"""Model layers: gated activations used by the MLP (gate_up_proj -> SiluAndMul -> down_proj)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SiluAndMul(nn.Module):
    """SwiGLU: the first half of the last dim is the gate (SiLU), the second half the value."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, 2I] -> [T, I] = silu(x[:, :I]) * x[:, I:]."""
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up
