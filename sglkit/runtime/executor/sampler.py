"""Logits -> next token ids: the batched sampler behind ``ModelRunner.sample`` (scheduler -> runner -> here).

Per step the scheduler builds one ``SamplingBatchInfo`` (``from_reqs``: per-row parameter tensors, penalty counts,
masks) and calls ``model_runner.sample(logits, info)``, which runs ``Sampler.sample(logits, info, generator)``.
Order of operations on a row: logit_bias -> min_new_tokens (EOS / stop_token_ids masked; not on constrained rows,
whose grammar decides where the output ends) -> penalties (repetition over prompt+output tokens, vLLM's rule;
frequency/presence over output tokens, OpenAI's rule) -> the grammar's vocabulary mask (constrained rows) ->
greedy rows take argmax -> other rows: temperature, top_k, top_p (on the top-k-renormalized distribution),
min_p, softmax, one inverse-CDF draw.

Draws use one uniform number per sampled row, taken from the row's own generator (``sampling_seed``) or from the
default generator, and the CDF is walked in vocabulary order, so a seeded row gives the same tokens whatever else
is in the batch. ``sample`` never modifies ``logits``: logprobs are computed from the raw logits
(``compute_logprobs``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from sglkit.core.sampling_params import SamplingParams


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on ``device`` seeded with ``seed`` (a request's ``sampling_seed``)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def _flat_ids(ids_per_row: Sequence[Sequence[int] | None], vocab_size: int, device) -> torch.Tensor:
    """Token ids per row (None = skip the row) -> [M] int64 flat indices ``row * V + id`` into a [B, V] tensor."""
    parts = [
        torch.tensor(ids, dtype=torch.int64) + row * vocab_size for row, ids in enumerate(ids_per_row) if ids
    ]
    if not parts:
        return torch.empty(0, dtype=torch.int64, device=device)
    return torch.cat(parts).to(device)


@dataclass
class SamplingBatchInfo:
    """Per-row sampling tensors for one step; rows follow the order of the batch's requests.

    Logit edits are stored sparsely as flat indices ``row * V + token_id`` into the [B, V] logits, so building
    and applying them costs O(tokens involved), never O(B * V) allocations.
    """

    vocab_size: int
    temperatures: torch.Tensor  # [B] float32
    top_ps: torch.Tensor  # [B] float32
    top_ks: torch.Tensor  # [B] int64, clamped to [1, V] (-1 -> V)
    min_ps: torch.Tensor  # [B] float32
    is_greedy: torch.Tensor  # [B] bool
    generators: list[torch.Generator | None]
    all_greedy: bool
    need_top_k: bool
    need_top_p: bool
    need_min_p: bool
    # Optional sparse edits, None when no row needs them.
    bias_index: torch.Tensor | None = None  # [M] flat indices (unique)
    bias_values: torch.Tensor | None = None  # [M] float32 added to the logits
    banned_index: torch.Tensor | None = None  # [M] flat indices set to -inf (min_new_tokens)
    repetition_index: torch.Tensor | None = None  # [M] unique flat indices of prompt+output tokens
    repetition_penalties: torch.Tensor | None = None  # [B] float32
    output_index: torch.Tensor | None = None  # [M] unique flat indices of output tokens
    output_counts: torch.Tensor | None = None  # [M] float32 occurrences of each output token
    frequency_penalties: torch.Tensor | None = None  # [B] float32
    presence_penalties: torch.Tensor | None = None  # [B] float32
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
        """True when bias, min_new_tokens masking or any penalty changes the logits."""
        return (
            self.bias_index is not None
            or self.banned_index is not None
            or self.repetition_index is not None
            or self.output_index is not None
            or self.vocab_mask is not None
        )

    @classmethod
    def from_params(
        cls,
        params: Sequence[SamplingParams],
        prompt_ids: Sequence[Sequence[int]],
        output_ids: Sequence[Sequence[int]],
        generators: Sequence[torch.Generator | None],
        vocab_size: int,
        eos_token_ids: set[int] | Sequence[int],
        device: torch.device | str,
    ) -> SamplingBatchInfo:
        """Build the step's tensors from each row's params, prompt ids, output ids so far and generator."""
        num_rows = len(params)
        assert len(prompt_ids) == len(output_ids) == len(generators) == num_rows
        greedy = [p.is_greedy for p in params]
        top_ks = [vocab_size if p.top_k == -1 or p.top_k > vocab_size else p.top_k for p in params]
        sampled = [not g for g in greedy]

        def floats(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)

        info = cls(
            vocab_size=vocab_size,
            temperatures=floats([p.temperature for p in params]),
            top_ps=floats([p.top_p for p in params]),
            top_ks=torch.tensor(top_ks, dtype=torch.int64, device=device),
            min_ps=floats([p.min_p for p in params]),
            is_greedy=torch.tensor(greedy, dtype=torch.bool, device=device),
            generators=list(generators),
            all_greedy=all(greedy),
            need_top_k=any(s and k < vocab_size for s, k in zip(sampled, top_ks, strict=True)),
            need_top_p=any(s and p.top_p < 1.0 for s, p in zip(sampled, params, strict=True)),
            need_min_p=any(s and p.min_p > 0.0 for s, p in zip(sampled, params, strict=True)),
        )

        if any(p.logit_bias for p in params):
            biased = [[int(k) for k in p.logit_bias] if p.logit_bias else None for p in params]
            info.bias_index = _flat_ids(biased, vocab_size, device)
            info.bias_values = floats(
                [float(v) for p in params if p.logit_bias for v in p.logit_bias.values()]
            )

        eos = list(eos_token_ids)
        banned = [
            eos + list(p.stop_token_ids or []) if len(out) < p.min_new_tokens and p.grammar is None else None
            for p, out in zip(params, output_ids, strict=True)
        ]
        if any(banned):
            info.banned_index = _flat_ids(banned, vocab_size, device)

        if any(p.repetition_penalty != 1.0 for p in params):
            seen = [
                list(prompt) + list(out) if p.repetition_penalty != 1.0 else None
                for p, prompt, out in zip(params, prompt_ids, output_ids, strict=True)
            ]
            info.repetition_index = torch.unique(_flat_ids(seen, vocab_size, device))
            info.repetition_penalties = floats([p.repetition_penalty for p in params])

        if any(p.frequency_penalty != 0.0 or p.presence_penalty != 0.0 for p in params):
            counted = [
                out if (p.frequency_penalty != 0.0 or p.presence_penalty != 0.0) else None
                for p, out in zip(params, output_ids, strict=True)
            ]
            if any(counted):
                index, counts = torch.unique(_flat_ids(counted, vocab_size, device), return_counts=True)
                info.output_index = index
                info.output_counts = counts.to(torch.float32)
                info.frequency_penalties = floats([p.frequency_penalty for p in params])
                info.presence_penalties = floats([p.presence_penalty for p in params])
        return info

    @classmethod
    def from_reqs(
        cls,
        reqs: Sequence,
        vocab_size: int,
        eos_token_ids: set[int] | Sequence[int],
        device: torch.device | str,
    ) -> SamplingBatchInfo:
        """Convenience over ``from_params`` for ``sglkit.core.req.Req`` objects."""
        return cls.from_params(
            [r.sampling_params for r in reqs],
            [r.origin_input_ids for r in reqs],
            [r.output_ids for r in reqs],
            [r.generator for r in reqs],
            vocab_size,
            eos_token_ids,
            device,
        )


def apply_logit_processors(logits: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
    """logits: [B, V] -> new float32 [B, V] with bias, min_new_tokens ban, penalties and the grammar mask applied.

    The input is untouched.

    repetition (vLLM): for tokens in prompt+output, positive logits are divided by the penalty and negative ones
    multiplied; frequency/presence (OpenAI): ``logit -= count * frequency_penalty + (count > 0) * presence_penalty``
    over output tokens.
    """
    out = logits.to(torch.float32, copy=True).contiguous()
    flat = out.view(-1)
    vocab = info.vocab_size
    if info.bias_index is not None:
        flat.index_add_(0, info.bias_index, info.bias_values)
    if info.banned_index is not None:
        flat[info.banned_index] = float("-inf")
    if info.repetition_index is not None:
        index = info.repetition_index
        values = flat[index]
        penalty = info.repetition_penalties[index // vocab]
        flat[index] = torch.where(values > 0, values / penalty, values * penalty)
    if info.output_index is not None:
        index = info.output_index
        rows = index // vocab
        delta = info.output_counts * info.frequency_penalties[rows] + info.presence_penalties[rows]
        flat.index_add_(0, index, -delta)
    if info.vocab_mask is not None:
        info.apply_vocab_mask(out, info.vocab_mask, info.vocab_mask_rows)
    return out


_TOP_P_FIRST_GUESS = 256


def _select_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x[rows], skipping the copy when ``rows`` is every row in order."""
    return x if rows.numel() == x.shape[0] else x[rows]


