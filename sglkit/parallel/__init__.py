"""Parallelism on torch.distributed: the tensor-parallel group of this rank and its collectives.

``initialize_model_parallel`` once per rank process, before the model is built; layers read
``get_tp_rank()`` / ``get_tp_size()`` and call the collectives, which are identities at tp_size 1.
"""

from sglkit.parallel.communication import (
    all_reduce_min_int,
    broadcast_object,
    tensor_model_parallel_all_gather,
    tensor_model_parallel_all_reduce,
)
from sglkit.parallel.state import (
    destroy_model_parallel,
    get_cpu_group,
    get_tp_group,
    get_tp_rank,
    get_tp_size,
    initialize_model_parallel,
    model_parallel_is_initialized,
)

__all__ = [
    "all_reduce_min_int",
    "broadcast_object",
    "destroy_model_parallel",
    "get_cpu_group",
    "get_tp_group",
    "get_tp_rank",
    "get_tp_size",
    "initialize_model_parallel",
    "model_parallel_is_initialized",
    "tensor_model_parallel_all_gather",
    "tensor_model_parallel_all_reduce",
]
