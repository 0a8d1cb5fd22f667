"""The rank processes of one node: spawn them, wait until each has loaded its shard, watch them, stop them all.

Where it sits: the server's ``start_scheduler`` spawns node 0's ranks (rank 0 = the scheduler process with the
ZMQ sockets, the rest followers), ``sglkit.Engine`` spawns the followers of its in-process rank 0, and a node
with ``node_rank > 0`` runs only its ranks (:func:`run_node`, no HTTP server). A :class:`RankGroup` looks like
one ``multiprocessing.Process`` to whoever watches it: alive while every rank is alive, ``terminate`` / ``kill``
/ ``join`` act on all of them (rank 0 first, so it can tell the others to shut down).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time

from sglkit.runtime.scheduler.rank_process import (
    PortArgs,
    default_init_method,
    node_ranks,
    run_follower_process,
)
from sglkit.server_args import ServerArgs

logger = logging.getLogger("sglkit.server")

LEADER_STOP_S = 3.0  # rank 0 gets this long to tell the followers to exit before they are signalled too


def _scheduler_process_main(*args) -> None:
    """Spawn target of rank 0: the scheduler module (torch, the model code) is imported in the child only, so a
    parent can spawn its ranks before importing anything heavy (``sglkit.server.replicas``)."""
    from sglkit.runtime.scheduler.process import run_scheduler_process

    run_scheduler_process(*args)


class RankGroup:
    """Local rank processes ({tp rank: process}) with the readiness pipe of each."""

    def __init__(self) -> None:
        self.processes: dict[int, mp.Process] = {}
        self._pipes: dict[int, object] = {}
        self.infos: dict[int, dict] = {}

    @classmethod
    def launch(
        cls,
        server_args: ServerArgs,
        ranks: list[int],
        init_method: str,
        port_args: PortArgs | None = None,
        new_session: bool = False,
    ) -> RankGroup:
        """Spawn one process per rank of ``ranks`` (rank 0 needs ``port_args``: it is the scheduler process)."""
        group = cls()
        ctx = mp.get_context("spawn")
        with_parent = threading.current_thread() is threading.main_thread()  # PDEATHSIG follows the thread
        try:
            for rank in ranks:
                reader, writer = ctx.Pipe(duplex=False)
                if rank == 0:
                    assert port_args is not None, (
                        "rank 0 is the scheduler process: it needs its ZMQ endpoints"
                    )
                    target = _scheduler_process_main
                    args = (server_args, port_args, writer, os.getpid(), init_method, with_parent)
                else:
                    target = run_follower_process
                    args = (server_args, rank, init_method, writer, os.getpid(), with_parent, new_session)
                name = "sglkit-scheduler" if rank == 0 else f"sglkit-tp{rank}"
                process = ctx.Process(target=target, args=args, name=name, daemon=True)
                process.start()
                writer.close()
                group.processes[rank], group._pipes[rank] = process, reader
        except BaseException:
            group.stop()
            raise
        return group

    # ----- start-up -----
    def wait_ready(self, should_stop=lambda: False) -> dict:
        """Block until every rank reported ready; returns rank 0's info (else the lowest rank's).

        Raises RuntimeError with the failing rank's error (or exit code) as soon as one rank fails, or when
        ``should_stop()`` turns true.
        """
        waiting = {rank: pipe for rank, pipe in self._pipes.items() if rank not in self.infos}
        while waiting:
            if should_stop():
                raise RuntimeError("Stopped during start-up.")
            for rank, pipe in list(waiting.items()):
                if pipe.poll():
                    try:
                        info = pipe.recv()
                    except EOFError:
                        info = {"status": "error", "message": "it exited without reporting"}
                    if info.get("status") != "ready":
                        self._raise_failed(rank, info)
                    self.infos[rank] = info
                    del waiting[rank]
                elif not self.processes[rank].is_alive() and not pipe.poll():
                    self._raise_failed(rank, {"message": f"exit code {self.processes[rank].exitcode}"})
            if waiting:
                time.sleep(0.1)
        return self.infos[min(self.infos)]

    def _raise_failed(self, rank: int, info: dict) -> None:
        what = "The scheduler process" if rank == 0 else f"Tensor-parallel rank {rank}"
        message = info.get("message", "unknown error")
        if "exit code" in message or "exited" in message:
            raise RuntimeError(f"{what} exited during start-up ({message}).")
        raise RuntimeError(f"{what} failed to start: {message}\n{info.get('traceback', '')}")

    # ----- the multiprocessing.Process look-alike -----
    @property
    def pid(self) -> int:
        """The pid of the lowest local rank (rank 0 on node 0)."""
        return self.processes[min(self.processes)].pid

    @property
    def name(self) -> str:
        """A name for logs."""
        return f"sglkit-ranks-{sorted(self.processes)}"

    def is_alive(self) -> bool:
        """True while every local rank is running (one dead rank means the group can no longer serve)."""
        return all(p.is_alive() for p in self.processes.values())

    @property
    def exitcode(self) -> int | None:
        """The exit code of the first rank (by rank) that ended, or None while all run."""
        for p in self.processes.values():
            if p.exitcode is not None:
                return p.exitcode
        return None

    def terminate(self) -> None:
        """SIGTERM rank 0 (it tells the followers to exit), wait briefly, then SIGTERM every rank still running."""
        leader = self.processes.get(0)
        if leader is not None and leader.is_alive():
            leader.terminate()
            leader.join(timeout=LEADER_STOP_S)
        for p in self.processes.values():
            if p.is_alive():
                p.terminate()

    def kill(self) -> None:
        """SIGKILL every rank still running."""
        for p in self.processes.values():
            if p.is_alive():
                p.kill()

    def join(self, timeout: float | None = None) -> None:
        """Wait for every rank to end (``timeout`` in total)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for p in self.processes.values():
            p.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def stop(self, timeout: float = 5.0) -> None:
        """terminate -> join(timeout) -> kill what is left -> reap. Idempotent."""
        self.terminate()
        self.join(timeout)
        self.kill()
        self.join(5.0)
        for pipe in self._pipes.values():
            pipe.close()
        self._pipes.clear()


