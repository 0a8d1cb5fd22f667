"""Model layers: the linear-method seam (checkpoint -> ``Linear.weight`` -> method's form -> x W^T + b).

Every ``Linear`` loads its checkpoint into a plain ``weight`` [out, in] (the weight loaders, tensor-parallel
slicing and ``update_weights`` all write there). Its *linear method* then decides how the GEMM reads it:

==========================  ====================================================  ===================================
method                      held after ``process_weights_after_loading``          GEMM
==========================  ====================================================  ===================================
``DenseLinearMethod``       ``weight`` as loaded                                  ``F.linear``
``PackedLinearMethod``      a oneDNN-blocked copy (CPU, where oneDNN packs)       ``mkldnn._linear_pointwise``
``Int8WeightOnlyMethod``    int8 [out, in] + one scale per output channel         ``aten._weight_int8pack_mm``
``Int4WeightOnlyMethod``    int4 group-wise (tinygemm CPU layout) + scales/zeros  ``aten._weight_int4pack_mm_for_cpu``
==========================  ====================================================  ===================================

(On AVX-512 CPUs packed and int8 weights go to sglkit's blocked GEMM instead: ``sglkit.layers.cpu_kernels``.)
A method that replaces the weight frees the plain copy: ``weight`` stays a Parameter of the same shape and
dtype (so ``named_parameters``, loaders and shape checks keep working) whose data is one zero broadcast over
that shape, and every weight is held once. Reading the weight back goes through ``dense_weight`` (exact for
packing, dequantized for the int methods; ``Linear.state_dict`` does this). Loading into a processed layer first
calls ``release`` (a fresh, uninitialised plain weight), so ``update_weights`` loads and re-processes as at start.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from sglkit.layers.cpu_kernels.blocked_gemm import BlockedWeight
    from sglkit.layers.linear import Linear

__all__ = [
    "DenseLinearMethod",
    "LinearMethod",
    "free_weight",
    "kernel_input",
    "pad_to",
    "watch_weight_forms",
]

KERNEL_ALIGN = 64  # bytes: the int8 CPU kernel loads activation rows with aligned AVX loads


_form_watchers: weakref.WeakSet[Any] = weakref.WeakSet()


def watch_weight_forms(watcher: Any) -> None:
    """Call ``watcher.weight_forms_changed()`` whenever a linear method builds or drops its form (loading,
    ``update_weights``, a new method): for whatever caches the forms (the CPU decode stack). Held weakly."""
    _form_watchers.add(watcher)


def _forms_changed() -> None:
    for watcher in list(_form_watchers):
        watcher.weight_forms_changed()


def pad_to(n: int, multiple: int) -> int:
    """n rounded up to a multiple of ``multiple``."""
    return -(-n // multiple) * multiple


def free_weight(layer: Linear) -> None:
    """Drop the plain weight's storage: ``layer.weight`` keeps its shape and dtype, its data is one zero."""
    w = layer.weight
    w.data = torch.zeros((), dtype=w.dtype, device=w.device).expand(w.shape)


def kernel_input(x: torch.Tensor, dtype: torch.dtype, pad: int) -> torch.Tensor:
    """x: [..., K] -> [M, K + pad] contiguous, in ``dtype``, zero-padded on the right and 64-byte aligned."""
    x2 = x.reshape(-1, x.shape[-1]).to(dtype)
    if pad:
        x2 = F.pad(x2, (0, pad))
    x2 = x2.contiguous()
    if x2.data_ptr() % KERNEL_ALIGN:
        x2 = x2.clone()
    return x2


class LinearMethod:
    """How one ``Linear`` holds and applies its weight once loaded (one instance per layer: it keeps its state).

    Subclasses implement ``create`` (build their form from ``layer.weight``; False keeps the plain weight),
    ``matmul`` (x [M, in] -> [M, out] from that form), ``unpack`` (back to [out, in]) and ``held_bytes``.
    """

    name = "dense"

    def __init__(self) -> None:
        self.processed = False  # True while the layer's weight lives in this method's form (plain copy freed)

    def process_weights_after_loading(self, layer: Linear) -> bool:
        """Turn the loaded ``layer.weight`` into this method's form and free it; False: the plain weight stays."""
        if self.processed:
            return True
        with torch.no_grad():
            if not self.create(layer):
                return False
        free_weight(layer)
        self.processed = True
        _forms_changed()
        return True

    def apply(self, layer: Linear, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x: [..., in] -> x W^T (+ bias): [..., out]."""
        if not self.processed:
            return F.linear(x, layer.weight, bias)
        return self.matmul(layer, x, bias)

    def dense_weight(self, layer: Linear) -> torch.Tensor:
        """The weight as a plain [out, in] tensor of the layer's dtype (unpacked or dequantized when processed)."""
        return self.unpack(layer) if self.processed else layer.weight

    def release(self, layer: Linear) -> None:
        """Back to a plain, uninitialised weight (about to be overwritten by a load); the method's form is dropped."""
        if not self.processed:
            return
        w = layer.weight
        self.clear()
        self.processed = False
        _forms_changed()
        w.data = torch.empty(w.shape, dtype=w.dtype, device=w.device)

    def restore(self, layer: Linear) -> None:
        """Back to the plain weight with its values (unpacked / dequantized); the method's form is dropped."""
        if not self.processed:
            return
        dense = self.unpack(layer)
        self.clear()
        self.processed = False
        _forms_changed()
        layer.weight.data = dense

    def kernel_weight(self) -> BlockedWeight | None:
        """The weight in sglkit's blocked CPU layout when ``matmul`` is ``blocked_linear`` on it (int8: on x cast
        to bfloat16, the product cast back, the bias added after); None for every other form."""
        return None

    def weight_bytes(self, layer: Linear) -> int:
        """Bytes this layer holds for its weight (the plain tensor, or this method's form)."""
        if not self.processed:
            w = layer.weight
            return w.numel() * w.element_size()
        return self.held_bytes()

    # ----- what a method that replaces the weight implements -----
    def create(self, layer: Linear) -> bool:
        """Build this method's form from ``layer.weight``; False to keep the plain weight (F.linear)."""
        return False

    def matmul(self, layer: Linear, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x: [..., in] -> [..., out] from this method's form."""
        raise NotImplementedError

    def unpack(self, layer: Linear) -> torch.Tensor:
        """This method's form back to a plain [out, in] tensor of the layer's dtype."""
        raise NotImplementedError

    def clear(self) -> None:
        """Drop this method's tensors."""

    def held_bytes(self) -> int:
        """Bytes of this method's tensors."""
        return 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(processed={self.processed})"


class DenseLinearMethod(LinearMethod):
    """The plain weight and ``F.linear``, on every device and dtype (nothing to process)."""

    name = "dense"
