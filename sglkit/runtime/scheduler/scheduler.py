"""Scheduler: the engine loop body. Queue -> radix match -> admit (KV budget) -> prefill / decode -> sample -> finish.

``step()`` runs one forward pass and returns the GenerateOutputs it produced. The offline Engine calls it
in-process; the server's scheduler process wraps it in recv -> handle -> step -> send (``process.py``). Setup,
message dispatch, weight updates and statistics are ``SchedulerBase``'s (shared with the embedding scheduler).
Prefill has priority over decode; decode batches hold every running request; when the KV pool runs out a
running request is retracted to the waiting queue (its KV goes to the radix cache) and later resumes.
"""

from __future__ import annotations

import logging
import random
import time
from functools import partial

import torch

from sglkit.cache.radix_cache import RadixCache
from sglkit.core.forward_batch import ForwardMode
from sglkit.core.messages import ControlResult, GenerateOutput, TokenizedGenerateReq
from sglkit.core.req import FinishReason, Req
from sglkit.runtime.executor.model_runner import ModelRunner
from sglkit.runtime.executor.sampling import PenaltyCounts, SamplingBatchInfo
from sglkit.runtime.frontend.tokenizer import get_eos_token_ids
from sglkit.runtime.scheduler.base import SchedulerBase
from sglkit.runtime.scheduler.batch import (
    ScheduleBatch,
    alloc_token_slots,
    build_decode_batch,
    build_extend_batch,
    to_forward_batch,
)
from sglkit.runtime.scheduler.grammar_queue import GrammarQueue, build_vocab_mask
from sglkit.runtime.scheduler.intake import kv_fit_error, new_req
from sglkit.runtime.scheduler.output import append_tokens, collect_input_logprobs, make_output, should_stream
from sglkit.runtime.scheduler.policy import (
    PrefillAdder,
    decode_reserve,
    match_prefix,
    shares_uncached_prefix,
    sort_waiting_queue,
)
from sglkit.runtime.scheduler.readout import read_step
from sglkit.runtime.scheduler.request_limits import (
    QUEUE_FULL_MESSAGE,
    Expired,
    RequestTimeouts,
    abort_output,
    queue_is_full,
    service_unavailable,
)
from sglkit.server_args import ServerArgs

logger = logging.getLogger(__name__)

INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO = 0.1
NEW_TOKEN_RATIO_DECAY = 0.001


