"""Model layers: oneDNN weight packing on CPU (loaded ``Linear.weight`` -> blocked layout -> ``_linear_pointwise``).

``torch.ops.mkldnn._reorder_linear_weight(w, batch_size_hint)`` returns an opaque MKLDNN tensor
(``layout=torch._mkldnn``) in the blocked format oneDNN picks for this CPU and that batch size; ``.to_dense()``
reverses it exactly and
``torch.ops.mkldnn._nbytes`` gives its size (the dense size, or a little more where blocks are padded). float32
packs everywhere oneDNN runs; bfloat16 only on CPUs with AVX-512 (BW/VL/DQ) or AVX-NE-CONVERT: elsewhere the
reorder raises and the layer keeps its plain weight (``F.linear``).

The hint matters: with None (any batch) the blocked weight made one-token decode GEMMs 1.3-1.6x slower than
``F.linear`` on an AVX2 EPYC (whole model: 0.7-0.8x decode tok/s at batch 1); with hint 1 they match or beat
``F.linear`` at 1 row and keep the blocked format's 1.2-1.4x gain at 32-256 rows (docs/quantization.md).

On an AVX-512 CPU (AVX512-BF16 for bfloat16) the weight takes sglkit's own kernel instead
(``sglkit.layers.cpu_kernels``: a ``BlockedWeight``): 1.2-1.9x oneDNN's speed at 1-8 rows, level with it at 512
(whole model: 1.3-1.5x decode tok/s at batch 1; docs/cpu.md). ``kernel="onednn"`` keeps oneDNN there.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from sglkit.layers.compiled_ops import compiled_linear
from sglkit.layers.cpu_kernels.blocked_gemm import BlockedWeight, block_weight, blocked_linear
from sglkit.layers.quantization.base import LinearMethod

if TYPE_CHECKING:
    from sglkit.layers.linear import Linear

logger = logging.getLogger(__name__)

__all__ = [
    "BATCH_SIZE_HINT",
    "KERNELS",
    "PACKABLE_DTYPES",
    "PackedLinearMethod",
    "PackedWeight",
    "pack_weight",
    "packed_matmul",
    "packed_nbytes",
]

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)
BATCH_SIZE_HINT = 1  # rows oneDNN tunes the blocked layout for (decode); see the module docstring
# auto: sglkit's kernel where it runs (AVX-512: float32; bfloat16 with AVX512-BF16), else oneDNN
KERNELS = ("auto", "onednn", "blocked")

PackedWeight = torch.Tensor | BlockedWeight  # an opaque MKLDNN tensor, or sglkit's blocked layout


def pack_weight(
    weight: torch.Tensor, batch_size_hint: int | None = BATCH_SIZE_HINT, kernel: str = "auto"
) -> PackedWeight | None:
    """weight: [out, in] -> its blocked copy for ``kernel`` (see KERNELS; a oneDNN copy is checked by one GEMM),
    or None where it cannot be blocked here (not CPU, a dtype that kernel does not take on this CPU, no mkldnn)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}.")
    if kernel != "onednn":
        blocked = block_weight(weight)
        if blocked is not None or kernel == "blocked":
            return blocked
    if (
        weight.device.type != "cpu"
        or weight.dtype not in PACKABLE_DTYPES
        or not torch.backends.mkldnn.is_available()
    ):
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_size_hint)
        probe = torch.zeros(1, weight.shape[1], dtype=weight.dtype)
        torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [], "")
    except (RuntimeError, AttributeError) as e:
        logger.debug(f"oneDNN weight packing unavailable ({e}); using F.linear.")
        return None
    return packed


def packed_matmul(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x: [..., in] -> [..., out] through a weight from ``pack_weight`` (x in the weight's dtype, no autograd)."""
    if isinstance(packed, BlockedWeight):
        return blocked_linear(x, packed, bias)
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")


def packed_nbytes(packed: PackedWeight) -> int:
    """Bytes a weight from ``pack_weight`` holds."""
    if isinstance(packed, BlockedWeight):
        return packed.nbytes()
    return int(torch.ops.mkldnn._nbytes(packed))


class PackedLinearMethod(LinearMethod):
    """The weight as one blocked tensor (CPU: sglkit's kernel or oneDNN, ``pack_weight``); else the plain one."""

    name = "packed"

    def __init__(self, batch_size_hint: int | None = BATCH_SIZE_HINT, kernel: str = "auto") -> None:
        super().__init__()
        self.batch_size_hint = batch_size_hint
        self.kernel = kernel
        self.packed: PackedWeight | None = None  # [out, in] logically

    def create(self, layer: Linear) -> bool:
        """Block ``layer.weight`` (``pack_weight``); False (plain weight) when no kernel takes it here."""
        self.packed = pack_weight(layer.weight, self.batch_size_hint, self.kernel)
        return self.packed is not None

    def matmul(self, layer: Linear, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x: [..., in] -> [..., out] through the blocked weight (autograd or another dtype: unpacked F.linear)."""
        if torch.compiler.is_compiling():  # an MKLDNN tensor cannot be traced: an opaque op (compiled_ops)
            return compiled_linear(layer, x, bias)
        if x.dtype != layer.weight.dtype or (x.requires_grad and torch.is_grad_enabled()):
            return F.linear(x, self.unpack(layer), bias)
        return packed_matmul(x, self.packed, None if bias is None else bias.detach())

    def kernel_weight(self) -> BlockedWeight | None:
        """The weight in sglkit's blocked layout, when it holds that form (not oneDNN's)."""
        return self.packed if self.processed and isinstance(self.packed, BlockedWeight) else None

    def unpack(self, layer: Linear) -> torch.Tensor:
        """The blocked weight back to a plain [out, in] tensor (exact)."""
        return self.packed.to_dense()

    def clear(self) -> None:
        """Drop the blocked weight."""
        self.packed = None

    def held_bytes(self) -> int:
        """Bytes of the blocked weight."""
        return packed_nbytes(self.packed)
