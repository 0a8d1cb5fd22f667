"""The plain request object shared by the queue, the radix cache and the scheduler (no model tensors).

Lifecycle: waiting -> (radix match, admit) -> running (prefill in one or more chunks, then decode)
-> finished (KV handed to the radix cache) ; a running request may be retracted back to waiting.

KV bookkeeping (see ``sglkit.cache``): ``prefix_indices`` are KV slots already valid for
``fill_ids[:len(prefix_indices)]``; ``kv_len`` counts tokens whose KV is in the pool for this request.
The last sampled token never has KV until it is fed back by the next decode step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from sglkit.core.sampling_params import SamplingParams


@dataclass
class FinishReason:
    """Why a request finished, in SGLang's ``meta_info.finish_reason`` shape."""

    type: str  # "length" | "stop" | "abort"
    length: int | None = None
    matched: int | str | None = None
    message: str | None = None
    status_code: int | None = None  # abort only: its HTTP status (503: the server gave up on it)

    def to_json(self) -> dict[str, Any]:
        """SGLang's JSON form: {"type": "length", "length": N} / {"type": "stop", "matched": x} / {"type": "abort"}
        (an abort with its "message" and "status_code" when set)."""
        if self.type == "length":
            return {"type": "length", "length": self.length}
        if self.type == "stop":
            return {"type": "stop", "matched": self.matched}
        out: dict[str, Any] = {"type": "abort"}
        if self.message:
            out["message"] = self.message
        if self.status_code is not None:
            out["status_code"] = self.status_code
        return out


@dataclass(eq=False)
class Req:
    """One generation request as the scheduler sees it."""

    rid: str
    origin_input_ids: list[int]
    sampling_params: SamplingParams
    origin_input_text: str | None = None
    return_logprob: bool = False
    top_logprobs_num: int = 0
    logprob_start_len: int = -1
    stream: bool = False
    token_ids_logprob: list[int] | None = None  # ids whose logprobs are returned at every scored position

    # Generation state.
    output_ids: list[int] = field(default_factory=list)
    finished_reason: FinishReason | None = None
    penalty_row: int | None = None  # its row of the scheduler's PenaltyCounts (penalized requests only)
    grammar: Any = None  # sglkit.constrained.GrammarMatcher when the request is constrained
    grammar_future: Any = None  # the compile in flight while the request waits for its grammar

    # KV / cache state (owned by the scheduler and the radix cache).
    req_pool_idx: int | None = None
    prefix_indices: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    last_node: Any = None
    fill_len: int = 0  # length of fill_ids covered by the pass being prepared / just run
    kv_len: int = 0  # tokens of fill_ids whose KV is in the pool
    is_chunked: bool = False  # True while a long prompt is prefilled in several chunks
    cached_tokens: int = 0  # prompt tokens served from the radix cache (first admission)
    num_retractions: int = 0

    # Logprob accumulators: lists of (logprob, token_id) and top-k lists.
    input_token_logprobs: list[tuple[float | None, int]] = field(default_factory=list)
    input_top_logprobs: list[list[tuple[float, int]] | None] = field(default_factory=list)
    output_token_logprobs: list[tuple[float, int]] = field(default_factory=list)
    output_top_logprobs: list[list[tuple[float, int]]] = field(default_factory=list)
    # token_ids_logprob: one list of (logprob, token_id) per scored position (None for the prompt's first token).
    input_token_ids_logprobs: list[list[tuple[float, int]] | None] = field(default_factory=list)
    output_token_ids_logprobs: list[list[tuple[float, int]]] = field(default_factory=list)

    # Streaming / detokenization state (owned by the output path).
    detokenizer: Any = None
    text: str = ""
    sent_text_len: int = 0
    sent_output_len: int = 0
    # Timestamps (time.perf_counter(); 0.0 until they happen): arrival at the scheduler, entry into the waiting
    # queue (once: a retracted request keeps it), first admission into a prefill batch, first sampled token.
    created_time: float = 0.0
    queued_time: float = 0.0
    start_time: float = 0.0
    first_token_time: float = 0.0

    @property
    def fill_ids(self) -> list[int]:
        """Tokens whose KV must be in the pool before the next token can be sampled."""
        return self.origin_input_ids + self.output_ids

    @property
    def seq_len(self) -> int:
        """Prompt plus generated tokens."""
        return len(self.origin_input_ids) + len(self.output_ids)

    def finished(self) -> bool:
        """True once a finish reason is set."""
        return self.finished_reason is not None

    def reset_for_retract(self) -> None:
        """Forget KV state so the request can be re-admitted from the waiting queue."""
        self.req_pool_idx = None
        self.prefix_indices = torch.empty(0, dtype=torch.int64)
        self.last_node = None
        self.fill_len = 0
        self.kv_len = 0
        self.is_chunked = False
        self.num_retractions += 1
