"""uvicorn's Server with a drain before the stop: SIGTERM/SIGINT -> TokenizerManager.shutdown -> uvicorn shutdown.

uvicorn alone would close connections after ``timeout_graceful_shutdown`` and cancel what still runs: plain
requests then get a text/plain 500 and streams are cut mid-chunk. Here the first signal first refuses new
requests (503), lets in-flight ones finish for ``--graceful-shutdown-timeout`` seconds and ends the rest with a
JSON 503 (streams: an error event and ``[DONE]``); only then does uvicorn stop. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
from types import FrameType

import uvicorn

logger = logging.getLogger("sglkit.server")


class GracefulServer(uvicorn.Server):
    """A uvicorn Server whose first exit signal drains ``tokenizer_manager`` before shutting down."""

    def __init__(self, config: uvicorn.Config, tokenizer_manager, grace_s: float) -> None:
        super().__init__(config)
        self.tokenizer_manager = tokenizer_manager
        self.grace_s = grace_s
        self.loop: asyncio.AbstractEventLoop | None = None
        self.drain_task: asyncio.Task | None = None

    async def serve(self, sockets=None) -> None:
        """Remember the loop (signal handlers hand the drain over to it), then serve."""
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: drain on the loop, then exit; any later one (or no loop yet): uvicorn's own handling."""
        if self.loop is None or self.drain_task is not None or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self.drain_task = asyncio.Future()  # placeholder until the loop starts the task: no second drain
        self.loop.call_soon_threadsafe(self._start_drain, sig, frame)

    def _start_drain(self, sig: int, frame: FrameType | None) -> None:
        self.drain_task = asyncio.create_task(self._drain_then_exit(sig, frame), name="sglkit-drain")

    async def _drain_then_exit(self, sig: int, frame: FrameType | None) -> None:
        try:
            await self.tokenizer_manager.shutdown(self.grace_s)
        except Exception:  # noqa: BLE001 - the server must stop whatever the drain did
            logger.exception("Error while draining requests before shutdown")
        super().handle_exit(sig, frame)
