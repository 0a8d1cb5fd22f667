"""Schedule policy: orders the waiting queue (fcfs / lpm) and admits requests into a prefill batch under budgets.

Budgets per prefill batch: ``max_prefill_tokens`` new tokens, ``chunked_prefill_size`` tokens per pass (a longer
prompt is split and continued next pass), ``max_running_requests``, and KV: new tokens plus a reserve for the
future decode tokens of running and admitted requests (``new_token_ratio`` x remaining ``max_new_tokens``) must
fit in free + evictable slots.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sglkit.core.req import Req

CLIP_MAX_NEW_TOKENS = 4096  # cap of one request's decode reserve, as in SGLang
IN_BATCH_PREFIX_THRESHOLD = (
    32  # defer a request sharing this many uncached tokens with one admitted this round
)


def decode_reserve(req: Req, new_token_ratio: float) -> int:
    """KV slots to keep aside for the rest of ``req``'s decoding."""
    remaining = max(req.sampling_params.max_new_tokens - len(req.output_ids), 0)
    return int(min(remaining, CLIP_MAX_NEW_TOKENS) * new_token_ratio)


def sort_waiting_queue(policy: str, waiting: list[Req], match_prefix) -> None:
    """Order ``waiting`` in place. 'lpm' matches every request against the radix cache (longest first);
    'fcfs' keeps arrival order. ``match_prefix(req)`` sets req.prefix_indices/last_node."""
    if policy == "lpm" and len(waiting) > 1:
        for req in waiting:
            match_prefix(req)
        waiting.sort(key=lambda r: -len(r.prefix_indices))


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
