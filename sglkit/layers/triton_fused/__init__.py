"""Fused Triton ops of the decoder layer on CUDA (norm -> rotary -> activation), chosen per call by the layers.

``RMSNorm`` (with the residual add), ``RotaryEmbedding`` and ``SiluAndMul`` call ``fused_ops_enabled(x)``
and, when it is true, the kernel in ``rmsnorm`` / ``rope`` / ``activation`` of this package instead of their
torch code: one kernel where eager torch launches 2 to 16. This module imports no triton: the kernel modules
are imported only on that path, so ``import sglkit`` stays light and CPU runs never touch triton.

On CPU the torch code always runs, unless ``SGLKIT_TRITON_FUSED=1`` asks for the kernels explicitly (tests,
with ``TRITON_INTERPRET=1`` set before triton is imported). ``SGLKIT_TRITON_FUSED=0`` turns them off on CUDA
too (to compare against the torch code). Both are read once, at import.
"""

from __future__ import annotations

import os

import torch

__all__ = ["FUSED_OPS_ENV", "fused_ops_enabled", "set_fused_ops_on_cuda"]

FUSED_OPS_ENV = "SGLKIT_TRITON_FUSED"  # "1": also on CPU (under TRITON_INTERPRET=1); "0": never; unset: CUDA
_SETTING = os.environ.get(FUSED_OPS_ENV, "")
_ON_CUDA = _SETTING != "0"
_ON_CPU = _SETTING == "1"


def fused_ops_enabled(x: torch.Tensor) -> bool:
    """True when the layers should run the fused Triton op on ``x``: on CUDA (unless disabled), on CPU if forced."""
    return _ON_CUDA if x.is_cuda else _ON_CPU


def set_fused_ops_on_cuda(enabled: bool) -> bool:
    """Turn the fused ops on CUDA on or off for this process (benchmarks compare both); returns the old setting."""
    global _ON_CUDA
    old, _ON_CUDA = _ON_CUDA, bool(enabled)
    return old
