"""Tokenizer manager: the HTTP process's asyncio front end to the scheduler process.

HTTP handler -> tokenize (off the event loop) -> [ZMQ] scheduler -> [ZMQ] GenerateOutput deltas -> per-request
asyncio queues -> chunks with cumulative text for the handler. A client that goes away aborts its requests;
a dead scheduler process ends every waiting request with an error instead of a hang.

``--dp-size N``: a PUSH socket per replica, one PULL socket for all; ``router.Router`` picks each request's replica
(in-flight counts and each request's replica are tracked here); control requests go to every replica in turn.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
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
    GenerateOutput,
    TokenizedEmbeddingReq,
    TokenizedGenerateReq,
)
from sglkit.runtime.frontend.embedding_input import EmbeddingInput, build_embedding_requests
from sglkit.runtime.frontend.input_processor import GenerateInput, InvalidRequestError, build_requests
from sglkit.runtime.frontend.output_folder import OutputFolder
from sglkit.runtime.frontend.sampling_defaults import model_sampling_defaults
from sglkit.runtime.frontend.tokenizer import load_tokenizer
from sglkit.runtime.scheduler.rank_process import PortArgs
from sglkit.server.metrics import create_metrics_collector
from sglkit.server.router import Router
from sglkit.server.scheduler_link import SchedulerLink
from sglkit.server.tokenizer_control import ControlClient
from sglkit.server_args import ServerArgs

logger = logging.getLogger("sglkit.server")

DISCONNECT_POLL_S = 1.0
UNHEALTHY_EXIT_DELAY_S = 10.0  # a dead scheduler: answer 503 this long, then exit


class ServerUnavailableError(RuntimeError):
    """The scheduler process is gone; the server answers 503."""


class RequestFailedError(RuntimeError):
    """A request ended with an error inside the scheduler."""


class ClientDisconnected(Exception):
    """The HTTP client went away before its requests finished (they were aborted)."""


SCHEDULER_DIED = "The server is unhealthy: the scheduler process died."
SHUTTING_DOWN = "The server is shutting down."
ANSWER_WAIT_S = 1.0  # after a shutdown ended the last requests: time for their handlers to answer


def preload_tokenizer(server_args: ServerArgs):
    """The server's tokenizer (with its chat template), or None with --skip-tokenizer-init."""
    if server_args.skip_tokenizer_init:
        return None
    return load_tokenizer(server_args.tokenizer_path, server_args.chat_template)


