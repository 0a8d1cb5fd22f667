"""Opaque ops for ``torch.compile`` (compiled decode runner -> model -> here -> packed linear / attention, eager).

``--enable-torch-compile`` traces the model's forward with TorchDynamo and compiles it with inductor. Two parts
of a layer cannot be traced and stay eager, each behind one custom op that inductor schedules as an extern call:

- a oneDNN-packed linear (its weight is an opaque MKLDNN tensor, which Dynamo's fake tensors cannot hold):
  ``sglkit::linear(x, handle, with_bias)`` -> ``[..., out]``;
- ``RadixAttention`` (the paged KV write and the backend's Python metadata, indexed by the ForwardBatch):
  ``sglkit::radix_attention(q, k, v, handle)`` -> ``[T, Hq*D]``.

The ops take integer handles, not modules: ``register_compiled_modules(model)`` numbers every ``Linear`` and
``RadixAttention`` of the model once, and the ops look the module up at run time, so weight updates (re-packing)
need no recompile. The ForwardBatch of the pass being run is set by ``current_forward_batch`` around the
compiled call. Everything outside the two ops (norms, rotary, activations, residual adds, views) is fused by
inductor into a few C++ loops per layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from sglkit.core.forward_batch import ForwardBatch

__all__ = [
    "compiled_attention",
    "compiled_linear",
    "current_forward_batch",
    "register_compiled_modules",
]

_MODULES: list[nn.Module] = []  # handle -> module (a Linear or a RadixAttention)
_BATCH: list[Any] = [None]  # the ForwardBatch of the compiled pass running now


def register_compiled_modules(model: nn.Module) -> int:
    """Give every module of ``model`` whose class declares ``compiled_handle`` (``Linear``, ``RadixAttention``)
    the handle the custom ops look it up by; returns how many were numbered. Modules already numbered keep theirs."""
    count = 0
    for module in model.modules():
        if hasattr(module, "compiled_handle") and module.compiled_handle is None:
            module.compiled_handle = len(_MODULES)
            _MODULES.append(module)
            count += 1
    return count


def _module(handle: int) -> nn.Module:
    return _MODULES[handle]


@contextmanager
def current_forward_batch(forward_batch: ForwardBatch) -> Iterator[None]:
    """Make ``forward_batch`` the one the attention op reads while the compiled forward runs."""
    previous, _BATCH[0] = _BATCH[0], forward_batch
    try:
        yield
    finally:
        _BATCH[0] = previous


@torch.library.custom_op("sglkit::linear", mutates_args=())
def _linear_op(x: torch.Tensor, handle: int, with_bias: bool) -> torch.Tensor:
    """x: [..., in] -> [..., out] by the layer's linear method, eagerly (bias: the layer's, when asked)."""
    layer = _module(handle)
    return layer.linear_method.matmul(layer, x, layer.bias if with_bias else None)


@_linear_op.register_fake
def _linear_fake(x: torch.Tensor, handle: int, with_bias: bool) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], _module(handle).out_features)


@torch.library.custom_op("sglkit::radix_attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, handle: int) -> torch.Tensor:
    """q: [T, Hq*D], k/v: [T, Hkv*D] -> [T, Hq*D]: the layer's KV write and attention, eagerly."""
    if _BATCH[0] is None:
        raise RuntimeError("sglkit::radix_attention ran outside current_forward_batch().")
    return _module(handle).forward_eager(q, k, v, _BATCH[0])


@_attention_op.register_fake
def _attention_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, handle: int) -> torch.Tensor:
    return q.new_empty(q.shape)


def _handle(module: nn.Module) -> int:
    handle = getattr(module, "compiled_handle", None)
    if handle is None:
        raise RuntimeError(
            f"{type(module).__name__} is traced by torch.compile without a handle; call "
            "register_compiled_modules(model) before compiling."
        )
    return handle


def compiled_linear(layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Under Dynamo: the layer's matmul as the opaque ``sglkit::linear`` op. ``bias`` is None or the layer's."""
    return _linear_op(x, _handle(layer), bias is not None)


def compiled_attention(layer: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Under Dynamo: the layer's attention (KV write included) as the opaque ``sglkit::radix_attention`` op."""
    return _attention_op(q, k, v, _handle(layer))
