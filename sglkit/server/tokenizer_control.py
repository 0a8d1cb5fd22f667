"""Control requests from the HTTP process to the scheduler(s): flush_cache, get_stats, update_weights (mixed into
TokenizerManager; one answer awaited at a time on the shared output socket).

HTTP control route -> ControlClient.control_all -> [ZMQ] each replica in turn -> ControlResult (set by the
TokenizerManager's output loop on ``control_future``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from sglkit.core.messages import ControlResult, FlushCacheReq, GetStatsReq, UpdateWeightsReq
from sglkit.server.replica_stats import combine_results, combine_stats

CONTROL_TIMEOUT_S = 600.0


class ControlClient:
    """Control-message methods of TokenizerManager (uses its sockets, router, locks and in-flight count)."""

    async def control_all(
        self, msg, timeout: float = CONTROL_TIMEOUT_S, replicas: Sequence[int] | None = None
    ) -> list[ControlResult]:
        """Send one control message to each replica (default: all) in turn, one answer awaited at a time under one
        lock (answers share one socket, so each is known to be its replica's); their ControlResults in order."""
        self._check_alive()
        results: list[ControlResult] = []
        async with self.control_lock:
            for replica in range(self.dp_size) if replicas is None else replicas:
                self._check_alive()  # it died while we waited: nobody would answer
                self.control_future = asyncio.get_running_loop().create_future()
                self.links[replica].send(msg)
                try:
                    results.append(await asyncio.wait_for(self.control_future, timeout))
                finally:
                    self.control_future = None
        return results

    async def control(self, msg, timeout: float = CONTROL_TIMEOUT_S) -> ControlResult:
        """Send one control message to every replica and wait: one ControlResult, success only if all succeeded."""
        return combine_results(await self.control_all(msg, timeout))

    async def flush_cache(self) -> ControlResult:
        """Flush every replica's radix cache (each refuses while it has requests in flight)."""
        results = await self.control_all(FlushCacheReq())
        self.router.reset([i for i, r in enumerate(results) if r.success])
        return combine_results(results)

    async def get_stats(self) -> dict[str, Any]:
        """Live scheduler statistics; with data parallelism the totals, ``replicas`` (each one's) and ``router``."""
        results = await self.control_all(GetStatsReq(), timeout=30.0)
        if self.dp_size == 1:
            return results[0].payload
        return {**combine_stats([r.payload for r in results]), "router": self.router.info()}

    async def update_weights(self, model_path: str, drain_timeout: float = 300.0) -> ControlResult:
        """Hold new requests, let in-flight ones finish, swap weights on every replica, resume.

        Replicas never serve different weights: when some replicas fail, those that succeeded reload the
        previous weights.
        """
        async with self.weights_lock:
            self.unpaused.clear()
            try:
                deadline = time.monotonic() + drain_timeout
                while self.num_in_flight > 0:
                    if time.monotonic() > deadline:
                        return ControlResult(
                            False, "Failed to update weights: in-flight requests did not finish."
                        )
                    await asyncio.sleep(0.02)
                results = await self.control_all(UpdateWeightsReq(model_path))
                succeeded = [i for i, r in enumerate(results) if r.success]
                self.router.reset(succeeded)
                result = combine_results(results)
                if succeeded and not result.success:
                    back = await self.control_all(UpdateWeightsReq(self.model_path), replicas=succeeded)
                    restored = "went back to" if all(r.success for r in back) else "failed to reload"
                    result.message += f" (DP replicas {succeeded} {restored} {self.model_path}.)"
                if result.success:
                    self.model_path = model_path
                return result
            finally:
                self.unpaused.set()
