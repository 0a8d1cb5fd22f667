"""One step's sampling inputs (scheduler -> here -> sampler): per-row parameters packed into a few device tensors.

The scheduler builds a ``SamplingBatchInfo`` per step (``from_reqs``). Everything that decides control flow is
computed here on the host from the params (``all_greedy``, ``need_*``, the filter ``width``), so the sampler
never reads a device value back. Per-row parameters travel in two host -> device copies (one float tensor, one
int tensor); penalty counts live on the device in ``PenaltyCounts`` rows and are only indexed here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from sglkit.core.sampling_params import SamplingParams
from sglkit.runtime.executor.sampling.penalties import PenaltyCounts, has_penalties
from sglkit.runtime.executor.sampling.seeded import seed_words

__all__ = ["SamplingBatchInfo"]


def _flat_ids(ids_per_row: Sequence[Sequence[int] | None], vocab_size: int, device) -> torch.Tensor:
    """Token ids per row (None = skip the row) -> [M] int64 flat indices ``row * V + id`` into a [B, V] tensor."""
    flat = [row * vocab_size + int(t) for row, ids in enumerate(ids_per_row) if ids for t in ids]
    return torch.tensor(flat, dtype=torch.int64, device=device)


@dataclass
class SamplingBatchInfo:
    """Per-row sampling tensors for one step; rows follow the order of the batch's requests.

    Logit bias and the min_new_tokens ban are sparse flat indices ``row * V + token_id`` (O(tokens involved)).
    Greedy rows carry temperature 1 here (their result is the argmax; the value only keeps the math finite).
    """

    vocab_size: int
    temperatures: torch.Tensor  # [B] float32
    top_ps: torch.Tensor  # [B] float32
    top_ks: torch.Tensor  # [B] int64, clamped to [1, V] (-1 -> V)
    min_ps: torch.Tensor  # [B] float32
    is_greedy: torch.Tensor  # [B] bool
    seed_lo: torch.Tensor  # [B] int64: low 32 bits of sampling_seed (0 when unseeded)
    seed_hi: torch.Tensor  # [B] int64: high 32 bits
    positions: torch.Tensor  # [B] int64: output tokens generated so far (the counter of seeded draws)
    is_seeded: torch.Tensor  # [B] bool
    all_greedy: bool
    any_greedy: bool
    any_seeded: bool
    all_seeded: bool  # every sampled row has a seed: the default generator is not used
    need_top_k: bool
    need_top_p: bool
    need_min_p: bool
    filter_width: int  # largest probabilities the filters look at (V when a top_p row has no top_k)
    # Optional sparse edits, None when no row needs them.
    bias_index: torch.Tensor | None = None  # [M] flat indices (unique)
    bias_values: torch.Tensor | None = None  # [M] float32 added to the logits
    banned_index: torch.Tensor | None = None  # [M] flat indices set to -inf (min_new_tokens)
    # Penalties: rows of ``penalty_counts`` for the penalized batch rows (None: no row is penalized).
    penalty_counts: PenaltyCounts | None = None
    penalty_rows: torch.Tensor | None = None  # [P] int64 rows of penalty_counts
    penalty_batch_rows: torch.Tensor | None = None  # [P] int64 batch rows (None: all rows, in order)
    repetition_penalties: torch.Tensor | None = None  # [P] float32 (None: no row uses it)
    frequency_penalties: torch.Tensor | None = None  # [P] float32 (None: no row uses frequency/presence)
    presence_penalties: torch.Tensor | None = None  # [P] float32
    # Constrained rows: the grammar backend's mask (sglkit.constrained) and the function that applies it.
    vocab_mask: torch.Tensor | None = None  # [B, ...] in the backend's format (xgrammar: packed int32 bits)
    vocab_mask_rows: list[int] | None = None
    apply_vocab_mask: Callable[[torch.Tensor, torch.Tensor, list[int]], None] | None = None

    @property
    def batch_size(self) -> int:
        """Number of rows."""
        return int(self.temperatures.shape[0])

    @property
    def needs_logit_processing(self) -> bool:
        """True when bias, min_new_tokens masking, any penalty or a grammar mask changes the logits."""
        return (
            self.bias_index is not None
            or self.banned_index is not None
            or self.penalty_rows is not None
            or self.vocab_mask is not None
        )

    def record_output(self, next_ids: torch.Tensor) -> None:
        """next_ids: [B] the tokens just sampled -> add them to the penalized rows' counts (on the device)."""
        if self.penalty_rows is None:
            return
        ids = next_ids if self.penalty_batch_rows is None else next_ids[self.penalty_batch_rows]
        self.penalty_counts.record(self.penalty_rows, ids)

    @classmethod
    def from_params(
        cls,
        params: Sequence[SamplingParams],
        prompt_ids: Sequence[Sequence[int]],
        output_ids: Sequence[Sequence[int]],
        vocab_size: int,
        eos_token_ids: set[int] | Sequence[int],
        device: torch.device | str,
        penalty_counts: PenaltyCounts | None = None,
        penalty_rows: Sequence[int | None] | None = None,
    ) -> SamplingBatchInfo:
        """Build the step's tensors from each row's params, prompt ids and output ids so far.

        Penalized rows use ``penalty_rows[i]`` of ``penalty_counts`` when given (rows kept across steps), else a
        throwaway ``PenaltyCounts`` filled from the id lists.
        """
        num_rows = len(params)
        assert len(prompt_ids) == len(output_ids) == num_rows
        greedy = [p.is_greedy for p in params]
        top_ks = [vocab_size if p.top_k == -1 or p.top_k > vocab_size else max(p.top_k, 1) for p in params]
        sampled = [i for i in range(num_rows) if not greedy[i]]
        seeds = [
            seed_words(p.sampling_seed) if p.sampling_seed is not None and not g else (0, 0)
            for p, g in zip(params, greedy, strict=True)
        ]
        seeded = [p.sampling_seed is not None and not g for p, g in zip(params, greedy, strict=True)]
        floats = torch.tensor(
            [
                [1.0 if g else p.temperature for p, g in zip(params, greedy, strict=True)],
                [p.top_p for p in params],
                [p.min_p for p in params],
            ],
            dtype=torch.float32,
        ).to(device, non_blocking=True)
        ints = torch.tensor(
            [
                top_ks,
                greedy,
                [lo for lo, _ in seeds],
                [hi for _, hi in seeds],
                [len(out) for out in output_ids],
                seeded,
            ],
            dtype=torch.int64,
        ).to(device, non_blocking=True)
        need_top_k = any(top_ks[i] < vocab_size for i in sampled)
        need_top_p = any(params[i].top_p < 1.0 for i in sampled)
        if any(params[i].top_p < 1.0 and top_ks[i] >= vocab_size for i in sampled):
            width = vocab_size
        else:
            width = max([top_ks[i] for i in sampled if top_ks[i] < vocab_size], default=1)
        info = cls(
            vocab_size=vocab_size,
            temperatures=floats[0],
            top_ps=floats[1],
            min_ps=floats[2],
            top_ks=ints[0],
            is_greedy=ints[1].bool(),
            seed_lo=ints[2],
            seed_hi=ints[3],
            positions=ints[4],
            is_seeded=ints[5].bool(),
            all_greedy=not sampled,
            any_greedy=len(sampled) < num_rows,
            any_seeded=any(seeded),
            all_seeded=all(seeded[i] for i in sampled),
            need_top_k=need_top_k,
            need_top_p=need_top_p,
            need_min_p=any(params[i].min_p > 0.0 for i in sampled),
            filter_width=width,
        )
        info._add_sparse_edits(params, output_ids, eos_token_ids, device)
        info._add_penalties(params, prompt_ids, output_ids, device, penalty_counts, penalty_rows)
        return info

    def _add_sparse_edits(self, params, output_ids, eos_token_ids, device) -> None:
        """logit_bias and the min_new_tokens ban (EOS and stop_token_ids; not on constrained rows)."""
        vocab = self.vocab_size
        if any(p.logit_bias for p in params):
            self.bias_index = _flat_ids(
                [[int(k) for k in p.logit_bias] if p.logit_bias else None for p in params], vocab, device
            )
            values = [float(v) for p in params if p.logit_bias for v in p.logit_bias.values()]
            self.bias_values = torch.tensor(values, dtype=torch.float32, device=device)
        eos = list(eos_token_ids)
        banned = [
            eos + list(p.stop_token_ids or []) if len(out) < p.min_new_tokens and p.grammar is None else None
            for p, out in zip(params, output_ids, strict=True)
        ]
        if any(banned):
            self.banned_index = _flat_ids(banned, vocab, device)

    def _add_penalties(self, params, prompt_ids, output_ids, device, counts, rows) -> None:
        """Point the penalized batch rows at their ``PenaltyCounts`` rows, with their penalty values."""
        batch_rows = [i for i, p in enumerate(params) if has_penalties(p)]
        if not batch_rows:
            return
        if counts is None:
            counts = PenaltyCounts(self.vocab_size, device)
            rows = None
        table_rows = [
            rows[i] if rows is not None else counts.acquire(prompt_ids[i], output_ids[i]) for i in batch_rows
        ]
        chosen = [params[i] for i in batch_rows]
        values = torch.tensor(
            [
                [p.repetition_penalty for p in chosen],
                [p.frequency_penalty for p in chosen],
                [p.presence_penalty for p in chosen],
            ],
            dtype=torch.float32,
        ).to(device, non_blocking=True)
        indices = torch.tensor([table_rows, batch_rows], dtype=torch.int64).to(device, non_blocking=True)
        self.penalty_counts = counts
        self.penalty_rows = indices[0]
        self.penalty_batch_rows = None if len(batch_rows) == len(params) else indices[1]
        if any(p.repetition_penalty != 1.0 for p in chosen):
            self.repetition_penalties = values[0]
        if any(p.frequency_penalty != 0.0 or p.presence_penalty != 0.0 for p in chosen):
            self.frequency_penalties = values[1]
            self.presence_penalties = values[2]

    @classmethod
    def from_reqs(
        cls,
        reqs: Sequence,
        vocab_size: int,
        eos_token_ids: set[int] | Sequence[int],
        device: torch.device | str,
        penalty_counts: PenaltyCounts | None = None,
    ) -> SamplingBatchInfo:
        """``from_params`` for ``sglkit.core.req.Req`` objects; with ``penalty_counts`` a penalized request keeps
        its row (``req.penalty_row``) across steps until the scheduler releases it."""
        params = [r.sampling_params for r in reqs]
        rows = None
        if penalty_counts is not None:
            rows = [penalty_counts.row_for(r) if has_penalties(r.sampling_params) else None for r in reqs]
        return cls.from_params(
            params,
            [r.origin_input_ids for r in reqs],
            [r.output_ids for r in reqs],
            vocab_size,
            eos_token_ids,
            device,
            penalty_counts,
            rows,
        )
