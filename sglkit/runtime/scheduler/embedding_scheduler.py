"""Embedding scheduler: the engine loop body for ``--is-embedding``. Queue -> prefill batch -> pooled vectors.

A ``SchedulerBase`` like the generation ``Scheduler`` (same handle / step / control surface), so the offline
Engine and the server's scheduler process drive either one.
Prefill only: each ``step()`` takes waiting inputs in arrival order up to ``max_prefill_tokens`` tokens and
``max_running_requests`` inputs (always at least one), runs one pass, and returns one final EmbeddingOutput per
input. Nothing stays in the KV pool between steps, so there is no prefix cache to flush.
Request limits (``request_limits``): ``max_queued_requests`` refuses an input arriving while that many wait, and
``req_waiting_timeout`` ends one that waited that long (both 503); a pass never outlives ``step``, so the running
timeout has nothing to end.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

from sglkit.core.messages import ControlResult, EmbeddingOutput, TokenizedEmbeddingReq
from sglkit.runtime.executor.embedding_runner import EmbeddingModelRunner
from sglkit.runtime.scheduler.base import SchedulerBase
from sglkit.runtime.scheduler.request_limits import (
    QUEUE_FULL_MESSAGE,
    SERVICE_UNAVAILABLE,
    WAITING_TIMEOUT_MESSAGE,
    Expired,
    queue_is_full,
)
from sglkit.server_args import ServerArgs

logger = logging.getLogger("sglkit.runtime.scheduler")

EMBEDDING_FINISH_REASON = {"type": "length", "length": 0}  # SGLang's finish reason of an embedding request


@dataclass
class _Waiting:
    """A queued input and when it arrived."""

    req: TokenizedEmbeddingReq
    created_time: float


class EmbeddingScheduler(SchedulerBase):
    """Batches embedding / reward inputs into prefill passes over one EmbeddingModelRunner."""

    def __init__(self, server_args: ServerArgs, tokenizer=None) -> None:
        super().__init__(server_args, EmbeddingModelRunner(server_args), tokenizer)
        self.waiting_queue: deque[_Waiting] = deque()
        self.log_limits(pooling=self.model_runner.pooling_description)

    # ------------------------------------------------------------------ intake
    def add_request(self, recv: TokenizedEmbeddingReq) -> EmbeddingOutput | None:
        """Queue an input; returns a final error output instead when it can never run."""
        if not isinstance(recv, TokenizedEmbeddingReq):
            return EmbeddingOutput(
                recv.rid,
                [],
                self._meta(recv.rid, 0),
                error=(
                    "This model is an embedding model; it serves /encode, /classify and /v1/embeddings, not generation."
                ),
            )
        num_input = len(recv.input_ids)
        error = self.input_len_error(num_input, self.context_len)
        if error:
            self.stats.num_aborted_reqs += 1
            return EmbeddingOutput(recv.rid, [], self._meta(recv.rid, num_input), error=error)
        if queue_is_full(self.server_args.max_queued_requests, len(self.waiting_queue)):
            return self._unavailable(recv, QUEUE_FULL_MESSAGE)
        self.waiting_queue.append(_Waiting(recv, time.perf_counter()))
        return None

    def _unavailable(self, recv: TokenizedEmbeddingReq, message: str) -> EmbeddingOutput:
        """The final output of an input the server gave up on (503)."""
        self.stats.num_aborted_reqs += 1
        reason = {"type": "abort", "message": message, "status_code": SERVICE_UNAVAILABLE}
        meta = {**self._meta(recv.rid, len(recv.input_ids)), "finish_reason": reason}
        return EmbeddingOutput(recv.rid, [], meta, error=message, error_status=SERVICE_UNAVAILABLE)

    def poll_expired(self) -> list[Expired]:
        """(rid, message) of the inputs that waited longer than ``req_waiting_timeout`` (rank 0 decides)."""
        timeout = self.server_args.req_waiting_timeout
        if timeout is None:
            return []
        deadline = time.perf_counter() - timeout
        return [(w.req.rid, WAITING_TIMEOUT_MESSAGE) for w in self.waiting_queue if w.created_time < deadline]

    def abort_request(self, rid: str | None = None, abort_all: bool = False) -> list[EmbeddingOutput]:
        """Drop waiting inputs (by id, or all); returns their final (aborted) outputs."""
        kept, outputs = deque(), []
        for item in self.waiting_queue:
            if abort_all or item.req.rid == rid:
                meta = {
                    **self._meta(item.req.rid, len(item.req.input_ids)),
                    "finish_reason": {"type": "abort"},
                }
                outputs.append(EmbeddingOutput(item.req.rid, [], meta, error="The request was aborted."))
                self.stats.num_aborted_reqs += 1
            else:
                kept.append(item)
        self.waiting_queue = kept
        return outputs

    # ------------------------------------------------------------------ loop
    def is_idle(self) -> bool:
        """True when nothing is queued (a pass never outlives ``step``)."""
        return not self.waiting_queue

    def step(self, expired: list[Expired] | None = None) -> list[EmbeddingOutput]:
        """Run one prefill pass over the next batch of waiting inputs; return their outputs.

        First the inputs past the waiting timeout end: ``expired`` when given (rank 0's decision), else
        ``poll_expired()``."""
        outputs, self._pending_outputs = self._pending_outputs, []
        gone = dict(self.poll_expired() if expired is None else expired)
        if gone:
            kept = deque(w for w in self.waiting_queue if w.req.rid not in gone)
            outputs += [
                self._unavailable(w.req, gone[w.req.rid]) for w in self.waiting_queue if w.req.rid in gone
            ]
            self.waiting_queue = kept
        batch = self._next_batch()
        if not batch:
            self.stats.idle()
            return outputs
        self.forward_ct += 1
        try:
            vectors = self.model_runner.embed([item.req.input_ids for item in batch]).tolist()
        except Exception as e:  # noqa: BLE001 - fail this batch's requests, keep serving
            logger.exception("Embedding pass failed.")
            return outputs + [
                EmbeddingOutput(
                    item.req.rid,
                    [],
                    self._meta(item.req.rid, len(item.req.input_ids)),
                    error=f"The embedding pass failed: {type(e).__name__}: {e}",
                )
                for item in batch
            ]
        now = time.perf_counter()
        for item, vector in zip(batch, vectors):
            num_input = len(item.req.input_ids)
            meta = {**self._meta(item.req.rid, num_input), "e2e_latency": now - item.created_time}
            outputs.append(EmbeddingOutput(item.req.rid, vector, meta))
            self.stats.num_finished_reqs += 1
            self.stats.total_prompt_tokens += num_input
        return outputs

    def _next_batch(self) -> list[_Waiting]:
        """Pop waiting inputs in arrival order while they fit the token and size budgets; log the batch."""
        batch: list[_Waiting] = []
        num_tokens = 0
        budget = self.max_prefill_tokens
        if self.model_runner.uses_kv_cache:
            budget = min(budget, self.max_total_num_tokens)
        while self.waiting_queue and len(batch) < self.max_running_requests:
            n = len(self.waiting_queue[0].req.input_ids)
            if batch and num_tokens + n > budget:
                break
            batch.append(self.waiting_queue.popleft())
            num_tokens += n
        if batch:
            self.stats.log_prefill(
                num_new_seqs=len(batch),
                num_new_tokens=num_tokens,
                num_cached_tokens=0,
                num_used_tokens=0,
                num_running=0,
                num_queued=len(self.waiting_queue),
            )
        return batch

    @staticmethod
    def _meta(rid: str, num_input: int) -> dict:
        return {
            "id": rid,
            "finish_reason": dict(EMBEDDING_FINISH_REASON),
            "prompt_tokens": num_input,
            "cached_tokens": 0,
        }

    # ------------------------------------------------------------------ control
    def flush_cache(self) -> ControlResult:
        """Nothing to flush (no prefix cache); succeeds, as SGLang's does for embedding models."""
        logger.info("Cache flushed successfully!")
        return ControlResult(True, "Cache flushed.")

    def live_counts(self) -> dict[str, int]:
        """Nothing runs between steps; only the queue is live."""
        return {"num_running": 0, "num_queued": len(self.waiting_queue), "num_used_tokens": 0}

    def stats_extra(self) -> dict:
        """No chunked prefill; the pooling in force."""
        return {
            "chunked_prefill_size": None,
            "is_embedding": True,
            "pooling": self.model_runner.pooling_description,
        }
