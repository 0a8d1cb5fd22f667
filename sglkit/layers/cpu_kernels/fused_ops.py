"""Model layers, CPU: the decoder layer's small ops in one C++ pass each (norm / rotary / activation / KV write ->
here -> csrc/fused_ops.cpp), the CPU counterpart of ``sglkit.layers.triton_fused``.

``RMSNorm`` (with the residual add, bfloat16), ``RotaryEmbedding``, ``SiluAndMul`` and the torch_native backend's
KV write (``set_kv_buffer``) call ``cpu_fused_ops_enabled(x)`` and, when it is true, the op here instead of their
torch code: one pass over the
row where eager torch runs 3 to 16 ops (each a dispatch, a temporary and a trip through memory). The numerics are
the torch code's, intermediate roundings to bfloat16 included; only RMSNorm's float32 sum of squares is summed
in another order. Measured on the 360M ``small`` shape: ``python -m sglkit.bench.fused_ops``.

On by default where the extension runs (AVX-512 F/BW/VL; float32 and bfloat16 tensors), off under
``torch.compile`` tracing (inductor fuses the torch code itself), with ``SGLKIT_CPU_KERNELS=0``, or with
``SGLKIT_CPU_FUSED_OPS=0`` (read at import; ``set_cpu_fused_ops`` switches it at run time, for A/B runs).
"""

from __future__ import annotations

import os

import torch

from sglkit.layers.cpu_kernels import load_kernels, require_kernels

__all__ = [
    "CPU_FUSED_OPS_ENV",
    "apply_rope",
    "cpu_fused_ops_enabled",
    "rms_norm",
    "set_cpu_fused_ops",
    "silu_and_mul",
    "store_kv",
]

CPU_FUSED_OPS_ENV = "SGLKIT_CPU_FUSED_OPS"
DTYPES = (torch.float32, torch.bfloat16)
_enabled = os.environ.get(CPU_FUSED_OPS_ENV, "").lower() not in ("0", "off", "false")
_available: bool | None = None  # whether the built extension has them; known after the first call


def _kernels_have_fused_ops() -> bool:
    global _available
    if _available is None:
        kernels = load_kernels()
        _available = kernels is not None and kernels.fused_ops_supported()
    return _available


def cpu_fused_ops_enabled(x: torch.Tensor) -> bool:
    """True when a layer should run its fused C++ op on ``x``: a float32 / bfloat16 CPU tensor, the ops built
    and switched on, and no ``torch.compile`` trace in progress."""
    return (  # the trace check first: a trace must not reach the extension's loader (a lock: a graph break)
        _enabled
        and not torch.compiler.is_compiling()
        and x.device.type == "cpu"
        and x.dtype in DTYPES
        and _kernels_have_fused_ops()
    )


def set_cpu_fused_ops(enabled: bool) -> bool:
    """Switch the fused CPU ops on or off for this process (benchmarks and tests compare both); returns the old
    setting."""
    global _enabled
    old, _enabled = _enabled, bool(enabled)
    return old


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
    weight_in_float32: bool = False,
    weight_offset: float = 0.0,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """x: [..., H] -> norm(x) [..., H]; with ``residual``: (norm(x + residual), x + residual), as RMSNorm.forward.

    ``weight`` [H] of x's dtype; ``weight_in_float32`` / ``weight_offset``: Float32WeightRMSNorm / Gemma numerics.
    """
    out, new_residual = require_kernels("rms_norm").rms_norm(
        x, residual, weight, eps, weight_in_float32, weight_offset
    )
    return out if residual is None else (out, new_residual)


def apply_rope(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor, rotary_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (cache rows): [T], q: [T, Hq, D], k: [T, Hkv, D] (strided views allowed), cos_sin_cache:
    [rows, R] float32 -> new contiguous (q, k), the first R dims of each head rotated (NeoX halves)."""
    return require_kernels("apply_rope").rotary_embedding(positions, q, k, cos_sin_cache, rotary_dim)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [..., 2I] -> [..., I] = silu(x[..., :I]) * x[..., I:]."""
    return require_kernels("silu_and_mul").silu_and_mul(x)


def store_kv(
    k_buf: torch.Tensor, v_buf: torch.Tensor, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> None:
    """k_buf, v_buf: [S, Hkv, D]; loc: [T]; k, v: [T, Hkv, D] of the buffers' dtype -> written at those slots
    (every slot checked to lie in the pool first)."""
    require_kernels("store_kv").store_kv(k_buf, v_buf, loc, k, v)