class TokenizerManager(ControlClient):
    """Sends requests to the scheduler(s) and routes outputs back; ``port_args``: one or a list (one per replica)."""

    def __init__(
        self,
        server_args: ServerArgs,
        port_args: PortArgs | Sequence[PortArgs],
        model_info: dict[str, Any],
        tokenizer=None,
    ) -> None:
        """``tokenizer``: already loaded (``preload_tokenizer``), else loaded here."""
        self.server_args = server_args
        self.tokenizer = tokenizer  # None with --skip-tokenizer-init (runtime/frontend/token_only.py)
        if self.tokenizer is None:
            self.tokenizer = preload_tokenizer(server_args)
        self.context_len: int = model_info["context_len"]
        self.max_total_num_tokens: int = model_info["max_total_num_tokens"]
        self.vocab_size: int = model_info.get("vocab_size") or len(self.tokenizer)
        self.model_path: str = server_args.model_path
        self.sampling_defaults = model_sampling_defaults(
            server_args.model_path, server_args.sampling_defaults
        )
        self.ctx = zmq.asyncio.Context()
        replicas = [port_args] if isinstance(port_args, PortArgs) else list(port_args)
        self.dp_size = len(replicas)
        self.recv_sock = self.ctx.socket(zmq.PULL)
        self.links: list[SchedulerLink] = []  # one per replica; sending never blocks the event loop
        for replica in replicas:
            self.recv_sock.bind(replica.scheduler_output)
            self.links.append(SchedulerLink(self.ctx, replica.scheduler_input))
        self.router = Router(
            self.dp_size, server_args.load_balance_method, max_tree_tokens=self.max_total_num_tokens
        )
        self.replica_loads = [0] * self.dp_size  # requests in flight per replica (the router's load)
        self.rid_to_replica: dict[str, int] = {}
        self.rid_to_queue: dict[str, asyncio.Queue] = {}
        self.control_lock = asyncio.Lock()
        self.control_future: asyncio.Future | None = None
        self.weights_lock = asyncio.Lock()
        self.unpaused = asyncio.Event()
        self.unpaused.set()
        self.alive = True
        # SIGTERM received: new requests get 503, in-flight ones a last chance to finish.
        self.draining = False
        self.exit_code: int | None = None  # set when the server must exit (launch_server exits with it)
        self.num_in_flight = 0
        self.metrics = create_metrics_collector(server_args)  # /metrics; timed in run()

    # ----- background tasks -----
    def start(self, scheduler_process) -> None:
        """Start the output loop and the scheduler-death watcher on the running event loop.

        ``scheduler_process``: the replica's process, or a list with one per replica (data parallelism).
        """
        processes = scheduler_process if isinstance(scheduler_process, (list, tuple)) else [scheduler_process]
        for link in self.links:
            link.start()
        self._tasks = [
            asyncio.create_task(self._handle_loop()),
            asyncio.create_task(self._watch_schedulers(processes)),
            asyncio.create_task(self._exit_when_unhealthy()),
        ]

    async def _exit_when_unhealthy(self) -> None:
        """Once a scheduler died the server cannot recover: answer 503 for ``UNHEALTHY_EXIT_DELAY_S`` (in-flight
        requests get their errors, probes see the failure), then stop this process (exit code 1)."""
        while self.alive:
            await asyncio.sleep(0.2)
        logger.error(f"The server will exit in {UNHEALTHY_EXIT_DELAY_S:.0f} s: its scheduler is gone.")
        await asyncio.sleep(UNHEALTHY_EXIT_DELAY_S)
        logger.error("Exiting: the scheduler process died.")
        self.exit_code = 1
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down, then launch_server cleans up and exits

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

    async def _watch_schedulers(self, processes: Sequence) -> None:
        """Poll every replica's process; each death is handled once (``_on_scheduler_death``)."""
        dead: set[int] = set()
        while len(dead) < len(processes):
            for dp_rank, process in enumerate(processes):
                if dp_rank not in dead and not process.is_alive():
                    dead.add(dp_rank)
                    self._on_scheduler_death(dp_rank, process)
            await asyncio.sleep(0.5)

    def _on_scheduler_death(self, dp_rank: int, process) -> None:
        """Mark the server unhealthy; end the dead replica's requests (and any control wait) with an error."""
        self.alive = False
        where = f" of DP replica {dp_rank}" if self.dp_size > 1 else ""
        logger.error(
            f"The scheduler process{where} died (exit code {process.exitcode}). The server is unhealthy."
        )
        self._end_requests("The scheduler process died.", dp_rank)
        if self.control_future is not None and not self.control_future.done():
            self.control_future.set_exception(ServerUnavailableError("The scheduler process died."))

    # ----- generation -----
    def _check_alive(self) -> None:
        if not self.alive:
            raise ServerUnavailableError(SCHEDULER_DIED)
        if self.draining:
            raise ServerUnavailableError(SHUTTING_DOWN)

    def _end_requests(self, message: str, replica: int | None = None) -> None:
        """End every request in flight (of ``replica``, or all) with a 503 error output; handlers answer it."""
        for rid, queue in list(self.rid_to_queue.items()):
            if replica is not None and self.rid_to_replica.get(rid, 0) != replica:
                continue
            reason = {"type": "abort", "message": message, "status_code": 503}
            queue.put_nowait(
                GenerateOutput(
                    rid, "", [], True, {"id": rid, "finish_reason": reason}, error=message, error_status=503
                )
            )

    async def shutdown(self, grace_s: float) -> None:
        """SIGTERM: refuse new requests (503), give the ones in flight ``grace_s`` seconds to finish, then end the
        rest with a 503 error (a JSON answer, or an error event and [DONE] for a stream) and abort them."""
        self.draining = True
        logger.info(f"Shutting down: {self.num_in_flight} request(s) in flight get {grace_s:g} s to finish.")
        deadline = time.monotonic() + grace_s
        while self.num_in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.num_in_flight:
            logger.info(f"Shutting down: ending {self.num_in_flight} unfinished request(s).")
            for link in self.links:
                link.send(AbortReq(abort_all=True))
            self._end_requests(SHUTTING_DOWN)
            deadline = time.monotonic() + ANSWER_WAIT_S
            while self.num_in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.02)

    async def tokenize(self, inp: GenerateInput) -> tuple[bool, list[TokenizedGenerateReq], list[int]]:
        """Validate and tokenize off the event loop; raises InvalidRequestError for bad input."""
        self._check_alive()
        limits = (self.vocab_size, self.context_len, self.server_args.grammar_backend, self.sampling_defaults)
        max_inputs = self.server_args.max_inputs_per_request
        return await asyncio.to_thread(build_requests, inp, self.tokenizer, *limits, max_inputs)

    def check_new_rids(self, reqs: Sequence[TokenizedGenerateReq | TokenizedEmbeddingReq]) -> None:
        """400 "Duplicate request ID" for an id twice in ``reqs`` (``n`` expands "z" to "z-0", "z-1") or in flight.

        ``_dispatch`` checks before it registers anything; routes also call it before a stream's 200 is sent."""
        seen: set[str] = set()
        for r in reqs:
            if r.rid in self.rid_to_queue or r.rid in seen:
                raise InvalidRequestError(f"Duplicate request ID: {r.rid!r}.", "rid")
            seen.add(r.rid)

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
        self.check_new_rids(reqs)
        queue: asyncio.Queue = asyncio.Queue()
        by_replica: dict[int, list] = {}
        for r in reqs:
            self.rid_to_queue[r.rid] = queue
            replica = self.router.select(r.input_ids, self.replica_loads)
            self.rid_to_replica[r.rid] = replica
            self.replica_loads[replica] += 1
            by_replica.setdefault(replica, []).append(r)
        unfinished = {r.rid for r in reqs}
        self.num_in_flight += len(reqs)
        try:
            for replica, group in by_replica.items():
                self.links[replica].send(group)
            while unfinished:
                try:
                    out = await asyncio.wait_for(queue.get(), timeout=DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if request is not None and await request.is_disconnected():
                        logger.info(f"Client disconnected; aborting {len(unfinished)} request(s).")
                        raise ClientDisconnected() from None
                    continue
                if out.finished and out.rid in unfinished:
                    unfinished.discard(out.rid)
                    self._release(out.rid)
                if out.error and not self.alive:
                    raise ServerUnavailableError(out.error)
                yield out
        finally:
            for rid in unfinished:
                self.links[self.rid_to_replica[rid]].send(AbortReq(rid=rid))
                self._release(rid)
            for r in reqs:
                self.rid_to_queue.pop(r.rid, None)
            self.num_in_flight -= len(reqs)

    def registry_info(self) -> dict[str, int]:
        """What the HTTP process holds per request (all 0 when idle: ids never outlive their requests)."""
        return {
            "in_flight": self.num_in_flight,
            "registered_rids": len(self.rid_to_queue),
            "rid_replicas": len(self.rid_to_replica),
            "pending_ipc_messages": sum(link.pending for link in self.links),
        }

    def _release(self, rid: str) -> None:
        """A request left its replica (finished or aborted): it no longer counts towards that replica's load."""
        replica = self.rid_to_replica.pop(rid, None)
        if replica is not None:
            self.replica_loads[replica] -= 1

    async def run(
        self,
        reqs: list[TokenizedGenerateReq],
        owners: list[int] | None = None,
        request=None,
        incremental: bool = False,
    ) -> AsyncIterator[dict[str, Any]]:
        """Send ``reqs`` and yield cumulative chunks (``index`` = position in ``reqs``) until all finish.
        ``incremental`` (native /generate with --incremental-streaming-output): a streamed chunk's text, output_ids
        and output logprobs are only the new ones.

        Streaming requests yield every chunk; others yield only their final chunk. A chunk is the request's
        folded response (``text``, ``output_ids``, ``meta_info``) plus ``index``, ``delta``, ``finished`` and
        ``error``. A client that goes away ends the iteration early (its requests are aborted).
        """
        index_of = {r.rid: i for i, r in enumerate(reqs)}
        folders = {r.rid: OutputFolder(r.return_logprob) for r in reqs}
        timer = self.metrics.begin(reqs)
        try:
            async with aclosing(self._dispatch(reqs, request)) as outputs:
                async for out in outputs:
                    folder = folders[out.rid]
                    folder.add(out)
                    timer.on_output(out)
                    index = index_of[out.rid]
                    chunk = {
                        **folder.response(incremental and reqs[index].stream),
                        "index": index,
                        "delta": out.text_delta,
                        "finished": out.finished,
                        "error": out.error,
                        "error_status": out.error_status,
                    }
                    if out.finished and self.server_args.log_requests:
                        self._log_request(reqs[index], folder.response())  # whole, even when incremental
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
            max_batch_size=self.server_args.max_inputs_per_request,
            text_param=text_param,
            ids_param=ids_param,
        )
        finals: dict[str, EmbeddingOutput] = {}
        async with aclosing(self._dispatch(reqs, request)) as outputs:
            async for out in outputs:
                if out.error and getattr(out, "error_status", 400) == 503:
                    raise ServerUnavailableError(out.error)
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
        replicas = range(self.dp_size) if abort_all else [self.rid_to_replica.get(rid, 0)]
        for replica in replicas:
            self.links[replica].send(AbortReq(rid=rid, abort_all=abort_all))
        return True
