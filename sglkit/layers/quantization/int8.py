"""Model layers: int8 weight-only quantization on CPU (``--torchao-config int8wo``: loaded weight -> int8 + scales).

Symmetric, one scale per output channel: ``scale[n] = max_k |W[n, k]| / 127`` (rounded to bfloat16 first, so
the int8 values are chosen for the scale the kernel uses), ``q = round(W / scale)`` in [-127, 127]. The GEMM is
``torch.ops.aten._weight_int8pack_mm(x [M, K] bf16, q [N, K] int8, scale [N] bf16) -> [M, N] bf16``: on x86
its vectorised (AVX2 / AVX-512) path exists for bfloat16 only (float32 runs a scalar loop, about 8x slower),
so activations enter it in bfloat16 whatever the model dtype, and the output is cast back. The kernel steps
over K in 8 (AVX2) / 16 (AVX-512) with aligned loads: K is zero-padded to a multiple of 16 and the activation
copied to an aligned buffer (``kernel_input``). The kernel is a GEMV-style loop (4 x 4 output blocks): from
``DEQUANT_MIN_ROWS`` rows up (prefill) dequantizing the layer into a transient float32 weight and calling
``F.linear`` is faster (measured on AVX2: about 2x at 512 rows); the transient copy is one layer's, freed after
the call. Weight bytes held: N * K + 2 N (a quarter of float32's).

On a CPU with AVX512-BF16, where sglkit's kernels are built (``sglkit.layers.cpu_kernels.blocked_gemm``), the
int8 values are held in that kernel's blocked layout instead (rows padded to 16) and every call, decode or
prefill, goes through it: each step widens 32 int8 weights to bfloat16 for one ``vdpbf16ps`` against the
bfloat16 activations, and the per-row scale multiplies the sum (same quantization, same math, one byte per
weight streamed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from sglkit.layers.cpu_kernels.blocked_gemm import (
    BlockedWeight,
    block_weight,
    blocked_gemm_available,
    blocked_linear,
)
from sglkit.layers.quantization.base import LinearMethod, kernel_input, pad_to

if TYPE_CHECKING:
    from sglkit.layers.linear import Linear

__all__ = ["COMPUTE_DTYPE", "DEQUANT_MIN_ROWS", "Int8WeightOnlyMethod", "quantize_int8"]

COMPUTE_DTYPE = torch.bfloat16  # activations and scales as the kernel reads them
K_MULTIPLE = 16  # the AVX-512 kernel's step over K
DEQUANT_MIN_ROWS = 128  # from this many rows of x, dequantize to float32 and use F.linear


def quantize_int8(weight: torch.Tensor, k_padded: int) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] -> (q [N, k_padded] int8, zero columns past K; scales [N] bf16) with W ~ q * scale."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1).clamp(min=1e-12) / 127.0).to(COMPUTE_DTYPE)  # [N]
    q = torch.round(w / scales.float()[:, None]).clamp_(-127, 127).to(torch.int8)  # [N, K]
    if k_padded > q.shape[1]:
        q = torch.nn.functional.pad(q, (0, k_padded - q.shape[1]))
    return q.contiguous(), scales


class Int8WeightOnlyMethod(LinearMethod):
    """int8 weight [out, in] with one bfloat16 scale per output channel; bfloat16 activations (CPU)."""

    name = "int8wo"

    def __init__(self) -> None:
        super().__init__()
        self.qweight: torch.Tensor | None = None  # [N, K padded] int8 (torch's kernel)
        self.scales: torch.Tensor | None = None  # [N] bf16
        self.pad = 0  # zero columns appended to K
        self.blocked: BlockedWeight | None = (
            None  # the int8 values in sglkit's blocked layout, instead of qweight
        )

    def create(self, layer: Linear) -> bool:
        """Quantize ``layer.weight`` (CPU only: ValueError elsewhere)."""
        weight = layer.weight
        if weight.device.type != "cpu":
            raise ValueError(f"int8wo is implemented for CPU weights only; this one is on {weight.device}.")
        k = weight.shape[1]
        if k % 2 == 0 and blocked_gemm_available(torch.int8):
            self.pad = 0
            q, self.scales = quantize_int8(weight, k)
            self.blocked = block_weight(q, self.scales)
            return True
        self.pad = pad_to(k, K_MULTIPLE) - k
        self.qweight, self.scales = quantize_int8(weight, k + self.pad)
        return True

    def matmul(self, layer: Linear, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x: [..., K] -> [..., N] in x's dtype (+ bias): the int8 kernel in bfloat16, or float32 for many rows."""
        rows = x.numel() // x.shape[-1]
        if self.blocked is not None:
            out = blocked_linear(x.reshape(rows, x.shape[-1]).to(COMPUTE_DTYPE), self.blocked).to(x.dtype)
        elif rows >= DEQUANT_MIN_ROWS:
            k = self.qweight.shape[1] - self.pad
            weight = self.qweight[:, :k].float() * self.scales.float()[:, None]  # [N, K] transient
            out = F.linear(x.reshape(rows, k).float(), weight).to(x.dtype)
        else:
            x2 = kernel_input(x, COMPUTE_DTYPE, self.pad)  # [M, K padded]
            out = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scales).to(x.dtype)  # [M, N]
        if bias is not None:
            out = out + bias
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def kernel_weight(self) -> BlockedWeight | None:
        """The int8 values (with their scales) in sglkit's blocked layout, when held in that form."""
        return self.blocked if self.processed else None

    def unpack(self, layer: Linear) -> torch.Tensor:
        """q * scale: the dequantized [N, K] weight in the layer's dtype."""
        q = (
            self.blocked.to_dense()
            if self.blocked is not None
            else self.qweight[:, : self.qweight.shape[1] - self.pad]
        )
        return (q.float() * self.scales.float()[:, None]).to(layer.weight.dtype)

    def clear(self) -> None:
        """Drop the int8 weight and its scales."""
        self.qweight = self.scales = self.blocked = None

    def held_bytes(self) -> int:
        """Bytes of the int8 weight and its scales."""
        if self.blocked is not None:
            return self.blocked.nbytes()  # the int8 blocks and their scales
        return self.qweight.numel() + self.scales.numel() * self.scales.element_size()
