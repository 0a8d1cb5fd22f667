"""Request limits (scheduler intake and loop): when the server gives up on a request, and the 503 abort it gets.

Three limits, all server-wide (``ServerArgs``), as SGLang's scheduler applies them:

- ``max_queued_requests``: a request arriving while that many requests wait (the waiting queue plus those
  waiting for their grammar to compile) is refused at once: "The request queue is full.". Only arrivals are
  counted against it; a retracted request going back to the queue is never refused.
- ``req_waiting_timeout``: a request that has waited that many seconds in the waiting queue without starting
  ends with "Request waiting timeout reached.".
- ``req_running_timeout``: a request that started (first admitted into a prefill batch) that many seconds ago
  ends with "Request running timeout reached.", keeping the text generated so far; a retracted request back in
  the queue is still running for this clock.

Each ends with finish_reason ``{"type": "abort", "message": ..., "status_code": 503}`` and ``error`` /
``error_status=503`` on the output. Timeouts are polled once per scheduler iteration (``RequestTimeouts.expired``,
one pass over the live requests, nothing when both are unset). With tensor parallelism only rank 0's clock decides:
its scheduler polls, and the expired ids travel with the mirrored ``step`` command, so every rank drops the same
requests in the same iteration (see ``mirror.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sglkit.core.messages import GenerateOutput
from sglkit.core.req import FinishReason, Req
from sglkit.runtime.scheduler.output import make_output
from sglkit.server_args import ServerArgs

__all__ = [
    "QUEUE_FULL_MESSAGE",
    "RUNNING_TIMEOUT_MESSAGE",
    "SERVICE_UNAVAILABLE",
    "WAITING_TIMEOUT_MESSAGE",
    "Expired",
    "RequestTimeouts",
    "abort_output",
    "queue_is_full",
    "service_unavailable",
]

SERVICE_UNAVAILABLE = 503
QUEUE_FULL_MESSAGE = "The request queue is full."
WAITING_TIMEOUT_MESSAGE = "Request waiting timeout reached."
RUNNING_TIMEOUT_MESSAGE = "Request running timeout reached."

Expired = tuple[str, str]  # (rid, message): a request the server gives up on, and why


def service_unavailable(message: str) -> FinishReason:
    """The finish reason of a request the server gave up on: an abort with ``message`` and status 503."""
    return FinishReason("abort", message=message, status_code=SERVICE_UNAVAILABLE)


def queue_is_full(max_queued_requests: int | None, num_waiting: int) -> bool:
    """True when an arriving request must be refused: ``num_waiting`` already wait and the limit is that many."""
    return max_queued_requests is not None and num_waiting >= max_queued_requests


def abort_output(req: Req, reason: FinishReason) -> GenerateOutput:
    """Finish ``req`` with ``reason`` and build its final output (``error_status`` from the reason's status)."""
    req.finished_reason = reason
    out = make_output(req)
    if reason.status_code is not None:
        out.error_status = reason.status_code
    return out


@dataclass(frozen=True)
class RequestTimeouts:
    """The waiting and running timeouts in seconds (None: no limit)."""

    waiting: float | None = None
    running: float | None = None

    @classmethod
    def from_server_args(cls, server_args: ServerArgs) -> RequestTimeouts:
        """``req_waiting_timeout`` / ``req_running_timeout`` (SGLANG_REQ_*_TIMEOUT already fed them)."""
        return cls(server_args.req_waiting_timeout, server_args.req_running_timeout)

    @property
    def enabled(self) -> bool:
        """True when either timeout is set."""
        return self.waiting is not None or self.running is not None

    def expired(self, reqs: Iterable[Req], now: float) -> list[Expired]:
        """The live requests ``reqs`` (queued, running or retracted) past a timeout at ``now``, in order.

        A request that never started is judged by the waiting timeout (from ``queued_time``); one that started
        by the running timeout (from ``start_time``). Finished requests are skipped.
        """
        if not self.enabled:
            return []
        out: list[Expired] = []
        for req in reqs:
            if req.finished():
                continue
            if req.start_time:
                if self.running is not None and now - req.start_time > self.running:
                    out.append((req.rid, RUNNING_TIMEOUT_MESSAGE))
            elif self.waiting is not None and req.queued_time and now - req.queued_time > self.waiting:
                out.append((req.rid, WAITING_TIMEOUT_MESSAGE))
        return out