def _top_k_thresholds(probs: torch.Tensor, top_ks: torch.Tensor) -> torch.Tensor:
    """probs: [N, V], top_ks: [N] in [1, V] -> [N] k-th largest probability (0 where k == V)."""
    vocab = probs.shape[-1]
    limited = top_ks < vocab
    thresholds = torch.zeros(probs.shape[0], dtype=probs.dtype, device=probs.device)
    if bool(limited.any()):
        rows = limited.nonzero().squeeze(1)
        ks = top_ks[rows]
        values = _select_rows(probs, rows).topk(int(ks.max()), dim=-1).values
        thresholds[rows] = values.gather(1, (ks - 1).unsqueeze(1)).squeeze(1)
    return thresholds


def _top_p_thresholds(probs: torch.Tensor, top_ps: torch.Tensor, top_k_thr: torch.Tensor) -> torch.Tensor:
    """probs: [N, V] -> [N] smallest probability kept by top_p on the top-k-renormalized distribution.

    Looks at the ``k`` largest values, growing ``k`` for rows whose top-``k`` mass is still short of top_p
    (a full sort only in the worst case). 0 where top_p == 1.
    """
    vocab = probs.shape[-1]
    thresholds = torch.zeros(probs.shape[0], dtype=probs.dtype, device=probs.device)
    active = (top_ps < 1.0).nonzero().squeeze(1)
    if bool((top_k_thr > 0).any()):
        totals = (probs * (probs >= top_k_thr.unsqueeze(1))).sum(dim=-1)
    else:
        totals = probs.sum(dim=-1)
    k = min(vocab, _TOP_P_FIRST_GUESS)
    while active.numel() > 0:
        values = _select_rows(probs, active).topk(k, dim=-1).values
        values = values * (values >= top_k_thr[active].unsqueeze(1))
        cum = values.cumsum(dim=-1)
        target = (top_ps[active] * totals[active]).unsqueeze(1)
        num_kept = ((cum - values) < target).sum(dim=-1)
        done = (cum[:, -1:] >= target).squeeze(1) | (k >= vocab) | (values[:, -1] == 0)
        last = values.gather(1, (num_kept.clamp(1, k) - 1).unsqueeze(1)).squeeze(1)
        thresholds[active[done]] = last[done]
        active = active[~done]
        k = min(vocab, k * 4)
    return thresholds


