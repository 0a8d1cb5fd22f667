"""Fused Triton ops: RMSNorm with the residual add in one kernel (decoder layer -> norm -> attention/MLP).

Same numerics as ``sglkit.layers.norm``: the residual sum is rounded to the input dtype (as ``x + residual``
in torch), normalised in float32, then either cast and multiplied by the weight in the input dtype
(``RMSNorm``) or multiplied by ``offset + weight`` in float32 and cast (``Float32WeightRMSNorm``, Gemma).
One program per row; the row lives in registers (hidden sizes up to 64k).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["rms_norm"]


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    residual_ptr,
    weight_ptr,
    out_ptr,
    new_residual_ptr,
    x_row_stride,
    residual_row_stride,
    out_row_stride,
    new_residual_row_stride,
    hidden_size,
    eps,
    weight_offset,
    HAS_RESIDUAL: tl.constexpr,
    WEIGHT_IN_FLOAT32: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden_size
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + row * residual_row_stride + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)  # rounded as torch's add
        tl.store(new_residual_ptr + row * new_residual_row_stride + cols, x, mask=mask)
    x32 = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x32 * x32, axis=0) / hidden_size + eps)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if WEIGHT_IN_FLOAT32:
        y = x32 * rstd * (w + weight_offset)
    else:
        y = w * (x32 * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * out_row_stride + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[..., H] -> [N, H] with a unit stride on the last dim (a view when possible)."""
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
    weight_in_float32: bool = False,
    weight_offset: float = 0.0,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """x: [..., H] -> norm(x) [..., H]; with ``residual``: (norm(x + residual), x + residual), as RMSNorm.forward.

    ``weight_in_float32`` / ``weight_offset``: the Float32WeightRMSNorm / GemmaRMSNorm numerics. The output
    dtype is the torch code's: the promotion of weight and x (cast-then-multiply), else x's dtype.
    """
    shape = x.shape
    hidden_size = shape[-1]
    x2 = _rows(x)
    out_dtype = x.dtype if weight_in_float32 else torch.promote_types(weight.dtype, x.dtype)
    out = torch.empty(x2.shape, dtype=out_dtype, device=x.device)
    if residual is not None:
        r2 = _rows(residual)
        new_residual = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    else:
        r2 = new_residual = x2  # unused by the kernel
    block = triton.next_power_of_2(hidden_size)
    num_warps = min(max(block // 256, 1), 16)
    if x2.shape[0] > 0:
        _rms_norm_kernel[(x2.shape[0],)](
            x2,
            r2,
            weight,
            out,
            new_residual,
            x2.stride(0),
            r2.stride(0),
            out.stride(0),
            new_residual.stride(0),
            hidden_size,
            eps,
            weight_offset,
            HAS_RESIDUAL=residual is not None,
            WEIGHT_IN_FLOAT32=weight_in_float32,
            BLOCK=block,
            num_warps=num_warps,
        )
    if residual is None:
        return out.view(shape)
    return out.view(shape), new_residual.view(shape)
