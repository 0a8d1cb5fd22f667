"""Collectives of the tensor-parallel group: what layers (all-reduce, all-gather) and rank processes
(object broadcast, agreeing on a minimum) call. Each is the identity when tp_size is 1, so single-process code
never touches torch.distributed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from sglkit.parallel.state import get_cpu_group, get_tp_group, get_tp_size

__all__ = [
    "all_reduce_min_int",
    "broadcast_object",
    "tensor_model_parallel_all_gather",
    "tensor_model_parallel_all_reduce",
]


def tensor_model_parallel_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """x: [...] -> [...] summed over the tp ranks (in place when possible; returns the result)."""
    if get_tp_size() == 1:
        return x
    if not x.is_contiguous():
        x = x.contiguous()
    dist.all_reduce(x, op=dist.ReduceOp.SUM, group=get_tp_group())
    return x


def tensor_model_parallel_all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """x: [..., n, ...] (this rank's part) -> [..., tp * n, ...]: the ranks' parts concatenated along ``dim``."""
    tp_size = get_tp_size()
    if tp_size == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(tp_size)]
    dist.all_gather(parts, x, group=get_tp_group())
    return torch.cat(parts, dim=dim)


def broadcast_object(obj: Any = None, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (pickled over the CPU group); other ranks' ``obj`` is ignored."""
    if get_tp_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=get_cpu_group())
    return box[0]


def all_reduce_min_int(value: int) -> int:
    """The smallest ``value`` over the tp ranks (e.g. the KV pool size every rank can hold)."""
    if get_tp_size() == 1:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=get_cpu_group())
    return int(t.item())
