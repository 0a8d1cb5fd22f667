"""Intake (scheduler, on arrival): a TokenizedGenerateReq from the front end -> the scheduler's plain ``Req``.

The arrival time is stamped (``created_time``). A seeded request needs nothing here: its draws are
``hash(sampling_seed, position)`` (``sglkit.runtime.executor.sampling.seeded``).
Whether it may queue (fits the context and the KV pool, the waiting queue not full) is the scheduler's call.
"""

from __future__ import annotations

import time

from sglkit.core.messages import TokenizedGenerateReq
from sglkit.core.req import Req

__all__ = ["kv_fit_error", "new_req"]


def new_req(recv: TokenizedGenerateReq, device: str) -> Req:
    """The ``Req`` for ``recv``, stamped with its arrival time (``device``: kept for callers; unused)."""
    params = recv.sampling_params
    req = Req(
        rid=recv.rid,
        origin_input_ids=list(recv.input_ids),
        sampling_params=params,
        origin_input_text=recv.input_text,
        return_logprob=recv.return_logprob,
        top_logprobs_num=recv.top_logprobs_num,
        logprob_start_len=recv.logprob_start_len,
        stream=recv.stream,
        token_ids_logprob=recv.token_ids_logprob,
    )
    req.created_time = time.perf_counter()
    return req


def kv_fit_error(num_input: int, max_total_num_tokens: int) -> str | None:
    """Why a prompt of ``num_input`` tokens can never run in a KV pool of ``max_total_num_tokens`` (it needs one
    more slot for a generated token); None when it fits."""
    if num_input + 1 > max_total_num_tokens:
        return f"The input ({num_input} tokens) does not fit in the KV cache ({max_total_num_tokens} tokens)."
    return None