def filter_probs(
    probs: torch.Tensor,
    top_ks: torch.Tensor,
    top_ps: torch.Tensor,
    min_ps: torch.Tensor,
    need_top_k: bool = True,
    need_top_p: bool = True,
    need_min_p: bool = True,
) -> torch.Tensor:
    """probs: [N, V] -> [N, V] with tokens outside top_k / top_p / min_p zeroed (not renormalized).

    Each filter is a per-row probability threshold (ties at the threshold are kept, so the result depends only
    on the row): top_k keeps probabilities >= the k-th largest; top_p keeps the most likely tokens whose mass
    reaches top_p of the top-k-renormalized distribution; min_p keeps probabilities >= min_p * the largest.
    The most likely token is always kept.
    """
    vocab = probs.shape[-1]
    top_ks = top_ks.clamp(1, vocab)
    threshold = torch.zeros(probs.shape[0], dtype=probs.dtype, device=probs.device)
    if need_top_k or need_top_p:
        threshold = _top_k_thresholds(probs, top_ks)
    if need_top_p:
        threshold = torch.maximum(threshold, _top_p_thresholds(probs, top_ps, threshold))
    if need_min_p:
        threshold = torch.maximum(threshold, probs.max(dim=-1).values * min_ps)
    if not (need_top_k or need_top_p or need_min_p):
        return probs
    return probs * (probs >= threshold.unsqueeze(1))


