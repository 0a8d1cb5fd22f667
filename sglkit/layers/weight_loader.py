"""Model layers: the copy rules behind every layer's ``weight_loader`` (checkpoint tensor -> this rank's parameter).

A parameterised layer attaches ``param.weight_loader(param, loaded_weight, shard_id=None)`` to each of its
parameters; ``sglkit.models.weight_utils.load_weights`` finds the parameter of a checkpoint name and calls it.
The loader knows the layer's layout: which rows of a fused parameter a shard fills, and which slice of the
full checkpoint tensor this tensor-parallel rank keeps (``shard_tensor``). Copies are strict: a tensor of
another shape raises instead of broadcasting (``copy_weight``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["WeightLoader", "copy_weight", "default_weight_loader", "set_weight_loader", "shard_tensor"]

# (param, loaded_weight, shard_id=None) -> None
WeightLoader = Callable[..., None]


def copy_weight(dst: torch.Tensor, src: torch.Tensor) -> None:
    """dst.copy_(src) (casting dtype/device) when the shapes are equal; otherwise raise, leaving dst untouched.

    A non-broadcastable pair raises torch's own message ("The size of tensor a (64) must match the size of
    tensor b (96) at non-singleton dimension 1"); a broadcastable one raises too (no silent broadcasting).
    """
    if dst.shape != src.shape:
        # Same shape check as the real copy, on meta tensors: torch's message, no data touched.
        torch.empty(dst.shape, device="meta").copy_(torch.empty(src.shape, device="meta"))
        raise RuntimeError(
            f"Size mismatch: checkpoint tensor {tuple(src.shape)} vs parameter {tuple(dst.shape)} "
            "(refusing to broadcast)."
        )
    dst.copy_(src)


def shard_tensor(loaded_weight: torch.Tensor, dim: int, rank: int, num_parts: int) -> torch.Tensor:
    """The ``rank``-th of ``num_parts`` equal slices of ``loaded_weight`` along ``dim`` (a view; itself if 1 part).

    loaded_weight: [..., N, ...] -> [..., N / num_parts, ...]. ValueError when N is not divisible.
    """
    if num_parts == 1:
        return loaded_weight
    size = loaded_weight.shape[dim]
    if size % num_parts:
        raise ValueError(
            f"Cannot split a checkpoint tensor of shape {tuple(loaded_weight.shape)} into {num_parts} "
            f"equal parts along dim {dim}."
        )
    part = size // num_parts
    return loaded_weight.narrow(dim, rank * part, part)


def default_weight_loader(param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: Any = None) -> None:
    """Whole-tensor copy for replicated parameters (norms, biases of row-parallel layers, plain modules)."""
    if shard_id is not None:
        raise ValueError(f"A replicated parameter has no shards; got shard_id={shard_id!r}.")
    copy_weight(param.data, loaded_weight)


def set_weight_loader(param: torch.nn.Parameter | None, loader: WeightLoader) -> None:
    """Attach ``loader`` as ``param.weight_loader`` (no-op for a missing parameter such as an absent bias)."""
    if param is not None:
        param.weight_loader = loader
