"""The server's scheduler replicas (HTTP process -> here -> rank processes): spawn, wait until ready, stop.

Imports nothing heavy (no torch, no FastAPI), so ``python -m sglkit.launch_server`` spawns the first replica's
rank processes before it imports the HTTP stack: the model loads in the children while the parent imports
FastAPI, transformers and the tokenizer (``ReplicaSet.start`` then ``wait_ready``). With ``dp_size`` N the
replicas start one after the other: replica k + 1 is spawned once replica k is ready, so each measures the free
memory left by the ones before it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile

from sglkit.launch.log_format import configure_logging
from sglkit.launch.ports import port_bind_error
from sglkit.runtime.scheduler.rank_group import RankGroup
from sglkit.runtime.scheduler.rank_process import PortArgs, default_init_method, node_ranks
from sglkit.server_args import ServerArgs

logger = logging.getLogger("sglkit.server")

__all__ = [
    "ReplicaSet",
    "begin_launch",
    "check_port_free",
    "replica_server_args",
    "share_cpu_threads",
    "spawn_scheduler",
    "start_scheduler",
    "stop_processes",
]


def check_port_free(host: str, port: int) -> None:
    """Fail fast (before loading the model) when the port is taken."""
    error = port_bind_error(port, host)
    if error is not None:
        raise RuntimeError(
            f"Port {port} on {host} is already in use ({error.strerror}). Pick another --port."
        ) from error


def begin_launch(server_args: ServerArgs) -> ReplicaSet:
    """The server's first steps: logging, the ``server_args=`` line, the port check, then the first replica
    spawned (not waited for)."""
    configure_logging(server_args.log_level)
    logger.info(f"server_args={server_args}")
    check_port_free(server_args.host, server_args.port)
    return ReplicaSet.start(server_args)


def spawn_scheduler(server_args: ServerArgs, ipc_dir: str) -> tuple[RankGroup, PortArgs]:
    """Spawn one replica's local rank processes without waiting for them (rank 0: ZMQ sockets in ``ipc_dir``)."""
    port_args = PortArgs(f"ipc://{ipc_dir}/scheduler_input", f"ipc://{ipc_dir}/scheduler_output")
    init_method = default_init_method(server_args) if server_args.tp_size > 1 else None
    return RankGroup.launch(server_args, node_ranks(server_args), init_method, port_args), port_args


def start_scheduler(server_args: ServerArgs, ipc_dir: str) -> tuple[RankGroup, PortArgs, dict]:
    """Spawn this node's rank processes and wait until each has loaded its shard; raise with a rank's error.

    Rank 0 is the scheduler process (ZMQ sockets in ``ipc_dir``); with tp_size > 1 the other local ranks mirror
    it, meeting at ``tcp://{dist_init_addr}`` or at a free local port picked for this call. The returned
    ``RankGroup`` behaves as one process: alive while every rank is, and stopped as a whole.
    """
    group, port_args = spawn_scheduler(server_args, ipc_dir)
    try:
        info = group.wait_ready()
    except BaseException:
        group.stop()
        raise
    return group, port_args, info


def replica_server_args(server_args: ServerArgs, dp_rank: int) -> ServerArgs:
    """Data-parallel replica ``dp_rank``'s arguments: on CUDA its own devices (after the previous replicas'
    ``tp_size`` ranks), and its own rendezvous port when ``dist_init_addr`` is given."""
    if server_args.dp_size == 1:
        return server_args
    changes: dict = {}
    if server_args.resolved_device().startswith("cuda"):
        changes["base_gpu_id"] = server_args.base_gpu_id + dp_rank * server_args.tp_size_per_node
    if server_args.dist_init_addr:
        host, _, port = server_args.dist_init_addr.rpartition(":")
        changes["dist_init_addr"] = f"{host}:{int(port) + dp_rank}"
    return dataclasses.replace(server_args, **changes) if changes else server_args


def share_cpu_threads(server_args: ServerArgs) -> None:
    """On CPU with ``dp_size > 1``: the replicas' processes get cores // dp_size threads each (OMP_NUM_THREADS,
    inherited by the processes spawned next), unless OMP_NUM_THREADS is already set."""
    if server_args.dp_size == 1 or "OMP_NUM_THREADS" in os.environ:
        return
    if not server_args.resolved_device().startswith("cpu"):
        return
    threads = max(1, len(os.sched_getaffinity(0)) // server_args.dp_size)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    logger.info(f"dp_size={server_args.dp_size} on CPU: {threads} thread(s) per replica (OMP_NUM_THREADS).")


def stop_processes(processes: list) -> None:
    """Terminate every replica, then wait for each (killing whatever still runs after 5 s).

    Unconditional: a replica whose group has one dead rank reports ``is_alive() == False`` while its other ranks
    may still run, and ``terminate`` / ``kill`` only signal the processes still running.
    """
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=5)
        process.kill()
        process.join(timeout=5)


class ReplicaSet:
    """The ``dp_size`` scheduler replicas of one server, each a ``RankGroup`` with its own IPC sub-folder."""

    def __init__(self, server_args: ServerArgs) -> None:
        self.server_args = server_args
        self.ipc_dir = tempfile.mkdtemp(prefix="sglkit-ipc-")
        self.processes: list[RankGroup] = []
        self.port_args: list[PortArgs] = []
        self.infos: list[dict] = []

    @classmethod
    def start(cls, server_args: ServerArgs) -> ReplicaSet:
        """Spawn the first replica and return at once (``wait_ready`` waits for it and starts the others)."""
        replicas = cls(server_args)
        try:
            share_cpu_threads(server_args)
            replicas._spawn(0)
        except BaseException:
            replicas.stop()
            raise
        return replicas

    def _spawn(self, dp_rank: int) -> None:
        replica_dir = os.path.join(self.ipc_dir, f"dp{dp_rank}")
        os.makedirs(replica_dir)
        group, port_args = spawn_scheduler(replica_server_args(self.server_args, dp_rank), replica_dir)
        self.processes.append(group)
        self.port_args.append(port_args)

    def wait_ready(self) -> list[dict]:
        """Wait for every replica in turn (spawning each after the previous one is ready); their infos.

        Raises RuntimeError with a rank's error; the caller stops the set (``stop``)."""
        for dp_rank in range(self.server_args.dp_size):
            if dp_rank == len(self.processes):
                self._spawn(dp_rank)
            if dp_rank == len(self.infos):
                self.infos.append(self.processes[dp_rank].wait_ready())
        return self.infos

    def stop(self) -> None:
        """Stop every replica's processes and remove the IPC folder."""
        stop_processes(self.processes)
        shutil.rmtree(self.ipc_dir, ignore_errors=True)
