"""Model layers: int4 group-wise weight-only quantization on CPU (``--torchao-config int4wo-G``: weight -> int4).

Asymmetric per group of G consecutive input columns (G = 32, 64, 128 or 256): with the group's min and max,
``scale = (max - min) / 15``, ``zero = min + 8 * scale`` (both rounded to bfloat16), ``q = round((W - zero) /
scale) + 8`` in [0, 15], so ``W ~ (q - 8) * scale + zero`` (torchao's int4 layout for the tinygemm kernels).
``aten._convert_weight_to_int4pack_for_cpu`` packs q into the layout this CPU's kernel reads (it differs
between AVX2 and AVX-512; the result is opaque), ``aten._weight_int4pack_mm_for_cpu(x bf16 [M, K], packed,
G, scale_and_zero [K / G, N, 2] bf16)`` multiplies. Activations run in bfloat16 whatever the model dtype (as
int8wo). K is zero-padded to a multiple of G (torchao skips such layers instead); the kernel needs N to be a
multiple of 16, so a layer with another N keeps its plain weight. Weight bytes: N * K / 2 + 4 N K / G.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from sglkit.layers.quantization.base import LinearMethod, kernel_input, pad_to

if TYPE_CHECKING:
    from sglkit.layers.linear import Linear

logger = logging.getLogger(__name__)

__all__ = ["GROUP_SIZES", "Int4WeightOnlyMethod", "quantize_int4"]

COMPUTE_DTYPE = torch.bfloat16
GROUP_SIZES = (32, 64, 128, 256)
N_MULTIPLE = 16  # _convert_weight_to_int4pack_for_cpu: "expect N to be dividable by 16"
UNPACK_ROWS = 256  # identity rows per kernel call when unpacking


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] -> (q [N, K padded to G] int32 in [0, 15]; scale_and_zero [K padded / G, N, 2] bf16)."""
    n, k = weight.shape
    w = weight.detach().float()
    k_padded = pad_to(k, group_size)
    if k_padded > k:
        w = torch.nn.functional.pad(w, (0, k_padded - k))
    groups = w.view(n, k_padded // group_size, group_size)  # [N, G count, G]
    lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)  # [N, G count]
    scale = ((hi - lo).clamp(min=1e-6) / 15.0).to(COMPUTE_DTYPE)
    zero = (lo + 8.0 * scale.float()).to(COMPUTE_DTYPE)
    q = torch.round((groups - zero.float()[..., None]) / scale.float()[..., None]) + 8.0
    q = q.clamp_(0, 15).to(torch.int32).view(n, k_padded)
    scale_and_zero = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()  # [G count, N, 2]
    return q, scale_and_zero


class Int4WeightOnlyMethod(LinearMethod):
    """int4 weight, one bfloat16 scale and zero per group of ``group_size`` input columns; bf16 activations."""

    name = "int4wo"

    def __init__(self, group_size: int = 128) -> None:
        super().__init__()
        if group_size not in GROUP_SIZES:
            raise ValueError(f"int4wo group size must be one of {GROUP_SIZES}, got {group_size!r}.")
        self.group_size = group_size
        self.packed: torch.Tensor | None = None  # the kernel's opaque uint8 layout of q
        self.scale_and_zero: torch.Tensor | None = None  # [K padded / G, N, 2] bf16
        self.pad = 0

    def create(self, layer: Linear) -> bool:
        """Quantize and pack ``layer.weight``; False (plain weight) when N is not a multiple of 16."""
        weight = layer.weight
        if weight.device.type != "cpu":
            raise ValueError(f"int4wo is implemented for CPU weights only; this one is on {weight.device}.")
        n, k = weight.shape
        if n % N_MULTIPLE:
            logger.debug(f"int4wo: {n} output features are not a multiple of {N_MULTIPLE}; kept unquantized.")
            return False
        q, self.scale_and_zero = quantize_int4(weight, self.group_size)
        self.pad = q.shape[1] - k
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        return True

    def matmul(self, layer: Linear, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x: [..., K] -> [..., N] in x's dtype (computed in bfloat16, + bias)."""
        x2 = kernel_input(x, COMPUTE_DTYPE, self.pad)  # [M, K padded]
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x2, self.packed, self.group_size, self.scale_and_zero
        )
        out = out.to(x.dtype)  # [M, N]
        if bias is not None:
            out = out + bias
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def unpack(self, layer: Linear) -> torch.Tensor:
        """The dequantized [N, K] weight (the kernel applied to identity rows: exact for its bf16 output)."""
        n, k = layer.weight.shape
        eye = torch.eye(k, k + self.pad, dtype=COMPUTE_DTYPE)  # [K, K padded]
        rows = [
            torch.ops.aten._weight_int4pack_mm_for_cpu(
                chunk, self.packed, self.group_size, self.scale_and_zero
            )
            for chunk in eye.split(UNPACK_ROWS)
        ]  # [rows, N] each: rows of W^T
        return torch.cat(rows).t().contiguous().to(layer.weight.dtype)  # [N, K]

    def clear(self) -> None:
        """Drop the packed int4 weight and its scales and zeros."""
        self.packed = self.scale_and_zero = None

    def held_bytes(self) -> int:
        """Bytes of the packed int4 weight and its scales and zeros."""
        sz = self.scale_and_zero
        return self.packed.numel() * self.packed.element_size() + sz.numel() * sz.element_size()
