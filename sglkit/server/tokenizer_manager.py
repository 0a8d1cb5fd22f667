"""Tokenizer manager: the HTTP process's asyncio front end to the scheduler process.

HTTP handler -> tokenize (off the event loop) -> [ZMQ] scheduler -> [ZMQ] GenerateOutput deltas -> per-request
asyncio queues -> chunks with cumulative text for the handler. A client that goes away aborts its requests;
a dead scheduler process ends every waiting request with an error instead of a hang.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

import zmq
import zmq.asyncio

from sglkit.core.messages import (
    AbortReq,
    ControlResult,
    EmbeddingOutput,
    FlushCacheReq,
    GenerateOutput,
    GetStatsReq,
    TokenizedEmbeddingReq,
    TokenizedGenerateReq,
    UpdateWeightsReq,
)
from sglkit.runtime.frontend.embedding_input import EmbeddingInput, build_embedding_requests
from sglkit.runtime.frontend.input_processor import GenerateInput, InvalidRequestError, build_requests
from sglkit.runtime.frontend.output_folder import OutputFolder
from sglkit.runtime.frontend.tokenizer import load_tokenizer
from sglkit.runtime.scheduler.process import PortArgs
from sglkit.server_args import ServerArgs

logger = logging.getLogger("sglkit.server")

DISCONNECT_POLL_S = 1.0
CONTROL_TIMEOUT_S = 600.0


class ServerUnavailableError(RuntimeError):
    """The scheduler process is gone; the server answers 503."""


class RequestFailedError(RuntimeError):
    """A request ended with an error inside the scheduler."""


class ClientDisconnected(Exception):
    """The HTTP client went away before its requests finished (they were aborted)."""


SCHEDULER_DIED = "The server is unhealthy: the scheduler process died."


class TokenizerManager:
    """Sends requests to the scheduler process and routes its outputs back to waiting handlers."""

    def __init__(self, server_args: ServerArgs, port_args: PortArgs, model_info: dict[str, Any]) -> None:
        self.server_args = server_args
        self.tokenizer = load_tokenizer(server_args.tokenizer_path, server_args.chat_template)
        self.context_len: int = model_info["context_len"]
        self.max_total_num_tokens: int = model_info["max_total_num_tokens"]
        self.vocab_size: int = model_info.get("vocab_size") or len(self.tokenizer)
        self.model_path: str = server_args.model_path
        self.ctx = zmq.asyncio.Context()
        self.recv_sock = self.ctx.socket(zmq.PULL)
        self.recv_sock.bind(port_args.scheduler_output)
        self.send_sock = zmq.Context.instance().socket(zmq.PUSH)
        self.send_sock.connect(port_args.scheduler_input)
        self.rid_to_queue: dict[str, asyncio.Queue] = {}
        self.control_lock = asyncio.Lock()
        self.control_future: asyncio.Future | None = None
        self.weights_lock = asyncio.Lock()
        self.unpaused = asyncio.Event()
        self.unpaused.set()
        self.alive = True
        self.num_in_flight = 0

    # ----- background tasks -----
    def start(self, scheduler_process) -> None:
        """Start the output loop and the scheduler-death watcher on the running event loop."""
        self._tasks = [
            asyncio.create_task(self._handle_loop()),
            asyncio.create_task(self._watch_scheduler(scheduler_process)),
        ]

    async def _handle_loop(self) -> None:
        while True:
            try:
                obj = await self.recv_sock.recv_pyobj()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one bad message must not end the loop (every request would hang)
                logger.exception("Dropped an undecodable message from the scheduler process")
                continue
            if isinstance(obj, ControlResult):
                if self.control_future is not None and not self.control_future.done():
                    self.control_future.set_result(obj)
                continue
            for out in obj:
                queue = self.rid_to_queue.get(out.rid)
                if queue is not None:
                    queue.put_nowait(out)

    async def _watch_scheduler(self, process) -> None:
        while process.is_alive():
            await asyncio.sleep(0.5)
        self.alive = False
        logger.error(f"The scheduler process died (exit code {process.exitcode}). The server is unhealthy.")
        for rid, queue in list(self.rid_to_queue.items()):
            queue.put_nowait(
                GenerateOutput(
                    rid,
                    "",
                    [],
                    True,
                    {"id": rid, "finish_reason": {"type": "abort"}},
                    error="The scheduler process died.",
                )
            )
        if self.control_future is not None and not self.control_future.done():
            self.control_future.set_exception(ServerUnavailableError("The scheduler process died."))

    # ----- generation -----
    def _check_alive(self) -> None:
        if not self.alive:
            raise ServerUnavailableError(SCHEDULER_DIED)

    async def tokenize(self, inp: GenerateInput) -> tuple[bool, list[TokenizedGenerateReq], list[int]]:
        """Validate and tokenize off the event loop; raises InvalidRequestError for bad input."""
        self._check_alive()
        return await asyncio.to_thread(build_requests, inp, self.tokenizer, self.vocab_size, self.context_len)

    async def _dispatch(
        self, reqs: Sequence[TokenizedGenerateReq | TokenizedEmbeddingReq], request=None
    ) -> AsyncIterator[GenerateOutput | EmbeddingOutput]:
        """The one request path: send ``reqs``, yield each of their outputs until every one has finished.

        Raises ClientDisconnected when ``request``'s client goes away and ServerUnavailableError when the
        scheduler process died. Leaving early (disconnect, error, cancellation, the caller stopping) aborts
        every unfinished request, so its KV is freed. Waits while /update_weights holds new requests.
        """
        await self.unpaused.wait()
        self._check_alive()
        for r in reqs:
            if r.rid in self.rid_to_queue:
                raise InvalidRequestError(f"Duplicate request id {r.rid!r}.", "rid")
        queue: asyncio.Queue = asyncio.Queue()
        for r in reqs:
            self.rid_to_queue[r.rid] = queue
        unfinished = {r.rid for r in reqs}
        self.num_in_flight += len(reqs)
        try:
            self.send_sock.send_pyobj(list(reqs))
            while unfinished:
                try:
                    out = await asyncio.wait_for(queue.get(), timeout=DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if request is not None and await request.is_disconnected():
                        logger.info(f"Client disconnected; aborting {len(unfinished)} request(s).")
                        raise ClientDisconnected() from None
                    continue
                if out.finished:
                    unfinished.discard(out.rid)
                if out.error and not self.alive:
                    raise ServerUnavailableError(out.error)
                yield out
        finally:
            for rid in unfinished:
                self.send_sock.send_pyobj(AbortReq(rid=rid))
            for r in reqs:
                self.rid_to_queue.pop(r.rid, None)
            self.num_in_flight -= len(reqs)

    async def run(
        self, reqs: list[TokenizedGenerateReq], owners: list[int] | None = None, request=None
    ) -> AsyncIterator[dict[str, Any]]:
        """Send ``reqs`` and yield cumulative chunks (``index`` = position in ``reqs``) until all finish.

        Streaming requests yield every chunk; others yield only their final chunk. A chunk is the request's
        folded response (``text``, ``output_ids``, ``meta_info``) plus ``index``, ``delta``, ``finished`` and
        ``error``. A client that goes away ends the iteration early (its requests are aborted).
        """
        index_of = {r.rid: i for i, r in enumerate(reqs)}
        folders = {r.rid: OutputFolder(r.return_logprob) for r in reqs}
        try:
            async with aclosing(self._dispatch(reqs, request)) as outputs:
                async for out in outputs:
                    folder = folders[out.rid]
                    folder.add(out)
                    index = index_of[out.rid]
                    chunk = {
                        **folder.response(),
                        "index": index,
                        "delta": out.text_delta,
                        "finished": out.finished,
                        "error": out.error,
                    }
                    if out.finished and self.server_args.log_requests:
                        self._log_request(reqs[index], chunk)
                    if out.finished or reqs[index].stream:
                        yield chunk
        except ClientDisconnected:
            return

    async def encode(
        self, inp: EmbeddingInput, request=None, text_param: str = "text", ids_param: str = "input_ids"
    ) -> tuple[bool, list[EmbeddingOutput]]:
        """Tokenize (off the event loop) and embed ``inp``: (is_batch, one output per input, in order).

        Raises InvalidRequestError (400, naming ``text_param``/``ids_param``) for bad input or an input the
        scheduler refused, ServerUnavailableError when the scheduler process died, and ClientDisconnected.
        """
        self._check_alive()
        is_batch, reqs = await asyncio.to_thread(
            build_embedding_requests,
            inp,
            self.tokenizer,
            self.vocab_size,
            self.context_len,
            text_param=text_param,
            ids_param=ids_param,
        )
        finals: dict[str, EmbeddingOutput] = {}
        async with aclosing(self._dispatch(reqs, request)) as outputs:
            async for out in outputs:
                if out.error:
                    raise InvalidRequestError(out.error)
                finals[out.rid] = out
        return is_batch, [finals[r.rid] for r in reqs]

    @staticmethod
    def _log_request(req: TokenizedGenerateReq, chunk: dict[str, Any]) -> None:
        """--log-requests: one line per finished request with its input and output."""
        shown_input = req.input_text if req.input_text is not None else f"<{len(req.input_ids)} token ids>"
        logger.info(
            f"Finish: rid={req.rid}, input={shown_input!r}, output={chunk['text']!r}, "
            f"meta_info={ {k: v for k, v in chunk['meta_info'].items() if 'logprobs' not in k} }"
        )

    async def generate_once(self, inp: GenerateInput, request=None) -> list[dict[str, Any]]:
        """Tokenize, run and return the final chunk of every request (non-streaming)."""
        inp.stream = False
        _, reqs, _ = await self.tokenize(inp)
        finals: list[dict[str, Any]] = [None] * len(reqs)  # type: ignore[list-item]
        async for chunk in self.run(reqs, request=request):
            finals[chunk["index"]] = chunk
        return finals

    def abort_request(self, rid: str | None = None, abort_all: bool = False) -> bool:
        """Abort by id (or all). Returns False when the id is not in flight."""
        if not abort_all and rid not in self.rid_to_queue:
            return False
        self.send_sock.send_pyobj(AbortReq(rid=rid, abort_all=abort_all))
        return True

    # ----- control -----
    async def control(self, msg, timeout: float = CONTROL_TIMEOUT_S) -> ControlResult:
        """Send one control message and wait for its ControlResult."""
        self._check_alive()
        async with self.control_lock:
            self._check_alive()  # it died while we waited for the lock: nobody would answer
            self.control_future = asyncio.get_running_loop().create_future()
            self.send_sock.send_pyobj(msg)
            try:
                return await asyncio.wait_for(self.control_future, timeout)
            finally:
                self.control_future = None

    async def flush_cache(self) -> ControlResult:
        """Flush the radix cache (refused while requests are in flight)."""
        return await self.control(FlushCacheReq())

    async def get_stats(self) -> dict[str, Any]:
        """Live scheduler statistics."""
        return (await self.control(GetStatsReq(), timeout=30.0)).payload

    async def update_weights(self, model_path: str, drain_timeout: float = 300.0) -> ControlResult:
        """Hold new requests, let in-flight ones finish, swap weights, resume."""
        async with self.weights_lock:
            self.unpaused.clear()
            try:
                deadline = time.monotonic() + drain_timeout
                while self.num_in_flight > 0:
                    if time.monotonic() > deadline:
                        return ControlResult(
                            False, "Failed to update weights: in-flight requests did not finish."
                        )
                    await asyncio.sleep(0.02)
                result = await self.control(UpdateWeightsReq(model_path))
                if result.success:
                    self.model_path = model_path
                return result
            finally:
                self.unpaused.set()
