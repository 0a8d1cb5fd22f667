"""Fused Triton ops: SiLU-and-mul of the gated MLP in one kernel (gate_up_proj -> act_and_mul -> down_proj).

Same numerics as ``sglkit.layers.activation.SiluAndMul``: silu(gate) computed in float32 and rounded to the
input dtype, then multiplied by the value in float32 and rounded (what eager torch does in two kernels).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["silu_and_mul"]


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, x_row_stride, out_row_stride, inter_size, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter_size
    gate = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * x_row_stride + inter_size + cols, mask=mask, other=0.0).to(tl.float32)
    act = (gate / (1.0 + tl.exp(-gate))).to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * out_row_stride + cols, (act * up).to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [..., 2I] -> [..., I] = silu(x[..., :I]) * x[..., I:]."""
    shape = x.shape
    inter_size = shape[-1] // 2
    x2 = x.reshape(-1, shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty((x2.shape[0], inter_size), dtype=x.dtype, device=x.device)
    block = min(triton.next_power_of_2(inter_size), 1024)
    if x2.shape[0] > 0 and inter_size > 0:
        grid = (x2.shape[0], triton.cdiv(inter_size, block))
        _silu_and_mul_kernel[grid](x2, out, x2.stride(0), out.stride(0), inter_size, BLOCK=block, num_warps=4)
    return out.view(*shape[:-1], inter_size)
