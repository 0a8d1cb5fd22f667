"""Messages: the small dataclasses that cross the boundary between the front end and the scheduler.

Front end (Engine or HTTP tokenizer manager) -> scheduler: TokenizedGenerateReq, AbortReq, FlushCacheReq,
UpdateWeightsReq, GetStatsReq. Scheduler -> front end: GenerateOutput (one per request per step with news),
and a ControlResult answering each control request. The offline Engine passes them in-process; the server
pickles them over ZMQ. Process loops stay thin: recv -> handle -> send.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sglkit.core.sampling_params import SamplingParams


def input_too_long_message(num_input: int, context_len: int, where: str = "") -> str:
    """SGLang's refusal of an input longer than the context (``where`` names a batch entry, e.g. ``text[2]``)."""
    where = f" {where}" if where else ""
    return f"The input{where} ({num_input} tokens) is longer than the model's context length ({context_len} tokens)."


@dataclass
class TokenizedGenerateReq:
    """A validated, tokenized generation request for the scheduler."""

    rid: str
    input_ids: list[int]
    sampling_params: SamplingParams
    input_text: str | None = None
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    stream: bool = False
    token_ids_logprob: list[int] | None = None  # also return these ids' logprobs at every scored position


@dataclass
class GenerateOutput:
    """News about one request: new text and tokens since the last output; ``finished`` on the last one."""

    rid: str
    text_delta: str
    output_ids_delta: list[int]
    finished: bool
    meta_info: dict[str, Any] = field(default_factory=dict)
    # Logprob deltas, as (logprob, token_id) pairs and top-k lists.
    input_token_logprobs: list[tuple[float | None, int]] = field(default_factory=list)
    input_top_logprobs: list[Any] = field(default_factory=list)
    output_token_logprobs_delta: list[tuple[float, int]] = field(default_factory=list)
    output_top_logprobs_delta: list[Any] = field(default_factory=list)
    # token_ids_logprob: per position, the (logprob, token_id) pairs of the asked ids; None when not asked.
    input_token_ids_logprobs: list[Any] | None = None
    output_token_ids_logprobs_delta: list[Any] | None = None
    error: str | None = None  # set when the request failed inside the scheduler
    # HTTP status of a failed request: 400 for a bad input, 503 when the server gave up on it (queue full,
    # waiting / running timeout, shutting down, scheduler gone).
    error_status: int = 400


@dataclass
class AbortReq:
    """Abort one request by id, or all of them."""

    rid: str | None = None
    abort_all: bool = False


@dataclass
class FlushCacheReq:
    """Flush the radix cache (refused while requests are running or waiting)."""


@dataclass
class UpdateWeightsReq:
    """Load new weights of the same architecture and shapes from a folder (safetensors only)."""

    model_path: str


@dataclass
class GetStatsReq:
    """Ask for live scheduler statistics."""


@dataclass
class ControlResult:
    """Answer to a control request: success flag, message, optional payload."""

    success: bool
    message: str = ""
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class TokenizedEmbeddingReq:
    """A validated, tokenized input for an embedding / reward model (``--is-embedding``)."""

    rid: str
    input_ids: list[int]
    input_text: str | None = None


@dataclass
class EmbeddingOutput:
    """The pooled vector (embedding, or the scores of a reward / classification model) of one input.

    Always final (``finished`` is True); ``error`` is set instead of ``embedding`` when the input failed.
    """

    rid: str
    embedding: list[float]
    meta_info: dict[str, Any] = field(default_factory=dict)
    finished: bool = True
    error: str | None = None
    error_status: int = 400  # HTTP status of a failed input: 400 bad input, 503 queue full / waiting timeout
