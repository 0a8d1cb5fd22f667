"""Embedding client: the HTTP process's asyncio path for embedding inputs (embedding routes -> scheduler process).

Uses the tokenizer manager's public pieces only: its tokenizer and limits to build requests (off the event loop),
``send_sock`` to send them, ``rid_to_queue`` to receive each input's EmbeddingOutput (its output loop routes any
output by ``rid``), ``unpaused`` / ``num_in_flight`` so /update_weights drains embedding requests too, and
``alive`` to answer 503 when the scheduler process is gone. A client that disconnects aborts its inputs.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sglkit.core.messages import AbortReq, EmbeddingOutput, TokenizedEmbeddingReq
from sglkit.runtime.frontend.embedding_input import EmbeddingInput, build_embedding_requests
from sglkit.runtime.frontend.input_processor import InvalidRequestError
from sglkit.server.tokenizer_manager import ServerUnavailableError

logger = logging.getLogger("sglkit.server")

DISCONNECT_POLL_S = 1.0


class ClientDisconnected(Exception):
    """The HTTP client went away before the embeddings were ready (its inputs were aborted)."""


async def tokenize_embedding_input(
    tm, inp: EmbeddingInput, text_param: str = "text", ids_param: str = "input_ids"
) -> tuple[bool, list[TokenizedEmbeddingReq]]:
    """Validate and tokenize off the event loop; InvalidRequestError (400) names the offending field."""
    if not tm.alive:
        raise ServerUnavailableError("The server is unhealthy: the scheduler process died.")
    vocab_size = getattr(tm, "vocab_size", None) or len(tm.tokenizer)
    return await asyncio.to_thread(
        build_embedding_requests,
        inp,
        tm.tokenizer,
        vocab_size,
        tm.context_len,
        text_param=text_param,
        ids_param=ids_param,
    )


async def run_embedding_requests(
    tm, reqs: list[TokenizedEmbeddingReq], request=None
) -> list[EmbeddingOutput]:
    """Send ``reqs`` to the scheduler and return their outputs in order.

    Raises InvalidRequestError when the scheduler refused an input, ServerUnavailableError when the scheduler
    process died, and ClientDisconnected when ``request``'s client went away (its inputs are aborted).
    """
    await tm.unpaused.wait()
    if not tm.alive:
        raise ServerUnavailableError("The server is unhealthy: the scheduler process died.")
    queue: asyncio.Queue = asyncio.Queue()
    for r in reqs:
        if r.rid in tm.rid_to_queue:
            raise InvalidRequestError(f"Duplicate request id {r.rid!r}.", "rid")
    for r in reqs:
        tm.rid_to_queue[r.rid] = queue
    finals: dict[str, Any] = {}
    tm.num_in_flight += len(reqs)
    try:
        tm.send_sock.send_pyobj(list(reqs))
        while len(finals) < len(reqs):
            try:
                out = await asyncio.wait_for(queue.get(), timeout=DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if request is not None and await request.is_disconnected():
                    logger.info(
                        f"Client disconnected; aborting {len(reqs) - len(finals)} embedding input(s)."
                    )
                    raise ClientDisconnected() from None
                continue
            finals[out.rid] = out
            if getattr(out, "error", None):
                if not tm.alive:
                    raise ServerUnavailableError(out.error)
                raise InvalidRequestError(out.error)
    finally:
        for r in reqs:
            if r.rid not in finals:
                tm.send_sock.send_pyobj(AbortReq(rid=r.rid))
            tm.rid_to_queue.pop(r.rid, None)
        tm.num_in_flight -= len(reqs)
    return [finals[r.rid] for r in reqs]


async def encode(
    tm, inp: EmbeddingInput, request=None, text_param: str = "text", ids_param: str = "input_ids"
) -> tuple[bool, list[EmbeddingOutput]]:
    """Tokenize and run ``inp``; (is_batch, one output per input, in order)."""
    is_batch, reqs = await tokenize_embedding_input(tm, inp, text_param, ids_param)
    return is_batch, await run_embedding_requests(tm, reqs, request)
