"""Scheduler base: what the generation and embedding schedulers share (front end -> handle/step -> outputs).

Both front ends drive a scheduler the same way: every message from the front end goes through ``handle`` (requests,
aborts, control), and ``step`` runs one forward pass. The server's scheduler process does that over ZMQ
(``sglkit.runtime.scheduler.process``); the offline Engine does it in-process. Subclasses implement intake,
abort, the step and their cache rules; setup, weight updates, statistics and the leak check live here once.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any

from sglkit.core.messages import (
    AbortReq,
    ControlResult,
    FlushCacheReq,
    GetStatsReq,
    TokenizedEmbeddingReq,
    TokenizedGenerateReq,
    UpdateWeightsReq,
    input_too_long_message,
)
from sglkit.runtime.executor.model_runner import ModelRunner
from sglkit.runtime.frontend.tokenizer import load_tokenizer
from sglkit.runtime.scheduler.stats import SchedulerStats
from sglkit.server_args import ServerArgs

logger = logging.getLogger("sglkit.runtime.scheduler")

RequestMessage = TokenizedGenerateReq | TokenizedEmbeddingReq


class SchedulerBase(ABC):
    """One model runner, its limits and statistics, and the message dispatch every front end uses."""

    def __init__(self, server_args: ServerArgs, model_runner: ModelRunner, tokenizer=None) -> None:
        self.server_args = server_args
        self.model_runner = model_runner
        self.tokenizer = tokenizer
        if tokenizer is None and not server_args.skip_tokenizer_init:  # token-in, token-out: None
            self.tokenizer = load_tokenizer(server_args.tokenizer_path, server_args.chat_template)
        self.device = model_runner.device
        self.context_len = model_runner.max_input_len  # longest input (tokens) this scheduler accepts
        self.max_total_num_tokens = model_runner.max_total_num_tokens
        self.max_running_requests = model_runner.max_running_requests
        self.max_prefill_tokens = server_args.max_prefill_tokens
        self.stats = SchedulerStats(self.max_total_num_tokens, server_args.decode_log_interval)
        self.forward_ct = 0  # forward passes run so far (the progress watchdog reads it)
        self._pending_outputs: list = []  # outputs produced outside a forward pass, sent with the next step

    def log_limits(self, **extra: Any) -> None:
        """The start-up line with the scheduler's limits (SGLang's shape), plus ``extra`` fields."""
        fields = {
            "max_total_num_tokens": self.max_total_num_tokens,
            "max_prefill_tokens": self.max_prefill_tokens,
            "max_running_requests": self.max_running_requests,
            "context_len": self.context_len,
            **extra,
        }
        logger.info(", ".join(f"{k}={v}" for k, v in fields.items()))

    # ------------------------------------------------------------------ the loop's interface
    @abstractmethod
    def add_request(self, recv: RequestMessage) -> Any | None:
        """Queue a request; return a final error output instead when it can never run."""

    @abstractmethod
    def abort_request(self, rid: str | None = None, abort_all: bool = False) -> list:
        """Abort one request by id, or all of them; return their final outputs."""

    @abstractmethod
    def is_idle(self) -> bool:
        """True when nothing is queued or running."""

    @abstractmethod
    def step(self, expired: list[tuple[str, str]] | None = None) -> list:
        """End the requests past a timeout (``expired``: (rid, message) pairs decided by tp rank 0; None: this
        scheduler's own ``poll_expired()``), run one forward pass (if there is work); return the outputs."""

    @abstractmethod
    def poll_expired(self) -> list[tuple[str, str]]:
        """(rid, message) of the requests past ``req_waiting_timeout`` / ``req_running_timeout`` now."""

    @abstractmethod
    def flush_cache(self) -> ControlResult:
        """Empty the prefix cache (refused while requests are in flight)."""

    def input_len_error(self, num_input: int, max_input: int) -> str | None:
        """Why an input of ``num_input`` tokens can never run (empty, or over ``max_input``); None if it can."""
        if num_input == 0:
            return "The input is empty."
        if num_input > max_input:
            return input_too_long_message(num_input, self.context_len)
        return None

    def handle(self, msg: Any) -> list | ControlResult | None:
        """Dispatch one front-end message: request(s) and aborts -> outputs to send now (possibly empty);
        control requests -> their ControlResult."""
        if isinstance(msg, list):  # a batch of requests
            return [out for req in msg if (out := self.add_request(req)) is not None]
        if isinstance(msg, (TokenizedGenerateReq, TokenizedEmbeddingReq)):
            out = self.add_request(msg)
            return [] if out is None else [out]
        if isinstance(msg, AbortReq):
            return self.abort_request(msg.rid, msg.abort_all)
        if isinstance(msg, FlushCacheReq):
            return self.flush_cache()
        if isinstance(msg, UpdateWeightsReq):
            return self.update_weights(msg.model_path)
        if isinstance(msg, GetStatsReq):
            return ControlResult(True, payload=self.get_stats())
        logger.error(f"Unknown message {type(msg).__name__}")
        return None

    # ------------------------------------------------------------------ control
    def update_weights(self, model_path: str) -> ControlResult:
        """Swap in same-shaped weights (needs an idle scheduler); the prefix cache is flushed on success."""
        if not self.is_idle():
            return ControlResult(False, "Failed to update weights: requests are in flight.")
        success, message = self.model_runner.update_weights(model_path)
        if success:
            self.flush_cache()
        return ControlResult(success, message, {"model_path": self.model_runner.model_path})

    def num_cached_tokens(self) -> int:
        """KV slots held by the prefix cache (0 without one)."""
        return 0

    def check_memory_leak(self) -> tuple[bool, str]:
        """When idle: free + cached KV slots == the pool, and every request slot is free."""
        runner = self.model_runner
        if not runner.uses_kv_cache:
            return True, "encoder model: no KV pool"
        free, cached = runner.token_to_kv_pool_allocator.available_size(), self.num_cached_tokens()
        slots, num_slots = runner.req_to_token_pool.available_size(), runner.req_to_token_pool.size
        ok = free + cached == self.max_total_num_tokens and slots == num_slots
        return ok, (
            f"available={free}, cached={cached}, total={self.max_total_num_tokens}, "
            f"free req slots={slots}/{num_slots}"
        )

    def live_counts(self) -> dict[str, int]:
        """num_running, num_queued and num_used_tokens right now (for get_stats)."""
        return {"num_running": 0, "num_queued": 0, "num_used_tokens": 0}

    def stats_extra(self) -> dict[str, Any]:
        """Scheduler-specific fields of get_stats."""
        return {}

    def get_stats(self) -> dict[str, Any]:
        """Live statistics for /get_server_info, /metrics and the dashboard (the same keys for every scheduler)."""
        runner = self.model_runner
        return self.stats.snapshot(
            **self.live_counts(),
            num_cached_tokens=self.num_cached_tokens(),
            extra={
                "max_total_num_tokens": self.max_total_num_tokens,
                "max_running_requests": self.max_running_requests,
                "max_prefill_tokens": self.max_prefill_tokens,
                "context_len": self.context_len,
                "model_path": runner.model_path,
                "vocab_size": runner.vocab_size,
                **self.stats_extra(),
            },
        )
