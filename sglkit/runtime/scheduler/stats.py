"""Scheduler statistics: the seed-shaped 'Prefill batch.' / 'Decode batch.' log lines and live counters.

Cache hit rate is cumulative, as in SGLang: cached prompt tokens / all prompt tokens of admitted requests.
"""

from __future__ import annotations

import logging
import time

from sglkit.core.req import Req

logger = logging.getLogger("sglkit.runtime.scheduler")


class SchedulerStats:
    """Counters behind the log lines, /get_server_info and /metrics."""

    def __init__(self, max_total_num_tokens: int, decode_log_interval: int) -> None:
        self.max_total_num_tokens = max_total_num_tokens
        self.decode_log_interval = decode_log_interval
        self.start_time = time.time()
        self.num_decode_steps = 0
        self.num_generated_tokens = 0
        self.num_retracted_reqs = 0
        self.num_finished_reqs = 0
        self.num_aborted_reqs = 0
        self.total_prompt_tokens = 0
        self.total_completion_tokens = 0
        self.reset_cache_counters()
        self._last_log_time = time.perf_counter()
        self._last_log_tokens = 0
        self.gen_throughput = 0.0
        self.last_token_usage = 0.0

    def reset_cache_counters(self) -> None:
        """Restart the cumulative cache hit rate (after a flush)."""
        self.cache_hit_tokens = 0
        self.cache_total_tokens = 0

    @property
    def cache_hit_rate(self) -> float:
        """Cached prompt tokens / prompt tokens, since start or the last flush."""
        return self.cache_hit_tokens / self.cache_total_tokens if self.cache_total_tokens else 0.0

    def log_prefill(
        self,
        num_new_seqs: int,
        num_new_tokens: int,
        num_cached_tokens: int,
        num_used_tokens: int,
        num_running: int,
        num_queued: int,
    ) -> None:
        """Count one prefill batch and log it in SGLang's shape."""
        self.cache_hit_tokens += num_cached_tokens
        self.cache_total_tokens += num_new_tokens + num_cached_tokens
        self.last_token_usage = num_used_tokens / self.max_total_num_tokens
        logger.info(
            f"Prefill batch. #new-seq: {num_new_seqs}, #new-token: {num_new_tokens}, "
            f"#cached-token: {num_cached_tokens}, cache hit rate: {100 * self.cache_hit_rate:.2f}%, "
            f"token usage: {self.last_token_usage:.2f}, #running-req: {num_running}, #queue-req: {num_queued}"
        )

    def log_prefill_batch(self, batch, num_used_tokens: int, num_running: int, num_queued: int) -> None:
        """``log_prefill`` for a ScheduleBatch: new sequences are those prefilling their first part."""
        new_seq = [
            r for r, p in zip(batch.reqs, batch.prefix_lens) if p == len(r.prefix_indices) and not r.kv_len
        ]
        self.log_prefill(
            num_new_seqs=len(new_seq),
            num_new_tokens=sum(batch.extend_lens),
            num_cached_tokens=sum(len(r.prefix_indices) for r in new_seq),
            num_used_tokens=num_used_tokens,
            num_running=num_running,
            num_queued=num_queued,
        )

    def log_decode(self, num_running: int, num_used_tokens: int, num_queued: int) -> None:
        """Count one decode step; every ``decode_log_interval`` steps log throughput in SGLang's shape."""
        self.num_decode_steps += 1
        self.last_token_usage = num_used_tokens / self.max_total_num_tokens
        if self.num_decode_steps % self.decode_log_interval:
            return
        now = time.perf_counter()
        elapsed = max(now - self._last_log_time, 1e-9)
        self.gen_throughput = (self.num_generated_tokens - self._last_log_tokens) / elapsed
        self._last_log_time, self._last_log_tokens = now, self.num_generated_tokens
        logger.info(
            f"Decode batch. #running-req: {num_running}, #token: {num_used_tokens}, "
            f"token usage: {self.last_token_usage:.2f}, gen throughput (token/s): {self.gen_throughput:.2f}, "
            f"#queue-req: {num_queued}"
        )

    def idle(self) -> None:
        """Note an idle step (restarts the throughput window)."""
        self._last_log_time = time.perf_counter()
        self._last_log_tokens = self.num_generated_tokens

    def record_finished(self, req: Req) -> None:
        """Add a finished request to the totals."""
        self.num_finished_reqs += 1
        if req.finished_reason is not None and req.finished_reason.type == "abort":
            self.num_aborted_reqs += 1
        self.total_prompt_tokens += len(req.origin_input_ids)
        self.total_completion_tokens += len(req.output_ids)

    def snapshot(
        self, num_running: int, num_queued: int, num_used_tokens: int, num_cached_tokens: int, extra: dict
    ) -> dict:
        """A JSON-friendly dict of the live state."""
        return {
            "num_running_reqs": num_running,
            "num_queue_reqs": num_queued,
            "num_used_tokens": num_used_tokens,
            "token_usage": num_used_tokens / self.max_total_num_tokens,
            "num_cached_tokens": num_cached_tokens,
            "cache_hit_rate": self.cache_hit_rate,
            "cache_hit_tokens": self.cache_hit_tokens,  # the rate's numerator and denominator (dp totals sum them)
            "cache_total_tokens": self.cache_total_tokens,
            "gen_throughput": self.gen_throughput,
            "num_decode_steps": self.num_decode_steps,
            "num_generated_tokens": self.num_generated_tokens,
            "num_finished_reqs": self.num_finished_reqs,
            "num_aborted_reqs": self.num_aborted_reqs,
            "num_retracted_reqs": self.num_retracted_reqs,
            "total_prompt_tokens": self.total_prompt_tokens,
            "total_completion_tokens": self.total_completion_tokens,
            "uptime_s": time.time() - self.start_time,
            **extra,
        }