def draw_from_probs(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """probs: [N, V] (unnormalized, >= 0), uniforms: [N] in [0, 1) -> token ids [N] int64 by inverse CDF.

    The CDF runs in vocabulary order; zero-probability tokens are never returned.
    """
    cdf = probs.cumsum(dim=-1)
    targets = (uniforms * cdf[:, -1]).unsqueeze(1)
    ids = torch.searchsorted(cdf, targets, right=True).squeeze(1)
    overflow = ids >= probs.shape[-1]
    if bool(overflow.any()):
        # Float round-off put the target at the very end: take the last token with mass.
        rows = overflow.nonzero().squeeze(1)
        positive = probs[rows] > 0
        ids[rows] = probs.shape[-1] - 1 - positive.flip(-1).int().argmax(dim=-1)
    return ids


class Sampler:
    """Turns a batch of logits into next token ids (see the module docstring for the order of steps)."""

    def sample(
        self, logits: torch.Tensor, info: SamplingBatchInfo, default_generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """logits: [B, V] float32 -> next_token_ids: [B] int64. ``logits`` is left unchanged.

        Unseeded rows draw from ``default_generator`` (torch's global RNG when None).
        """
        if info.all_greedy and not info.needs_logit_processing:
            return logits.argmax(dim=-1)
        if info.needs_logit_processing:
            logits = apply_logit_processors(logits, info)
        if info.all_greedy:
            return logits.argmax(dim=-1)

        rows = (~info.is_greedy).nonzero().squeeze(1)
        row_list = rows.tolist()
        scaled = _select_rows(logits, rows).float() / info.temperatures[rows].unsqueeze(1)
        probs = torch.softmax(scaled, dim=-1)
        probs = filter_probs(
            probs,
            info.top_ks[rows],
            info.top_ps[rows],
            info.min_ps[rows],
            info.need_top_k,
            info.need_top_p,
            info.need_min_p,
        )
        uniforms = self._uniforms(row_list, info.generators, default_generator, probs.device)
        sampled_ids = draw_from_probs(probs, uniforms)
        if len(row_list) == logits.shape[0]:
            return sampled_ids
        next_ids = logits.argmax(dim=-1)
        next_ids[rows] = sampled_ids
        return next_ids

    @staticmethod
    def _uniforms(
        row_list: list[int],
        generators: list[torch.Generator | None],
        default_generator: torch.Generator | None,
        device: torch.device,
    ) -> torch.Tensor:
        """One U[0, 1) per sampled row: seeded rows from their own generator, the rest from the default one."""
        unseeded = [i for i, row in enumerate(row_list) if generators[row] is None]
        uniforms = torch.empty(len(row_list), dtype=torch.float32, device=device)
        if unseeded:
            draws = torch.rand(len(unseeded), generator=default_generator, device=device)
            if len(unseeded) == len(row_list):
                return draws
            uniforms[torch.tensor(unseeded, device=device)] = draws
        for i, row in enumerate(row_list):
            generator = generators[row]
            if generator is not None:
                uniforms[i] = torch.rand(1, generator=generator, device=device)[0]
        return uniforms


def compute_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """logits: [N, V] (raw, before any sampling transform) -> log-softmax [N, V] float32."""
    return torch.log_softmax(logits.float(), dim=-1)


def get_token_logprobs(logprobs: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """logprobs: [N, V], token_ids: [N] -> the chosen tokens' logprobs [N]."""
    ids = token_ids.to(device=logprobs.device, dtype=torch.int64).unsqueeze(1)
    return logprobs.gather(1, ids).squeeze(1)


def get_top_logprobs(logprobs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """logprobs: [N, V] -> (values [N, k'], ids [N, k']) with k' = min(k, V), most likely first."""
    k = max(0, min(int(k), logprobs.shape[-1]))
    values, ids = logprobs.topk(k, dim=-1)
    return values, ids
