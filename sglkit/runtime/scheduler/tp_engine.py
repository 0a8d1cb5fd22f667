"""Tensor parallelism for ``sglkit.Engine``: this process is rank 0, ranks 1..N-1 are spawned follower processes.

Engine(tp_size=N) -> TensorParallelRanks.start(): spawn the followers (``rank_group``; each leads its own session,
which the notebook session watchdog watches, and dies with this process) -> join the group as rank 0 in-process
-> load rank 0's shard -> wait until every follower has loaded its shard -> a ``mirror.LeaderScheduler`` with a
heartbeat (an idle Engine still broadcasts a no-op now and then, so a follower's wait never times out).
stop(): tell the followers to exit, stop their processes, leave the process group (a second Engine can start).

Rank 0 stays in-process so the Engine keeps its one-process shape: ``llm.scheduler`` is still the scheduler the
caller's thread drives, outputs need no IPC, and tp_size=1 takes exactly the old path.
"""

from __future__ import annotations

import logging

from sglkit.launch.process import unwatch_session, watch_session
from sglkit.parallel import destroy_model_parallel
from sglkit.runtime.scheduler.mirror import LeaderScheduler
from sglkit.runtime.scheduler.rank_group import RankGroup
from sglkit.runtime.scheduler.rank_process import DEFAULT_DIST_TIMEOUT_S, default_init_method, setup_rank
from sglkit.server_args import ServerArgs

logger = logging.getLogger(__name__)

MAX_HEARTBEAT_S = 10.0


class TensorParallelRanks:
    """The follower rank processes of an in-process rank 0, and rank 0's mirrored scheduler."""

    def __init__(self, server_args: ServerArgs) -> None:
        if server_args.nnodes > 1:
            raise ValueError(
                "sglkit.Engine runs its tensor-parallel ranks on this machine (nnodes=1); for several nodes "
                "start a server on each: python -m sglkit.launch_server --nnodes N --node-rank K ..."
            )
        self.server_args = server_args
        self.group: RankGroup | None = None
        self.leader: LeaderScheduler | None = None

    def start(self) -> LeaderScheduler:
        """Spawn ranks 1.., join as rank 0, load; returns rank 0's mirrored scheduler (raises with a rank's error)."""
        from sglkit.runtime.scheduler import create_scheduler

        args = self.server_args
        init_method = default_init_method(args)
        self.group = RankGroup.launch(args, list(range(1, args.tp_size)), init_method, new_session=True)
        for process in self.group.processes.values():
            watch_session(process.pid)
        try:
            scheduler = create_scheduler(setup_rank(args, 0, init_method, set_threads=True))
            self.group.wait_ready()
        except BaseException as e:
            failure = self._follower_failure()
            self.stop()
            if failure is not None and not isinstance(e, KeyboardInterrupt):
                raise failure from e
            raise
        self.leader = LeaderScheduler(scheduler)
        timeout = args.dist_timeout or DEFAULT_DIST_TIMEOUT_S
        self.leader.start_heartbeat(min(MAX_HEARTBEAT_S, timeout / 4))
        logger.info(f"Tensor parallel: {args.tp_size} ranks ready (rank 0 in this process).")
        return self.leader

    def _follower_failure(self) -> RuntimeError | None:
        """A follower's start-up error, if one failed (rank 0's own error is then only its consequence)."""
        if self.group is None:
            return None
        try:
            self.group.wait_ready(should_stop=lambda: self.group.is_alive())
        except RuntimeError as e:
            return None if str(e) == "Stopped during start-up." else e
        return None

    def stop(self) -> None:
        """Followers told to exit and stopped (tree and all), the process group left. Idempotent."""
        if self.leader is not None:
            self.leader.shutdown()
            self.leader = None
        if self.group is not None:
            for process in self.group.processes.values():
                unwatch_session(process.pid)
            self.group.stop()
            self.group = None
        destroy_model_parallel()