def run_node(server_args: ServerArgs) -> int:
    """A node with ``node_rank > 0``: run its ranks (no HTTP server) until they exit; returns the exit code.

    0 when rank 0 shut the ranks down; 1 when a rank failed (including start-up, or node 0 going away).
    SIGTERM / SIGINT stop the ranks and return 128 + signal.
    """
    ranks = node_ranks(server_args)
    logger.info(
        f"Node {server_args.node_rank} of {server_args.nnodes}: starting tensor-parallel ranks {ranks}."
    )
    stopped: list[int] = []

    def on_signal(signum: int, _frame) -> None:
        stopped.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    group = RankGroup.launch(server_args, ranks, default_init_method(server_args))
    try:
        group.wait_ready(should_stop=lambda: bool(stopped))
        logger.info(f"Node {server_args.node_rank}: ranks {ranks} are ready.")
        while group.is_alive() and not stopped:
            time.sleep(0.2)
        if stopped:
            return 128 + stopped[0]
        group.join(timeout=5.0)  # the other local ranks follow the first one out
        codes = {rank: p.exitcode for rank, p in group.processes.items()}
        if all(code == 0 for code in codes.values()):
            logger.info(f"Node {server_args.node_rank}: rank 0 shut down; exiting.")
            return 0
        logger.error(
            f"Node {server_args.node_rank}: a tensor-parallel rank failed (exit codes {codes}); exiting."
        )
        return 1
    except RuntimeError as e:
        if stopped:
            return 128 + stopped[0]
        logger.error(f"Node {server_args.node_rank}: {e}")
        return 1
    finally:
        group.stop()