class Scheduler(SchedulerBase):
    """Continuous-batching scheduler for generation over one ModelRunner."""

    def __init__(self, server_args: ServerArgs, tokenizer=None) -> None:
        super().__init__(server_args, ModelRunner(server_args), tokenizer)
        self.chunked_prefill_size = self.model_runner.chunked_prefill_size  # resolved there (GPU memory)
        self.req_to_token_pool = self.model_runner.req_to_token_pool
        self.allocator = self.model_runner.token_to_kv_pool_allocator
        self.tree_cache = RadixCache(
            self.req_to_token_pool, self.allocator, disable=server_args.disable_radix_cache
        )
        self.eos_token_ids = get_eos_token_ids(
            self.model_runner.model_config.hf_config, self.tokenizer, server_args.model_path
        )
        self.grammar_queue = GrammarQueue.for_server(
            server_args, self.tokenizer, self.model_runner.vocab_size, self.eos_token_ids
        )
        # Token counts of the running requests with penalties (device rows, released with the request).
        self.penalty_counts = PenaltyCounts(self.model_runner.vocab_size, self.device)
        self.waiting_queue: list[Req] = []
        self.running_reqs: list[Req] = []
        self.chunked_req: Req | None = None
        self.new_token_ratio = INIT_NEW_TOKEN_RATIO
        self.timeouts = RequestTimeouts.from_server_args(server_args)
        self.policy_rng = random.Random(server_args.random_seed)  # the 'random' schedule policy's draws
        self.log_limits()

    # ------------------------------------------------------------------ intake
    def add_request(self, recv: TokenizedGenerateReq) -> GenerateOutput | None:
        """Queue a request; returns a finished error output instead when it can never run."""
        req = new_req(recv, self.device)
        num_input = len(req.origin_input_ids)  # room for one generated token in the context and the KV pool
        error = self.input_len_error(num_input, self.context_len - 1) or kv_fit_error(
            num_input, self.max_total_num_tokens
        )
        num_waiting = len(self.waiting_queue) + len(self.grammar_queue)
        if not error and queue_is_full(self.server_args.max_queued_requests, num_waiting):
            self.stats.record_finished(req)
            return abort_output(req, service_unavailable(QUEUE_FULL_MESSAGE))
        if not error and req.sampling_params.grammar is not None:
            error = self.grammar_queue.add(req)
            if not error:
                return None
        if error:
            return abort_output(req, FinishReason("abort", message=error))
        self._enqueue([req])
        return None

    def _enqueue(self, reqs: list[Req]) -> None:
        """New requests join the waiting queue (their waiting clock starts)."""
        now = time.perf_counter()
        for req in reqs:
            req.queued_time = now
        self.waiting_queue.extend(reqs)

    def abort_request(
        self, rid: str | None = None, abort_all: bool = False, reason: FinishReason | None = None
    ) -> list[GenerateOutput]:
        """Abort one request (by id) or all; returns their final outputs. Their KV is released at once.

        ``reason``: the finish reason reported (default: a plain abort, as when the client went away)."""
        hit = [r for r in self.waiting_queue if abort_all or r.rid == rid]
        self.waiting_queue = [r for r in self.waiting_queue if not (abort_all or r.rid == rid)]
        active = list(self.running_reqs) + ([self.chunked_req] if self.chunked_req else [])
        outputs = []
        for req in self.grammar_queue.remove(rid, abort_all) + hit + active:
            if abort_all or req.rid == rid:
                self._release(req)  # nothing to release for a waiting one (retracted ones hold no KV)
                outputs.append(abort_output(req, reason or FinishReason("abort")))
                self.stats.record_finished(
                    req
                )  # after abort_output set the finish reason: counted as aborted
        return outputs

    def poll_expired(self) -> list[Expired]:
        """(rid, message) of the live requests past the waiting or running timeout now (rank 0 decides)."""
        live = self.running_reqs + ([self.chunked_req] if self.chunked_req else []) + self.waiting_queue
        return self.timeouts.expired(live, time.perf_counter()) if self.timeouts.enabled else []

    def abort_expired(self, expired: list[Expired]) -> list[GenerateOutput]:
        """End the requests of ``expired`` with their 503 abort (KV freed; generated text kept)."""
        return [
            out
            for rid, message in expired
            for out in self.abort_request(rid, reason=service_unavailable(message))
        ]

    # ------------------------------------------------------------------ loop
    def is_idle(self) -> bool:
        """True when nothing is queued or running."""
        running = self.waiting_queue or self.running_reqs or self.chunked_req is not None
        return not running and not len(self.grammar_queue)

    def step(self, expired: list[Expired] | None = None) -> list[GenerateOutput]:
        """Run one forward pass (prefill if anything can be admitted, else decode); return the outputs.

        First the requests past a timeout end: ``expired`` when given (tensor parallelism: rank 0's decision),
        else this scheduler's own ``poll_expired()``."""
        outputs = self.abort_expired(self.poll_expired() if expired is None else expired)
        self._admit_compiled_grammars()
        batch = self._get_new_prefill_batch()
        if batch is None and self.running_reqs:
            batch = self._get_decode_batch()
        if batch is None:
            self.stats.idle()
            outputs, self._pending_outputs = outputs + self._pending_outputs, []
            return outputs
        self.forward_ct += 1
        if batch.forward_mode.is_extend():
            return outputs + self._run_extend(batch)
        return outputs + self._run_decode(batch)

    def _admit_compiled_grammars(self) -> None:
        """Constrained requests whose grammar compiled join the waiting queue; failed ones finish with the error."""
        nothing_else = not self.waiting_queue and not self.running_reqs and self.chunked_req is None
        ready, failed = self.grammar_queue.pop_ready(wait=nothing_else)
        self._enqueue(ready)
        for req in failed:
            self.stats.record_finished(req)
            self._pending_outputs.append(make_output(req))

    # ------------------------------------------------------------------ prefill
    def _get_new_prefill_batch(self) -> ScheduleBatch | None:
        if not self.waiting_queue and self.chunked_req is None:
            return None
        num_running = len(self.running_reqs)
        if num_running >= self.max_running_requests and self.chunked_req is None:
            return None
        reserve = sum(decode_reserve(r, self.new_token_ratio) for r in self.running_reqs)
        adder = PrefillAdder(
            rem_total_tokens=self.allocator.available_size() + self.tree_cache.evictable_size() - reserve,
            rem_input_tokens=self.max_prefill_tokens,
            rem_chunk_tokens=self.chunked_prefill_size,
            new_token_ratio=self.new_token_ratio,
        )
        prefix_lens: list[int] = []
        if self.chunked_req is not None:
            req = self.chunked_req
            if adder.add_one(req, len(req.prefix_indices), reserve=bool(self.running_reqs)):
                prefix_lens.append(len(req.prefix_indices))
            else:  # no KV for its next part: back to the queue; its computed part stays cached (a radix hit)
                self._retract(req)
            self.chunked_req = None
        match = partial(match_prefix, self.tree_cache)
        sort_waiting_queue(self.server_args.schedule_policy, self.waiting_queue, match, self.policy_rng)
        admitted: list[Req] = []
        for req in self.waiting_queue:
            if not adder.budget_state():
                break
            if num_running + len(adder.can_run) >= self.max_running_requests:
                break
            lpm = self.server_args.schedule_policy == "lpm"
            if not lpm or len(self.waiting_queue) == 1:
                match(req)
            if lpm and not self.tree_cache.disable and shares_uncached_prefix(req, adder.can_run):
                continue
            evictable_before = self.tree_cache.evictable_size()
            self.tree_cache.inc_lock_ref(req.last_node)
            adder.rem_total_tokens -= evictable_before - self.tree_cache.evictable_size()
            if not adder.add_one(req, len(req.prefix_indices)):
                self.tree_cache.dec_lock_ref(req.last_node)
                break
            req.start_time = req.start_time or time.perf_counter()
            req.req_pool_idx = self.req_to_token_pool.alloc()
            self.req_to_token_pool.write(req.req_pool_idx, 0, req.prefix_indices)
            if not req.output_ids and req.num_retractions == 0:
                req.cached_tokens = len(req.prefix_indices)
            prefix_lens.append(len(req.prefix_indices))
            admitted.append(req)
        if not adder.can_run:
            return None
        admitted_ids = {id(r) for r in admitted}
        self.waiting_queue = [r for r in self.waiting_queue if id(r) not in admitted_ids]
        batch = ScheduleBatch(adder.can_run, ForwardMode.EXTEND, list(adder.extend_lens), prefix_lens)
        if adder.new_chunked_req is not None:
            adder.new_chunked_req.is_chunked = True
            self.chunked_req = adder.new_chunked_req
        self.stats.log_prefill_batch(batch, self._num_used_tokens(), num_running, len(self.waiting_queue))
        return batch

    def _run_extend(self, batch: ScheduleBatch) -> list[GenerateOutput]:
        out_cache_loc = alloc_token_slots(self.allocator, self.tree_cache, batch.num_new_tokens())
        if out_cache_loc is None:  # budgets make this unreachable; never crash if it happens
            logger.warning("Prefill could not get KV slots; requests go back to the queue.")
            for req in batch.reqs:
                self._retract(req)
            self.chunked_req = None
            return []
        fields = build_extend_batch(batch, out_cache_loc, self.req_to_token_pool, self.device)
        logits = self.model_runner.forward(to_forward_batch(batch, fields, out_cache_loc, self.model_runner))
        sample_idx, outputs = [], []
        for i, req in enumerate(batch.reqs):
            req.kv_len = batch.prefix_lens[i] + batch.extend_lens[i]
            if i in batch.rows.input_rows:
                collect_input_logprobs(req, logits, *batch.rows.input_rows[i])
            if i in batch.rows.sample_row:
                req.is_chunked = False
                sample_idx.append(i)
            else:
                self.tree_cache.cache_unfinished_req(req)
        sample_reqs = [batch.reqs[i] for i in sample_idx]
        if sample_reqs:
            rows = torch.tensor([batch.rows.sample_row[i] for i in sample_idx], device=logits.device)
            outputs = self._sample_and_process(sample_reqs, logits[rows])
            for req in sample_reqs:
                if not req.finished():
                    # Publish the prompt's KV now so requests sharing this prefix reuse it while this one decodes.
                    self.tree_cache.cache_unfinished_req(req)
                    self.running_reqs.append(req)
        return outputs

    # ------------------------------------------------------------------ decode
    def _get_decode_batch(self) -> ScheduleBatch | None:
        num_needed = len(self.running_reqs)
        while self.allocator.available_size() + self.tree_cache.evictable_size() < num_needed:
            if len(self.running_reqs) == 1:
                req = self.running_reqs[0]
                self._release(req)
                reason = FinishReason("abort", message="The request does not fit in the KV cache.")
                self._pending_outputs.append(abort_output(req, reason))
                return None
            victim = min(self.running_reqs, key=lambda r: (len(r.output_ids), -len(r.origin_input_ids)))
            self.running_reqs.remove(victim)
            self._retract(victim)
            num_needed -= 1
            self.new_token_ratio = min(1.0, self.new_token_ratio + 0.3)
            self.stats.num_retracted_reqs += 1
            logger.info(
                f"KV cache is full: retracted 1 request (#running-req: {len(self.running_reqs)}, "
                f"new_token_ratio: {self.new_token_ratio:.2f})."
            )
        self.new_token_ratio = max(MIN_NEW_TOKEN_RATIO, self.new_token_ratio - NEW_TOKEN_RATIO_DECAY)
        return ScheduleBatch(list(self.running_reqs), ForwardMode.DECODE)

    def _run_decode(self, batch: ScheduleBatch) -> list[GenerateOutput]:
        out_cache_loc = alloc_token_slots(self.allocator, self.tree_cache, len(batch.reqs))
        fields = build_decode_batch(batch, out_cache_loc, self.req_to_token_pool)
        logits = self.model_runner.forward(to_forward_batch(batch, fields, out_cache_loc, self.model_runner))
        for req in batch.reqs:
            req.kv_len += 1
        outputs = self._sample_and_process(batch.reqs, logits)
        self.stats.log_decode(len(batch.reqs), self._num_used_tokens(), len(self.waiting_queue))
        return outputs

    # ------------------------------------------------------------------ sampling and outputs
    def _sample_and_process(self, reqs: list[Req], logits: torch.Tensor) -> list[GenerateOutput]:
        """logits: [len(reqs), V] -> append one token per request, finish, release, emit outputs."""
        outputs = self._pending_outputs
        self._pending_outputs = []
        zero_len = [r for r in reqs if r.sampling_params.max_new_tokens == 0]
        for req in zero_len:
            req.finished_reason = FinishReason("length", length=0)
        info = SamplingBatchInfo.from_reqs(
            reqs, self.model_runner.vocab_size, self.eos_token_ids, logits.device, self.penalty_counts
        )
        build_vocab_mask(info, reqs, self.grammar_queue.backend)
        next_ids = self.model_runner.sample(logits, info)
        info.record_output(next_ids)  # penalty counts, on the device
        readout = read_step(next_ids, logits, reqs)  # the step's one device -> host copy
        append_tokens(reqs, readout, self.eos_token_ids, self.context_len, self.tokenizer)
        self.stats.num_generated_tokens += len(reqs) - len(zero_len)
        for req in reqs:
            if req.finished():
                self._release(req)  # also drops it from running_reqs
                self.stats.record_finished(req)
                outputs.append(make_output(req))
            elif should_stream(req, self.server_args.stream_interval):
                outputs.append(make_output(req))
        return outputs

    # ------------------------------------------------------------------ KV release
    def _release(self, req: Req) -> None:
        """Hand a request's KV to the radix cache (or free it) and drop it from the running set."""
        if req in self.running_reqs:
            self.running_reqs.remove(req)
        if req is self.chunked_req:
            self.chunked_req = None
        if req.req_pool_idx is not None:
            self.tree_cache.cache_finished_req(req)
            req.req_pool_idx = None
        self.penalty_counts.release_req(req)

    def _retract(self, req: Req) -> None:
        self.penalty_counts.release_req(req)  # rebuilt from its output ids when it samples again
        if req.req_pool_idx is not None:
            self.tree_cache.cache_finished_req(req)
        req.reset_for_retract()
        self.waiting_queue.insert(0, req)

    def _num_used_tokens(self) -> int:
        return self.max_total_num_tokens - self.allocator.available_size() - self.tree_cache.evictable_size()

    # ------------------------------------------------------------------ control
    def flush_cache(self) -> ControlResult:
        """Empty the radix cache; refused while requests are running or waiting."""
        if not self.is_idle():
            return ControlResult(
                False,
                f"Cache not flushed because there are pending requests. #queue-req: {len(self.waiting_queue)}, "
                f"#running-req: {self._num_running()}",
            )
        self.tree_cache.reset()
        self.req_to_token_pool.clear()
        self.stats.reset_cache_counters()
        logger.info("Cache flushed successfully!")
        return ControlResult(True, "Cache flushed.")

    def check_memory_leak(self) -> tuple[bool, str]:
        """The KV check of ``SchedulerBase``, and no penalty-count row held while idle."""
        ok, detail = super().check_memory_leak()
        held = self.penalty_counts.num_used
        return ok and held == 0, f"{detail}, penalty rows held={held}"

    def _num_running(self) -> int:
        return len(self.running_reqs) + (1 if self.chunked_req else 0)

    def num_cached_tokens(self) -> int:
        """KV slots held by the radix cache."""
        return self.tree_cache.total_size()

    def live_counts(self) -> dict[str, int]:
        """Running (incl. a half-prefilled chunked request), queued, and KV slots in use."""
        return {
            "num_running": self._num_running(),
            "num_queued": len(self.waiting_queue) + len(self.grammar_queue),
            "num_used_tokens": self._num_used_tokens(),
        }

    def stats_extra(self) -> dict:
        """The chunked-prefill size in force."""
        return {"chunked_prefill_size": self.chunked_prefill_size}
