"""Parallel state: the tensor-parallel process group of this process (torch.distributed), set once per rank.

A rank process calls ``initialize_model_parallel(tp_rank, tp_size, init_method)`` before building its model;
layers then read ``get_tp_rank()`` / ``get_tp_size()`` for their slice. Without it (a single process) every
getter answers as for tp_size 1: rank 0 of 1, no group, and the collectives of
``sglkit.parallel.communication`` are identities.

Groups: the main group (``get_tp_group``) carries tensors — NCCL on CUDA, gloo on CPU; when the main backend
is NCCL a second gloo group (``get_cpu_group``) carries pickled Python objects (scheduled batches, requests).
With gloo both are the same group.
"""

from __future__ import annotations

import datetime
import logging

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

__all__ = [
    "destroy_model_parallel",
    "get_cpu_group",
    "get_tp_group",
    "get_tp_rank",
    "get_tp_size",
    "initialize_model_parallel",
    "model_parallel_is_initialized",
]

_TP_RANK = 0
_TP_SIZE = 1
_TP_GROUP = None  # dist.ProcessGroup of all tp ranks (the default group)
_CPU_GROUP = None  # gloo group for objects (== _TP_GROUP with gloo)


def initialize_model_parallel(
    tp_rank: int,
    tp_size: int,
    init_method: str,
    backend: str | None = None,
    timeout_s: float = 600.0,
) -> None:
    """Join the tensor-parallel group as ``tp_rank`` of ``tp_size`` (blocks until every rank has joined).

    ``init_method``: a torch.distributed URL, e.g. ``tcp://127.0.0.1:29500`` (rank 0 listens there).
    ``backend``: "nccl" or "gloo"; default "nccl" when CUDA is available, else "gloo". ``timeout_s`` bounds
    every collective, so a dead rank makes the others fail instead of hanging forever. With NCCL, select this
    rank's GPU first (``torch.cuda.set_device``; on several nodes the local rank, not ``tp_rank``).
    """
    global _TP_RANK, _TP_SIZE, _TP_GROUP, _CPU_GROUP
    if model_parallel_is_initialized():
        raise RuntimeError(
            "Model parallel state is already initialized; call destroy_model_parallel() first."
        )
    if not 0 <= tp_rank < tp_size:
        raise ValueError(f"tp_rank={tp_rank} is not in [0, tp_size={tp_size}).")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    timeout = datetime.timedelta(seconds=timeout_s)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend, init_method=init_method, world_size=tp_size, rank=tp_rank, timeout=timeout
        )
    _TP_GROUP = dist.group.WORLD
    if dist.get_backend(_TP_GROUP) == "gloo":
        _CPU_GROUP = _TP_GROUP
    else:
        _CPU_GROUP = dist.new_group(ranks=list(range(tp_size)), backend="gloo", timeout=timeout)
    _TP_RANK, _TP_SIZE = tp_rank, tp_size
    logger.info(f"Tensor parallel rank {tp_rank} of {tp_size} initialized ({backend}, {init_method}).")


def model_parallel_is_initialized() -> bool:
    """True between ``initialize_model_parallel`` and ``destroy_model_parallel``."""
    return _TP_GROUP is not None


def get_tp_rank() -> int:
    """This process's tensor-parallel rank (0 when not initialized)."""
    return _TP_RANK


def get_tp_size() -> int:
    """The number of tensor-parallel ranks (1 when not initialized)."""
    return _TP_SIZE


def get_tp_group():
    """The process group of the tp ranks (carries tensors), or None when not initialized."""
    return _TP_GROUP


def get_cpu_group():
    """The gloo group of the tp ranks (carries pickled objects), or None when not initialized."""
    return _CPU_GROUP


def destroy_model_parallel() -> None:
    """Leave the groups and reset to tp_size 1 (safe to call when not initialized)."""
    global _TP_RANK, _TP_SIZE, _TP_GROUP, _CPU_GROUP
    if dist.is_initialized():
        try:
            dist.destroy_process_group()  # destroys every group, the CPU one too
        except Exception as e:  # noqa: BLE001 - teardown must not mask the original error
            logger.warning(f"destroy_process_group failed: {e}")
    _TP_RANK, _TP_SIZE, _TP_GROUP, _CPU_GROUP = 0, 1, None, None
