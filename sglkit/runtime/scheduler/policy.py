"""Schedule policy: orders the waiting queue (lpm / fcfs / lof / random) and admits requests into a prefill batch.

Orders (``--schedule-policy``, SGLang's names): 'lpm' longest cached prefix first (every request radix-matched),
'fcfs' queue order (arrival; a retracted request goes back to the front), 'lof' longest output first (by
``max_new_tokens``, descending; ties by arrival), 'random' a shuffle drawn from the scheduler's generator seeded
with ``random_seed`` (so a run repeats, and every tensor-parallel rank draws the same order).

Budgets per prefill batch: ``max_prefill_tokens`` new tokens, ``chunked_prefill_size`` tokens per pass (a longer
prompt is split and continued next pass), ``max_running_requests``, and KV: new tokens plus a reserve for the
future decode tokens of running and admitted requests (``new_token_ratio`` x remaining ``max_new_tokens``) must
fit in free + evictable slots.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from sglkit.core.req import Req
from sglkit.runtime.scheduler.batch import input_logprob_start

CLIP_MAX_NEW_TOKENS = 4096  # cap of one request's decode reserve, as in SGLang
IN_BATCH_PREFIX_THRESHOLD = (
    32  # defer a request sharing this many uncached tokens with one admitted this round
)


def decode_reserve(req: Req, new_token_ratio: float) -> int:
    """KV slots to keep aside for the rest of ``req``'s decoding."""
    remaining = max(req.sampling_params.max_new_tokens - len(req.output_ids), 0)
    return int(min(remaining, CLIP_MAX_NEW_TOKENS) * new_token_ratio)


def match_prefix(tree_cache, req: Req) -> None:
    """Radix-match ``req`` in ``tree_cache`` (leaving at least one token to compute; capped for input logprobs):
    sets ``req.prefix_indices`` and ``req.last_node``."""
    key = req.fill_ids[: len(req.fill_ids) - 1]
    first_logprob_pos = input_logprob_start(req)
    if first_logprob_pos is not None:
        key = key[:first_logprob_pos]
    req.prefix_indices, req.last_node = tree_cache.match_prefix(key)


def sort_waiting_queue(
    policy: str, waiting: list[Req], match_prefix: Callable[[Req], None], rng: random.Random | None = None
) -> None:
    """Order ``waiting`` in place by ``policy`` (see the module docstring). 'lpm' calls ``match_prefix(req)``
    (sets req.prefix_indices/last_node) on every request; 'random' shuffles with ``rng`` (needed then)."""
    if len(waiting) < 2:
        return
    if policy == "lpm":
        for req in waiting:
            match_prefix(req)
        waiting.sort(key=lambda r: -len(r.prefix_indices))
    elif policy == "lof":
        waiting.sort(key=lambda r: (-r.sampling_params.max_new_tokens, r.created_time))
    elif policy == "random":
        if rng is None:
            raise ValueError("The 'random' schedule policy needs a random.Random.")
        rng.shuffle(waiting)


def shares_uncached_prefix(req: Req, admitted: list[Req]) -> bool:
    """True when ``req`` shares at least IN_BATCH_PREFIX_THRESHOLD tokens beyond its cached prefix with a request
    admitted in this round: waiting one round lets it reuse that request's KV instead of computing it again."""
    start = len(req.prefix_indices)
    need = start + IN_BATCH_PREFIX_THRESHOLD
    ids = req.fill_ids
    if len(ids) < need:
        return False
    for other in admitted:
        other_ids = other.fill_ids
        if len(other_ids) >= need and other_ids[start:need] == ids[start:need]:
            return True
    return False


@dataclass
class PrefillAdder:
    """Greedy admission of waiting requests into one prefill batch."""

    rem_total_tokens: int  # free + evictable KV slots minus the decode reserve of running requests
    rem_input_tokens: int  # max_prefill_tokens budget
    rem_chunk_tokens: int | None  # chunked_prefill_size budget (None: no chunking)
    new_token_ratio: float
    can_run: list[Req] = field(default_factory=list)
    extend_lens: list[int] = field(default_factory=list)
    new_chunked_req: Req | None = None

    def budget_state(self) -> bool:
        """True while more requests may be added."""
        if self.new_chunked_req is not None or self.rem_input_tokens <= 0:
            return False
        return self.rem_chunk_tokens is None or self.rem_chunk_tokens > 0

    def add_one(self, req: Req, prefix_len: int, reserve: bool = True) -> bool:
        """Admit ``req`` (whole or its first chunk) if the budgets allow; True when admitted.

        ``reserve=False`` skips ``req``'s own decode reserve (a chunked request with nothing else running: it
        must be able to continue, and decoding retracts if the estimate was short).
        """
        extend_len = len(req.fill_ids) - prefix_len
        reserve = decode_reserve(req, self.new_token_ratio) if reserve else 0
        if self.can_run and extend_len > self.rem_input_tokens:  # max_prefill_tokens, chunked or not
            return False
        if self.rem_chunk_tokens is not None and extend_len > self.rem_chunk_tokens:
            # Long prompt: take one chunk now, the rest next pass.
            chunk = self.rem_chunk_tokens
            if chunk > self.rem_total_tokens:
                return False
            self._take(req, chunk)
            self.new_chunked_req = req
            return True
        if extend_len + reserve > self.rem_total_tokens:
            return False
        self._take(req, extend_len)
        self.rem_total_tokens -= reserve
        return True

    def _take(self, req: Req, num_tokens: int) -> None:
        self.can_run.append(req)
        self.extend_lens.append(num_tokens)
        self.rem_total_tokens -= num_tokens
        self.rem_input_tokens -= num_tokens
        if self.rem_chunk_tokens is not None:
            self.rem_chunk_tokens -= num_tokens
