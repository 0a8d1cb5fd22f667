"""Penalty state on the device (scheduler -> sampler): per-request token counts that persist across steps.

A request with a repetition, frequency or presence penalty holds one row of ``PenaltyCounts`` from its first
sampled token until it finishes, is aborted or is retracted (``release``; a retracted request gets a fresh row,
rebuilt from its output ids, when it samples again). A row is two [V] vectors: ``counts`` (float32 occurrences of
each token in the output so far, exact below 2**24) and ``seen`` (bool: in the prompt or the output). Each step the
sampler gathers the batch's rows and ``record`` adds the tokens just sampled with two ``index_put_``: the per-step
cost is O(rows * V) device work and O(rows) host work, whatever the output length.

Rules: repetition (vLLM) divides positive logits by the penalty and multiplies negative ones, for tokens in the
prompt or the output; frequency/presence (OpenAI) subtract ``count * frequency + (count > 0) * presence``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["PenaltyCounts", "apply_penalties", "has_penalties"]


def has_penalties(params: Any) -> bool:
    """True when ``params`` (a SamplingParams) asks for any repetition, frequency or presence penalty."""
    return (
        params.repetition_penalty != 1.0 or params.frequency_penalty != 0.0 or params.presence_penalty != 0.0
    )


class PenaltyCounts:
    """Rows of per-request token counts on ``device``; grows by doubling, rows recycled through a free list."""

    def __init__(self, vocab_size: int, device: torch.device | str = "cpu") -> None:
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        self.counts = torch.zeros(0, vocab_size, dtype=torch.float32, device=self.device)  # [R, V]
        self.seen = torch.zeros(0, vocab_size, dtype=torch.bool, device=self.device)  # [R, V]
        self._free: list[int] = []

    @property
    def capacity(self) -> int:
        """Rows allocated (used + free)."""
        return int(self.counts.shape[0])

    @property
    def num_used(self) -> int:
        """Rows held by requests."""
        return self.capacity - len(self._free)

    def acquire(self, prompt_ids: Sequence[int], output_ids: Sequence[int]) -> int:
        """A row filled from a request's prompt and output so far; returns its index."""
        if not self._free:
            self._grow(max(4, self.capacity))
        row = self._free.pop()
        self.counts[row].zero_()
        self.seen[row].zero_()
        if output_ids:
            ids = torch.tensor(list(output_ids), dtype=torch.int64, device=self.device)
            self.counts[row].index_add_(0, ids, torch.ones_like(ids, dtype=torch.float32))
            self.seen[row, ids] = True
        if prompt_ids:
            self.seen[row, torch.tensor(list(prompt_ids), dtype=torch.int64, device=self.device)] = True
        return row

    def release(self, row: int) -> None:
        """Give a row back (its contents are reset when it is acquired again)."""
        self._free.append(row)

    def row_for(self, req: Any) -> int:
        """``req.penalty_row``, acquiring one from the request's prompt and output ids when it has none."""
        if req.penalty_row is None:
            req.penalty_row = self.acquire(req.origin_input_ids, req.output_ids)
        return req.penalty_row

    def release_req(self, req: Any) -> None:
        """Release ``req``'s row if it holds one (finished, aborted or retracted)."""
        if getattr(req, "penalty_row", None) is not None:
            self.release(req.penalty_row)
            req.penalty_row = None

    def record(self, rows: torch.Tensor, token_ids: torch.Tensor) -> None:
        """rows: [P] int64 row indices, token_ids: [P] int64 -> counts[rows, token_ids] += 1, seen (on the device)."""
        index = (rows, token_ids.to(torch.int64))
        self.counts.index_put_(index, torch.ones_like(rows, dtype=torch.float32), accumulate=True)
        self.seen.index_put_(index, torch.ones_like(rows, dtype=torch.bool))

    def _grow(self, extra: int) -> None:
        start = self.capacity
        shape = (extra, self.vocab_size)
        self.counts = torch.cat([self.counts, torch.zeros(shape, dtype=torch.float32, device=self.device)])
        self.seen = torch.cat([self.seen, torch.zeros(shape, dtype=torch.bool, device=self.device)])
        self._free.extend(range(start + extra - 1, start - 1, -1))  # pop() hands out the lowest first


def apply_penalties(
    logits: torch.Tensor,
    counts: torch.Tensor,
    seen: torch.Tensor,
    repetition: torch.Tensor | None,
    frequency: torch.Tensor | None,
    presence: torch.Tensor | None,
) -> torch.Tensor:
    """logits: [P, V] float32, counts: [P, V] float32, seen: [P, V] bool, penalties: [P] (None: unused) -> [P, V]."""
    if repetition is not None:
        penalty = repetition.unsqueeze(1)
        logits = torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)
    if frequency is not None:
        delta = counts * frequency.unsqueeze(1) + (counts > 0) * presence.unsqueeze(1)
        logits = logits - delta
    return logits
