"""One tensor-parallel rank: its device, its place in the torch.distributed group, and the follower process.

Where it sits: ``rank_group`` spawns one process per local rank; rank 0 runs the scheduler process
(``process.run_scheduler_process``, talking ZMQ to the HTTP server) or lives inside ``sglkit.Engine``; every
other rank runs :func:`run_follower_process`: load this rank's shard of the model, report readiness, then replay
rank 0's calls (``mirror.follow``) until rank 0 says shutdown or its broadcasts stop (a failed collective).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
import traceback
from dataclasses import dataclass

from sglkit.launch.log_format import configure_logging
from sglkit.launch.parent_death import die_with_parent
from sglkit.launch.ports import pick_free_port
from sglkit.server_args import ServerArgs

logger = logging.getLogger("sglkit.scheduler")

DEFAULT_DIST_TIMEOUT_S = 600.0


@dataclass
class PortArgs:
    """ZMQ endpoints between the HTTP process and the scheduler process."""

    scheduler_input: str  # HTTP -> scheduler (PUSH/PULL)
    scheduler_output: str  # scheduler -> HTTP (PUSH/PULL)


def default_init_method(server_args: ServerArgs) -> str:
    """``tcp://{dist_init_addr}``, else a free local port (picked per call: each replica gets its own group)."""
    if server_args.dist_init_addr:
        return f"tcp://{server_args.dist_init_addr}"
    return f"tcp://127.0.0.1:{pick_free_port()}"


def node_ranks(server_args: ServerArgs) -> list[int]:
    """The tp ranks this node runs: node_rank * tp_size_per_node, ... (one per local device)."""
    per_node = server_args.tp_size_per_node
    return list(range(server_args.node_rank * per_node, (server_args.node_rank + 1) * per_node))


def rank_server_args(server_args: ServerArgs, tp_rank: int) -> ServerArgs:
    """``server_args`` for one rank: on CUDA its own device, cuda:(base_gpu_id + local rank)."""
    if server_args.tp_size == 1:
        return server_args
    device = server_args.resolved_device()
    if not device.startswith("cuda"):
        return server_args
    local_rank = tp_rank % server_args.tp_size_per_node
    return dataclasses.replace(server_args, device=f"cuda:{server_args.base_gpu_id + local_rank}")


def setup_rank(
    server_args: ServerArgs, tp_rank: int, init_method: str, set_threads: bool = True
) -> ServerArgs:
    """Join the tp group as ``tp_rank`` (blocks until every rank joined); returns this rank's server args.

    NCCL on CUDA, gloo on CPU; every collective is bounded by ``dist_timeout``. With ``set_threads`` on CPU, the
    node's cores are shared between its ranks (torch threads = cores / ranks per node). No-op at tp_size 1.
    """
    if server_args.tp_size == 1:
        return server_args
    import torch

    from sglkit.parallel import initialize_model_parallel

    args = rank_server_args(server_args, tp_rank)
    device = args.resolved_device()
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    elif set_threads and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // server_args.tp_size_per_node))
    initialize_model_parallel(
        tp_rank,
        server_args.tp_size,
        init_method,
        backend="nccl" if device.startswith("cuda") else "gloo",
        timeout_s=server_args.dist_timeout or DEFAULT_DIST_TIMEOUT_S,
    )
    return args


def run_follower_process(
    server_args: ServerArgs,
    tp_rank: int,
    init_method: str,
    ready_pipe,
    parent_pid: int,
    with_parent: bool = True,
    new_session: bool = False,
) -> None:
    """Entry point of a follower rank process (rank > 0): load this rank's shard, report, mirror rank 0.

    Dies with its parent (``with_parent``: the spawning thread was the main thread); ``new_session`` makes it lead
    its own session, so the notebook session watchdog can end it. Exits 0 when rank 0 shuts down, 1 when a
    collective fails (rank 0 or another rank died, or a timeout) or anything else goes wrong.
    """
    if with_parent:
        die_with_parent(signal.SIGKILL, parent_pid)
    if new_session:
        os.setsid()
    configure_logging(server_args.log_level, prefix=f"TP{tp_rank}")
    # SIGTERM: nothing to clean up, end at once (even inside a collective). Ctrl-C reaches the whole process group:
    # whoever spawned this rank stops it.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import tqdm

    tqdm.tqdm.set_lock(threading.RLock())  # tqdm's default multiprocessing lock would be reported as leaked
    ready = False
    try:
        setup_rank(server_args, tp_rank, init_method)
        from sglkit.runtime.scheduler import create_scheduler
        from sglkit.runtime.scheduler.mirror import follow

        scheduler = create_scheduler(rank_server_args(server_args, tp_rank))
        logging.getLogger("sglkit.runtime.scheduler").setLevel(logging.WARNING)  # rank 0 logs the batches
        ready_pipe.send({"status": "ready", "tp_rank": tp_rank})
        ready = True
        follow(scheduler)
    except Exception as e:  # noqa: BLE001 - reported (to the spawner while starting), then exit non-zero
        if not ready:
            ready_pipe.send(
                {
                    "status": "error",
                    "message": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc(),
                }
            )
        logger.error(f"Tensor-parallel rank {tp_rank} failed, exiting: {type(e).__name__}: {e}")
        sys.stderr.flush()
        os._exit(1)  # skip interpreter shutdown (a broken process group can hang its destructor)
    sys.stderr.flush()
    os._exit(0)
