"""Tensor-parallel mirroring: rank 0's scheduler decides, every other rank replays its calls (front end -> here).

Rank 0 wraps its scheduler in :class:`LeaderScheduler`: every ``handle(msg)`` and ``step()`` is first broadcast to
the other ranks as a small command (``sglkit.parallel.broadcast_object``, pickled over the CPU group), then run
locally. The other ranks run :func:`follow`: receive a command, make the same call on their own scheduler, drop
the outputs. So every rank runs the same sequence of calls on identical state: the same batches, the same forward
passes (whose all-reduces and all-gathers meet), the same sampled tokens (the logits are identical on every rank
after the gather, and every rank's generator starts from the same seed). Only rank 0 talks to the front end.

Control messages (flush, weight update, statistics) and the leak check end with a gather of every rank's result,
so rank 0 answers for all ranks; a weight update that failed on any rank is rolled back on all of them.
Wall clocks differ between ranks, so rank 0 alone decides which requests passed the waiting / running timeout
(``poll_expired``) and sends their ids with the step: ``("step", expired)``; every rank aborts exactly those.
Commands are tuples: ``("handle", msg)``, ``("step", expired)``, ``("leak",)``, ``("noop",)`` (a heartbeat while
idle, so a follower's wait never reaches the collective timeout), ``("shutdown",)``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import torch.distributed as dist

from sglkit.core.messages import ControlResult, FlushCacheReq, GetStatsReq, UpdateWeightsReq
from sglkit.parallel import broadcast_object, get_cpu_group, get_tp_rank, get_tp_size
from sglkit.runtime.scheduler.base import SchedulerBase

logger = logging.getLogger("sglkit.scheduler")

CONTROL_MESSAGES = (FlushCacheReq, UpdateWeightsReq, GetStatsReq)
RANK_STAT_KEYS = ("num_cached_tokens", "num_used_tokens", "max_total_num_tokens", "model_path")


class RankFailedError(RuntimeError):
    """A collective with the other tensor-parallel ranks failed (a rank died, hung past the timeout, or diverged)."""


def gather_from_ranks(obj: Any) -> list[Any]:
    """``obj`` of every tp rank, in rank order (every rank calls it; pickled over the CPU group)."""
    if get_tp_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_tp_size()
    dist.all_gather_object(out, obj, group=get_cpu_group())
    return out


def _merge_control(
    scheduler: SchedulerBase, msg: Any, local: ControlResult, results: list[ControlResult], old_path: str
) -> ControlResult:
    """One answer for all ranks: success only if every rank succeeded (a half-done weight update is undone)."""
    failed = [(rank, r) for rank, r in enumerate(results) if not r.success]
    if isinstance(msg, GetStatsReq):
        ranks = [
            {"tp_rank": rank, **{k: r.payload.get(k) for k in RANK_STAT_KEYS}}
            for rank, r in enumerate(results)
        ]
        return ControlResult(local.success, local.message, {**local.payload, "tp_ranks": ranks})
    if not failed:
        return local
    if isinstance(msg, UpdateWeightsReq) and local.success:  # another rank failed: back to the old weights
        logger.error(
            f"Weight update failed on rank(s) {[rank for rank, _ in failed]}; rolling back this rank."
        )
        scheduler.update_weights(old_path)
    rank, first = failed[0]
    message = first.message if rank == 0 else f"{first.message} (tensor-parallel rank {rank})"
    return ControlResult(False, message, results[0].payload)


def run_command(scheduler: SchedulerBase, command: tuple) -> Any:
    """Run one mirrored command on this rank's scheduler (the same code on every rank) and return its result."""
    kind = command[0]
    if kind == "step":
        return scheduler.step(*command[1:])
    if kind == "handle":
        msg = command[1]
        old_path = scheduler.model_runner.model_path
        result = scheduler.handle(msg)
        if isinstance(msg, CONTROL_MESSAGES) and isinstance(result, ControlResult):
            return _merge_control(scheduler, msg, result, gather_from_ranks(result), old_path)
        return result
    if kind == "leak":
        checks = gather_from_ranks(scheduler.check_memory_leak())
        ok = all(passed for passed, _ in checks)
        return ok, "; ".join(f"TP{rank}: {detail}" for rank, (_, detail) in enumerate(checks))
    if kind == "noop":
        return None
    raise ValueError(f"Unknown mirrored command {kind!r}")


def follow(scheduler: SchedulerBase) -> None:
    """Follower loop: replay rank 0's commands until it sends ``shutdown``. Raises when a collective fails."""
    while True:
        command = broadcast_object(None)
        if command[0] == "shutdown":
            logger.info("Rank 0 shut down; exiting.")
            return
        run_command(scheduler, command)


class LeaderScheduler:
    """Rank 0's scheduler, broadcasting each call to the followers before running it (a SchedulerBase look-alike).

    Attributes it does not define (``model_runner``, ``tokenizer``, ``is_idle``, ``stats``, ...) are the wrapped
    scheduler's: reading them involves no other rank. Thread-safe: one lock orders every command, so the optional
    heartbeat thread never interleaves with a batch. Once a collective failed, every call raises RankFailedError.
    """

    def __init__(self, scheduler: SchedulerBase) -> None:
        assert get_tp_rank() == 0, "only rank 0 leads"
        self.scheduler = scheduler
        self.failure: str | None = None
        self._lock = threading.RLock()
        self._last_command = time.monotonic()
        self._heartbeat_stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def _command(self, command: tuple) -> Any:
        with self._lock:
            if self.failure is not None:
                raise RankFailedError(self.failure)
            try:
                broadcast_object(command)
                self._last_command = time.monotonic()
                return run_command(self.scheduler, command)
            except Exception as e:
                self.failure = f"A tensor-parallel collective failed: {type(e).__name__}: {e}"
                raise RankFailedError(self.failure) from e

    def handle(self, msg: Any) -> Any:
        """``SchedulerBase.handle`` on every rank; control results answer for all ranks."""
        return self._command(("handle", msg))

    def step(self) -> list:
        """One ``step`` on every rank (the same timeouts, batch and forward pass); rank 0's outputs."""
        with self._lock:
            return self._command(("step", self.scheduler.poll_expired()))

    def check_memory_leak(self) -> tuple[bool, str]:
        """``check_memory_leak`` on every rank: (all passed, each rank's detail)."""
        return self._command(("leak",))

    def start_heartbeat(self, interval_s: float) -> None:
        """Broadcast a no-op whenever no command went out for ``interval_s`` (keeps idle followers' waits short)."""

        def beat() -> None:
            while not self._heartbeat_stop.wait(min(1.0, interval_s)):
                if time.monotonic() - self._last_command < interval_s:
                    continue
                try:
                    self._command(("noop",))
                except RankFailedError as e:
                    logger.error(str(e))
                    return

        self._heartbeat = threading.Thread(target=beat, daemon=True, name="sglkit-tp-heartbeat")
        self._heartbeat.start()

    def shutdown(self) -> None:
        """Tell the followers to exit (best effort: they also exit when rank 0's broadcasts stop)."""
        self._heartbeat_stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
        with self._lock:
            if self.failure is None:
                try:
                    broadcast_object(("shutdown",))
                except Exception as e:  # noqa: BLE001 - a follower already gone is fine at shutdown
                    logger.warning(f"Could not tell the other ranks to shut down: {e}")
            self.failure = "The tensor-parallel ranks have been shut down."

    def __getattr__(self, name: str) -> Any:
        return getattr(self.scheduler, name)
