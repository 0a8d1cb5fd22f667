"""The HTTP process's send side of the IPC to one scheduler replica: a FIFO outbox drained by one task.

TokenizerManager -> ``SchedulerLink.send(msg)`` (never blocks the event loop) -> outbox -> sender task: pickle
(large batches on a worker thread) -> ``await`` an asyncio ZMQ PUSH socket -> scheduler process.

A full ZMQ pipe (the scheduler busy, a huge batch in flight) only makes the sender task wait; HTTP handlers,
``/health`` and the output loop keep running. Messages keep their order (a request is always sent before its
abort). How much can pile up is bounded by admission, not here: the per-request input cap and
``--max-queued-requests`` (the scheduler refuses requests over it).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import pickle
from typing import Any

import zmq
import zmq.asyncio

logger = logging.getLogger("sglkit.server")

# A message with more requests than this is pickled on a worker thread (a 2,048-prompt batch takes tens of ms).
THREAD_PICKLE_MIN_ITEMS = 64


class SchedulerLink:
    """One replica's input socket behind an outbox; ``start()`` on the running event loop before use."""

    def __init__(self, ctx: zmq.asyncio.Context, address: str) -> None:
        self.sock = ctx.socket(zmq.PUSH)
        self.sock.connect(address)
        self.outbox: collections.deque[Any] = collections.deque()
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.messages_sent = 0

    def start(self) -> None:
        """Start the sender task on the running loop."""
        self.task = asyncio.create_task(self._drain(), name="sglkit-scheduler-link")

    def send(self, msg: Any) -> None:
        """Queue ``msg`` for the scheduler; returns at once (order kept)."""
        self.outbox.append(msg)
        self.wakeup.set()

    @property
    def pending(self) -> int:
        """Messages queued here and not yet handed to ZMQ."""
        return len(self.outbox)

    async def _drain(self) -> None:
        while True:
            if not self.outbox:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            msg = self.outbox[0]
            try:
                if isinstance(msg, list) and len(msg) > THREAD_PICKLE_MIN_ITEMS:
                    data = await asyncio.to_thread(pickle.dumps, msg, pickle.HIGHEST_PROTOCOL)
                else:
                    data = pickle.dumps(msg, pickle.HIGHEST_PROTOCOL)
                await self.sock.send(data, copy=False)
                self.messages_sent += 1
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one unpicklable message must not stop every later one
                logger.exception(f"Could not send a {type(msg).__name__} to the scheduler; dropped it")
            self.outbox.popleft()

    def close(self) -> None:
        """Stop the sender task and close the socket (pending messages are dropped)."""
        if self.task is not None:
            self.task.cancel()
        self.sock.close(linger=0)
