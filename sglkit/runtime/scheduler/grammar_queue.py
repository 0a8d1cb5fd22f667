"""Scheduler intake for constrained requests: wait for the grammar compile, then join the waiting queue.

``Scheduler.add_request`` hands a request with a grammar spec to ``GrammarQueue.add``, which starts (or reuses) the
compile on the backend's worker thread; each step ``pop_ready`` moves the requests whose compile finished into the
waiting queue with a fresh matcher, and fails the ones whose grammar did not compile. The scheduler loop never
compiles. With ``sync=True`` (tensor parallelism: every rank must see the same queue at the same step) the compile
is waited for in ``add``. ``build_vocab_mask`` fills one step's mask for the constrained rows of a batch.
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, wait

from sglkit.constrained import GrammarBackend, create_grammar_backend
from sglkit.core.req import FinishReason, Req
from sglkit.runtime.executor.sampler import SamplingBatchInfo


class GrammarQueue:
    """Constrained requests whose grammar is still compiling."""

    def __init__(self, backend: GrammarBackend | None, sync: bool = False) -> None:
        self.backend = backend
        self.sync = sync
        self.reqs: list[Req] = []

    @classmethod
    def for_server(cls, server_args, tokenizer, vocab_size: int, eos_token_ids) -> GrammarQueue:
        """The queue of a scheduler: ``--grammar-backend``'s backend (none without a tokenizer); synchronous
        compiles under tensor parallelism."""
        backend = None
        if tokenizer is not None:
            backend = create_grammar_backend(
                server_args.grammar_backend,
                tokenizer,
                vocab_size,
                eos_token_ids,
                any_whitespace=server_args.constrained_json_any_whitespace,
            )
        return cls(backend, sync=server_args.tp_size > 1)

    def __len__(self) -> int:
        return len(self.reqs)

    def add(self, req: Req) -> str | None:
        """Start compiling ``req``'s grammar; returns an error message instead when it can never run."""
        spec = req.sampling_params.grammar
        if self.backend is None:
            return f"{spec[0]} needs constrained decoding, which is disabled on this server (--grammar-backend none)."
        req.grammar_future = self.backend.compile_async(spec)
        if self.sync:
            wait([req.grammar_future])
        self.reqs.append(req)
        return None

    def pop_ready(self, wait: bool = False) -> tuple[list[Req], list[Req]]:
        """(requests ready to queue, each with its matcher; requests whose grammar failed, finished with abort).

        ``wait``: the scheduler has nothing else to run, so block briefly for a compile instead of spinning.
        """
        if not self.reqs:
            return [], []
        if wait:
            self.wait(timeout=0.01)
        ready, failed, still = [], [], []
        for req in self.reqs:
            future = req.grammar_future
            if not future.done():
                still.append(req)
                continue
            req.grammar_future = None
            error = future.exception()
            if error is not None:
                req.finished_reason = FinishReason("abort", message=str(error))
                failed.append(req)
            else:
                req.grammar = self.backend.new_matcher(future.result())
                ready.append(req)
        self.reqs = still
        return ready, failed

    def wait(self, timeout: float) -> None:
        """Block up to ``timeout`` seconds for any pending compile (when the scheduler has nothing else to do)."""
        pending = [r.grammar_future for r in self.reqs if r.grammar_future is not None]
        if pending:
            wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)

    def remove(self, rid: str | None, abort_all: bool = False) -> list[Req]:
        """Take out the requests with id ``rid`` (or all); they are not finished here."""
        taken = [r for r in self.reqs if abort_all or r.rid == rid]
        self.reqs = [r for r in self.reqs if not (abort_all or r.rid == rid)]
        return taken


def build_vocab_mask(info: SamplingBatchInfo, reqs: list[Req], backend: GrammarBackend | None) -> None:
    """Attach to ``info`` the step's vocabulary mask for the constrained rows of ``reqs`` (none: left unset)."""
    rows = [i for i, r in enumerate(reqs) if r.grammar is not None and not r.finished()]
    if not rows or backend is None:
        return
    mask = backend.allocate_vocab_mask(len(reqs))
    for i in rows:
        reqs[i].grammar.fill_vocab_mask(mask, i)
    info.vocab_mask = mask
    info.vocab_mask_rows = rows
    info.apply_vocab_mask = backend.apply_vocab_mask
