"""Model layers, CPU: sglkit's own GEMM (``Linear`` / logits head -> ``blocked_linear`` -> csrc/blocked_gemm.cpp).

oneDNN's packed GEMV streams the weights at ~16-26 GB/s on a 2-core AVX-512 EPYC, where a plain read loop reaches
~30 GB/s, and its layout for one row is not the one for a batch (docs/cpu.md). The kernel holds a weight as
``[ceil(N/16), K/G, 16, G]`` (16 output rows x G input columns per 64-byte vector; G = 2 for bfloat16, the
operand of ``vdpbf16ps``, 1 for float32, of an FMA): every block is one contiguous stream, read once per call
whatever the batch, so one layout serves decode (bandwidth) and prefill (compute) alike. ``BlockedWeight`` is
that layout; ``block_weight`` / ``BlockedWeight.to_dense`` convert exactly. float32 needs AVX-512 (F/BW/VL),
bfloat16 also AVX512-BF16 (``sglkit.layers.cpu_kernels``: how the extension is built and turned off). int8
weights (``--torchao-config int8wo``) use the same layout, one byte per value: each 32-byte step is widened to 32
bfloat16 for the same ``vdpbf16ps`` against bfloat16 x, and the row's scale multiplies the sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sglkit.layers.cpu_kernels import load_kernels, require_kernels

__all__ = ["BLOCK", "BlockedWeight", "block_weight", "blocked_gemm_available", "blocked_linear"]

BLOCK = 16  # output rows per block (one AVX-512 register of fp32 accumulators)
GROUP = {
    torch.bfloat16: 2,
    torch.float32: 1,
    torch.int8: 2,
}  # input columns per lane (a vdpbf16ps pair, or one)


def blocked_gemm_available(dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether ``blocked_linear`` runs ``dtype`` weights here (kernel built; bfloat16 and int8 need
    AVX512-BF16)."""
    kernel = load_kernels()
    return dtype in GROUP and kernel is not None and kernel.gemm_supported(str(dtype).removeprefix("torch."))


class BlockedWeight:
    """A [N, K] weight in the kernel's layout: ``data`` [ceil(N/16), K/G, 16, G] (G: 2 for bfloat16 and int8, 1
    for float32), rows past N zero; int8 weights also carry ``scales`` [N] bfloat16 (W = q * scale per row)."""

    def __init__(
        self, data: torch.Tensor, out_features: int, in_features: int, scales: torch.Tensor | None = None
    ) -> None:
        self.data = data
        self.out_features = out_features
        self.in_features = in_features
        self.scales = scales

    @property
    def dtype(self) -> torch.dtype:
        """The weight's dtype."""
        return self.data.dtype

    def to_dense(self) -> torch.Tensor:
        """Back to the plain [N, K] weight (exact; for int8 the int8 values, without their scales)."""
        blocks, steps, _, group = self.data.shape
        dense = self.data.permute(0, 2, 1, 3).reshape(blocks * BLOCK, steps * group)
        return dense[: self.out_features].contiguous()

    def nbytes(self) -> int:
        """Bytes held (the padding rows and any scales included)."""
        scales = 0 if self.scales is None else self.scales.numel() * self.scales.element_size()
        return self.data.numel() * self.data.element_size() + scales


def block_weight(weight: torch.Tensor, scales: torch.Tensor | None = None) -> BlockedWeight | None:
    """weight: [N, K] -> its blocked copy, or None where the kernel cannot take it (not a CPU tensor, a dtype
    this CPU's kernel does not run, bfloat16 / int8 with K odd). int8 weights need ``scales`` [N] bfloat16."""
    if weight.device.type != "cpu" or weight.dim() != 2 or not blocked_gemm_available(weight.dtype):
        return None
    n, k = weight.shape
    group = GROUP[weight.dtype]
    if k % group or n == 0:
        return None
    blocks = -(-n // BLOCK)
    padded = F.pad(weight.detach(), (0, 0, 0, blocks * BLOCK - n))  # [blocks * 16, K]
    data = padded.view(blocks, BLOCK, k // group, group).permute(0, 2, 1, 3).contiguous()
    if weight.dtype == torch.int8:
        if scales is None or scales.shape != (n,):
            raise ValueError(f"an int8 weight [{n}, {k}] needs scales of shape [{n}]")
        scales = scales.to(torch.bfloat16).contiguous()
    return BlockedWeight(data, n, k, scales)


def blocked_linear(x: torch.Tensor, weight: BlockedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x: [..., K] -> x W^T (+ bias): [..., N], in the weight's dtype (bfloat16 for int8 weights, whose x and
    bias are bfloat16 too), through the compiled kernel."""
    lead = x.shape[:-1]
    out = require_kernels("blocked_linear").blocked_linear(
        x.reshape(-1, x.shape[-1]), weight.data, weight.out_features, bias, weight.scales
    )
    return out.view(*lead, weight.out_features)
