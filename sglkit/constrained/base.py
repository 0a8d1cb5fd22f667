"""Constrained decoding interface (between the front end, the scheduler and the sampler).

A *spec* is ``(field, value)`` from ``SamplingParams.grammar``, e.g. ``("json_schema", '{"type": "object"}')``.
The front end calls ``validate_grammar`` (parse only, no tokenizer: a bad spec is a 400 naming the field before
anything is queued). The scheduler owns one ``GrammarBackend``: ``compile_async(spec)`` compiles each distinct spec
once on a worker thread (a cached future, so the scheduler loop never compiles), ``new_matcher(compiled)`` gives a
request its own ``GrammarMatcher``, and the sampler fills and applies one vocabulary mask for the whole batch.
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

GRAMMAR_BACKENDS = ("xgrammar", "none")
"""Values of ``--grammar-backend``."""
MAX_CACHED_GRAMMARS = 1024
_NATIVE_PREFIX = re.compile(r"^\s*\[[\d:]+\]\s+\S+:\d+:\s*")

Spec = tuple[str, str]


class GrammarError(ValueError):
    """A grammar that cannot be used; ``param`` names the request field (the server answers 400 naming it)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def clean_native_message(message: str) -> str:
    """Drop a native library's ``[time] file.cc:line:`` prefix from an error message."""
    return _NATIVE_PREFIX.sub("", str(message)).strip()


class GrammarMatcher(ABC):
    """One request's position in its grammar; advanced with every token the request accepts."""

    @abstractmethod
    def accept_token(self, token_id: int) -> bool:
        """Advance by one sampled token; False when the grammar does not allow it (the state is unchanged)."""

    @abstractmethod
    def fill_vocab_mask(self, mask: torch.Tensor, row: int) -> None:
        """Write the tokens allowed next into row ``row`` of ``mask`` (the backend's mask format)."""

    @abstractmethod
    def is_terminated(self) -> bool:
        """True once the grammar has reached its end (its stop token was accepted)."""


class GrammarBackend(ABC):
    """Compiles specs (once each, off the caller's thread) and makes per-request matchers and batch masks."""

    name = "base"

    def __init__(self) -> None:
        self._cache: OrderedDict[Spec, Future] = OrderedDict()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sglkit-grammar")

    def compile_async(self, spec: Spec) -> Future:
        """A future of the compiled grammar of ``spec`` (cached: a spec seen before is not compiled again).

        The future raises ``GrammarError`` when the spec does not compile.
        """
        with self._lock:
            future = self._cache.get(spec)
            if future is not None:
                self._cache.move_to_end(spec)
                return future
            future = self._executor.submit(self._compile_checked, spec)
            self._cache[spec] = future
            while len(self._cache) > MAX_CACHED_GRAMMARS:
                self._cache.popitem(last=False)
            return future

    def compile(self, spec: Spec) -> Any:
        """The compiled grammar of ``spec``, waiting for it (raises ``GrammarError``)."""
        return self.compile_async(spec).result()

    def _compile_checked(self, spec: Spec) -> Any:
        try:
            return self._compile(spec)
        except GrammarError:
            raise
        except Exception as e:  # noqa: BLE001 - any library failure is the request's grammar's fault
            raise GrammarError(
                spec[0], f"{spec[0]} could not be compiled: {clean_native_message(str(e))}"
            ) from e

    @property
    def num_cached(self) -> int:
        """Distinct specs compiled or compiling."""
        return len(self._cache)

    def shutdown(self) -> None:
        """Stop the compile thread (pending compiles are cancelled)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    @abstractmethod
    def _compile(self, spec: Spec) -> Any:
        """Compile one spec (runs on the worker thread)."""

    @abstractmethod
    def new_matcher(self, compiled: Any) -> GrammarMatcher:
        """A fresh matcher at the start of ``compiled``."""

    @abstractmethod
    def allocate_vocab_mask(self, batch_size: int) -> torch.Tensor:
        """A [batch_size, ...] mask on the CPU with every token allowed."""

    @abstractmethod
    def apply_vocab_mask(self, logits: torch.Tensor, mask: torch.Tensor, rows: list[int]) -> None:
        """logits: [B, V] float32, modified in place: disallowed tokens of ``rows`` become -inf."""
