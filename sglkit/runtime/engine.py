"""Offline front end: ``sglkit.Engine`` drives the server's scheduler loop in-process (no HTTP, no IPC).

generate() -> frontend.input_processor (validate, tokenize) -> scheduler.handle(requests) -> scheduler.step()
until done -> frontend.output_folder folds the deltas into SGLang's {"text", "output_ids", "meta_info"} dicts
(or they are streamed as chunks). With ``is_embedding=True``: encode() -> frontend.embedding_input ->
the embedding scheduler (prefill-only passes) -> {"embedding", "meta_info"} dicts. Every message goes through
``SchedulerBase.handle``, exactly as the server's scheduler process dispatches what arrives over ZMQ.

With ``tp_size=N`` this process is tensor-parallel rank 0 (its scheduler a ``mirror.LeaderScheduler``, which
broadcasts every call first) and ranks 1..N-1 run in spawned processes (``rank_group``) that mirror it; they
die with this process, lead their own sessions watched by the notebook session watchdog, and are stopped by
``shutdown()`` / the context manager.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from sglkit.core.messages import AbortReq, FlushCacheReq, GenerateOutput, GetStatsReq, UpdateWeightsReq
from sglkit.launch.log_format import configure_logging
from sglkit.runtime.frontend.embedding_input import EmbeddingInput, build_embedding_requests
from sglkit.runtime.frontend.input_processor import GenerateInput, build_requests
from sglkit.runtime.frontend.output_folder import OutputFolder
from sglkit.runtime.frontend.sampling_defaults import model_sampling_defaults
from sglkit.runtime.scheduler import create_scheduler
from sglkit.runtime.scheduler.base import SchedulerBase
from sglkit.runtime.scheduler.tp_engine import TensorParallelRanks
from sglkit.server_args import ServerArgs

logger = logging.getLogger(__name__)


class Engine:
    """Offline LLM engine with SGLang's interface: ``Engine(model_path=..., **server_args)``.

    Example::

        llm = sglkit.Engine(model_path="path/to/model", max_total_tokens=4096)
        out = llm.generate("The capital of France is", {"temperature": 0, "max_new_tokens": 16})
        print(out["text"], out["meta_info"]["finish_reason"])
        llm.shutdown()
    """

    def __init__(self, log_level: str | None = None, **kwargs: Any) -> None:
        self.server_args = ServerArgs(log_level=log_level or kwargs.pop("log_level", "error"), **kwargs)
        if self.server_args.dp_size > 1:
            raise ValueError(
                f"sglkit.Engine runs one replica (dp_size=1), got dp_size={self.server_args.dp_size}. For data "
                "parallelism start a server: python -m sglkit.launch_server --dp-size N (its router balances "
                "requests over the replicas)."
            )
        configure_logging(self.server_args.log_level)
        self._ranks: TensorParallelRanks | None = None
        if self.server_args.tp_size > 1:
            self._ranks = TensorParallelRanks(self.server_args)  # spawns ranks 1.., joins as rank 0
            self.scheduler: SchedulerBase | None = self._ranks.start()
        else:
            self.scheduler = create_scheduler(self.server_args)
        self.tokenizer = self.scheduler.tokenizer
        self.sampling_defaults = model_sampling_defaults(
            self.server_args.model_path, self.server_args.sampling_defaults
        )

    # ----- generation -----
    def generate(
        self,
        prompt: str | list[str] | None = None,
        sampling_params: dict | list[dict] | None = None,
        input_ids: list[int] | list[list[int]] | None = None,
        return_logprob: bool | list[bool] = False,
        logprob_start_len: int | list[int] | None = None,
        top_logprobs_num: int | list[int] | None = None,
        stream: bool = False,
        rid: str | list[str] | None = None,
        token_ids_logprob: list[int] | list[list[int]] | None = None,
    ) -> dict | list[dict] | Iterator[dict]:
        """Generate for one prompt (dict) or a batch (list of dicts); ``stream=True`` yields incremental chunks.

        ``token_ids_logprob`` (with ``return_logprob``): also the logprobs of these ids at every scored position
        (``meta_info["input_token_ids_logprobs"]`` / ``["output_token_ids_logprobs"]``), as SGLang's /generate.

        With ``skip_tokenizer_init=True`` no tokenizer is loaded: pass ``input_ids``; answers carry ``output_ids``
        and an empty ``text`` (what is refused then: ``sglkit.runtime.frontend.token_only``).

        Raises ValueError (naming the parameter) for invalid inputs; the engine keeps serving afterwards.
        """
        scheduler = self._require_scheduler()
        if self.server_args.is_embedding:
            raise ValueError(
                "This engine serves an embedding model (is_embedding=True); use encode(), not generate()."
            )
        inp = GenerateInput(
            text=prompt,
            input_ids=input_ids,
            sampling_params=sampling_params,
            rid=rid,
            return_logprob=return_logprob,
            logprob_start_len=logprob_start_len,
            top_logprobs_num=top_logprobs_num,
            stream=stream,
            token_ids_logprob=token_ids_logprob,
        )
        is_batch, reqs, owners = build_requests(
            inp,
            self.tokenizer,
            scheduler.model_runner.vocab_size,
            scheduler.context_len,
            self.server_args.grammar_backend,
            self.sampling_defaults,
        )
        if stream:
            return self._stream(reqs, owners, is_batch)
        folders = {r.rid: OutputFolder(r.return_logprob) for r in reqs}
        for out in self._run(reqs):
            folders[out.rid].add(out)
        results = [folders[r.rid].response() for r in reqs]
        if is_batch or len(results) > 1:
            return results
        return results[0]

    # ----- embeddings -----
    def encode(
        self,
        prompt: str | list[str] | None = None,
        input_ids: list[int] | list[list[int]] | None = None,
        rid: str | list[str] | None = None,
    ) -> dict | list[dict]:
        """Embed one input (dict) or a list (list of dicts): ``{"embedding": [...], "meta_info": {...}}``.

        Needs ``is_embedding=True``. For reward / classification models ``embedding`` holds the scores. Inputs
        are batched into as few prefill passes as ``max_prefill_tokens`` allows. Raises ValueError (naming the
        parameter) for invalid inputs; the engine keeps serving afterwards.
        """
        scheduler = self._require_scheduler()
        if not self.server_args.is_embedding:
            raise ValueError("encode() needs an embedding model: create the Engine with is_embedding=True.")
        is_batch, reqs = build_embedding_requests(
            EmbeddingInput(text=prompt, input_ids=input_ids, rid=rid),
            self.tokenizer,
            scheduler.model_runner.vocab_size,
            scheduler.context_len,
        )
        finals = {out.rid: out for out in self._run(reqs)}
        results = []
        for req in reqs:
            out = finals[req.rid]
            if out.error:
                raise ValueError(out.error)
            results.append({"embedding": out.embedding, "meta_info": dict(out.meta_info)})
        return results if is_batch else results[0]

    def _stream(self, reqs, owners, is_batch) -> Iterator[dict]:
        index_of = {r.rid: i for i, r in enumerate(reqs)}
        for out in self._run(reqs):
            chunk = {
                "text": out.text_delta,
                "output_ids": out.output_ids_delta,
                "meta_info": dict(out.meta_info),
            }
            if is_batch or len(reqs) > 1:
                chunk["index"] = index_of[out.rid]
            yield chunk

    def _run(self, reqs) -> Iterator[GenerateOutput]:
        scheduler = self._require_scheduler()
        early = {out.rid: out for out in scheduler.handle(list(reqs))}  # refused at once: final outputs
        yield from early.values()
        pending = {req.rid for req in reqs if req.rid not in early}
        try:
            while pending:
                outputs = scheduler.step()
                if not outputs and scheduler.is_idle() and pending:
                    raise RuntimeError(f"Scheduler went idle with {len(pending)} unfinished requests.")
                for out in outputs:
                    if out.rid in pending:
                        yield out
                        if out.finished:
                            pending.discard(out.rid)
        finally:
            if pending:  # the caller stopped iterating (or an error): release the rest
                for rid in list(pending):
                    scheduler.handle(AbortReq(rid=rid))

    # ----- control -----
    def flush_cache(self) -> bool:
        """Empty the radix cache; False (with a log line) while requests are in flight."""
        result = self._require_scheduler().handle(FlushCacheReq())
        if not result.success:
            logger.warning(result.message)
        return result.success

    def update_weights_from_disk(self, model_path: str) -> tuple[bool, str]:
        """Load same-shaped weights from a folder; returns (success, message). The radix cache is flushed."""
        result = self._require_scheduler().handle(UpdateWeightsReq(model_path))
        return result.success, result.message

    def get_server_info(self) -> dict[str, Any]:
        """Server args plus live scheduler statistics."""
        stats = self._require_scheduler().handle(GetStatsReq()).payload
        return {**self.server_args.to_dict(), **stats}

    def shutdown(self) -> None:
        """Release the model and the KV pool; with tp_size > 1 stop the other ranks' processes. Idempotent."""
        self.scheduler = None
        if self._ranks is not None:
            self._ranks.stop()
            self._ranks = None

    def _require_scheduler(self) -> SchedulerBase:
        if self.scheduler is None:
            raise RuntimeError("The engine has been shut down.")
        return self.scheduler

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
