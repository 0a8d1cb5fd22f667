"""Filters and the draw (sglkit/runtime/executor/sampling/filters.py): kept sets equal a plain-Python reference of
the documented rules (ties kept, top_p on the top-k-renormalized mass, min_p relative to the largest), whatever
the sort width; the draw never returns a token without mass; the whole sampler runs with no host sync."""

from __future__ import annotations

import random

import pytest
import torch

from sglkit.core.sampling_params import SamplingParams
from sglkit.runtime.executor.sampling import PenaltyCounts, Sampler, SamplingBatchInfo
from sglkit.runtime.executor.sampling.filters import DRAW_BLOCK, draw_from_probs, filter_probs
from tests.runtime.executor.host_sync import no_host_sync

VOCAB = 16


def reference_kept(probs: list[float], top_k: int, top_p: float, min_p: float) -> set[int]:
    """The documented rules, one row, in plain Python."""
    vocab = len(probs)
    k = min(max(top_k, 1), vocab)
    ranked = sorted(probs, reverse=True)
    threshold = ranked[k - 1] if k < vocab else 0.0
    if top_p < 1.0:
        kept = [v for v in ranked if v >= threshold]
        target, before, last = top_p * sum(kept), 0.0, kept[0]
        for v in kept:
            if before >= target:
                break
            last, before = v, before + v
        threshold = max(threshold, last)
    if min_p > 0.0:
        threshold = max(threshold, max(probs) * min_p)
    return {i for i, p in enumerate(probs) if p >= threshold and p > 0}


def random_rows(n: int, seed: int):
    """Rows of exact dyadic probabilities (counts / 64, ties and zeros included) and random parameters."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        counts = [rng.choice([0, 0, 1, 1, 2, 3, 4, 4, 6, 8]) for _ in range(VOCAB)]
        counts[rng.randrange(VOCAB)] = 8
        rows.append(
            (
                [c / 64 for c in counts],
                rng.choice([-1, 1, 2, 3, 5, 8, VOCAB, 100]),
                rng.choice([1.0, 0.875, 0.75, 0.625, 0.5, 0.25]),
                rng.choice([0.0, 0.0, 0.25, 0.5]),
            )
        )
    return rows


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kept_sets_match_the_reference(seed):
    rows = random_rows(400, seed)
    probs = torch.tensor([r[0] for r in rows])
    ks = torch.tensor([VOCAB if r[1] == -1 else min(r[1], VOCAB) for r in rows])
    top_ps = torch.tensor([r[2] for r in rows])
    min_ps = torch.tensor([r[3] for r in rows])
    with no_host_sync():
        kept = filter_probs(probs, ks, top_ps, min_ps, adaptive_width=False)
    for i, (row, k, p, m) in enumerate(rows):
        expected = reference_kept(row, VOCAB if k == -1 else k, p, m)
        assert set(kept[i].nonzero().squeeze(1).tolist()) == expected, (row, k, p, m)
        assert torch.equal(kept[i][list(expected)], probs[i][list(expected)])  # not renormalized


def test_a_narrow_sort_gives_the_same_result_when_allowed():
    rows = [r for r in random_rows(400, 3) if r[1] not in (-1, VOCAB, 100)]  # every row has a top_k
    probs = torch.tensor([r[0] for r in rows])
    ks = torch.tensor([r[1] for r in rows])
    top_ps, min_ps = torch.tensor([r[2] for r in rows]), torch.tensor([r[3] for r in rows])
    full = filter_probs(probs, ks, top_ps, min_ps)
    narrow = filter_probs(probs, ks, top_ps, min_ps, width=int(ks.max()))
    assert torch.equal(full, narrow)


def test_flags_off_leave_probs_alone():
    probs = torch.rand(3, VOCAB)
    assert (
        filter_probs(
            probs, torch.ones(3, dtype=torch.long), torch.zeros(3), torch.ones(3), False, False, False
        )
        is probs
    )


def test_draw_never_returns_a_token_without_mass():
    probs = torch.tensor([[0.0, 0.3, 0.7, 0.0, 0.0], [0.0, 0.0, 0.0, 0.1, 0.0], [0.2, 0.0, 0.0, 0.0, 0.2]])
    largest = 1.0 - 2.0**-24
    assert draw_from_probs(probs, torch.full((3,), largest)).tolist() == [2, 3, 4]
    assert draw_from_probs(probs, torch.zeros(3)).tolist() == [1, 3, 0]
    grid = torch.linspace(0, largest, 1001)
    for row in probs:
        ids = draw_from_probs(row.expand(1001, -1).contiguous(), grid)
        assert bool((row[ids] > 0).all())
    # Inverse CDF in vocabulary order: u below 0.3 of the mass picks token 1, above it token 2.
    assert draw_from_probs(probs[:1].repeat(2, 1), torch.tensor([0.29, 0.31])).tolist() == [1, 2]


@pytest.mark.parametrize("vocab", [2 * DRAW_BLOCK + 1, 4 * DRAW_BLOCK, 1000])
def test_the_two_level_draw_equals_one_cumsum_over_the_vocabulary(vocab):
    """Dyadic probabilities (exact sums in any order), many tokens and whole blocks without mass, a short last
    block: the same token as the first-above on one [N, V] cumsum, for every uniform on a grid."""
    gen = torch.Generator().manual_seed(vocab)
    rows = 6
    counts = torch.randint(0, 4, (rows, vocab), generator=gen) * (
        torch.rand(rows, vocab, generator=gen) < 0.3
    )
    counts[1, : 3 * DRAW_BLOCK // 2] = 0  # leading blocks without mass
    counts[2] = 0
    counts[2, vocab - 1] = 5  # the only mass in the short last block
    counts[3, DRAW_BLOCK:] = 0  # trailing blocks without mass
    counts[3, DRAW_BLOCK - 1] = 1
    probs = counts.float() / 1024
    grid = torch.linspace(0, 1.0 - 2.0**-24, 257)
    for row in probs:
        many = row.expand(len(grid), -1).contiguous()
        cdf = many.cumsum(-1)
        expected = torch.searchsorted(
            cdf, (grid.unsqueeze(1) * cdf[:, -1:]).contiguous(), right=True
        ).squeeze(1)
        expected = torch.minimum(expected, torch.full_like(expected, int(row.nonzero().max())))
        ids = draw_from_probs(many, grid)
        assert torch.equal(ids, expected)
        assert bool((row[ids] > 0).all())


def test_the_whole_sampler_has_no_host_sync():
    """Greedy, seeded, top-k/p, min-p, bias, min_new_tokens and penalties in one batch: no read-back on the way."""
    params = [
        SamplingParams(temperature=0.0, frequency_penalty=0.5),
        SamplingParams(temperature=0.7, top_p=0.9, sampling_seed=3, repetition_penalty=1.2),
        SamplingParams(temperature=1.1, top_k=7, min_p=0.05, logit_bias={4: 2.0}),
        SamplingParams(temperature=0.9, min_new_tokens=4, presence_penalty=0.4),
        SamplingParams(temperature=0.0, top_k=1),
    ]
    vocab = 600  # over two draw blocks: the two-level draw runs too
    counts = PenaltyCounts(vocab)
    rows = [counts.acquire([1, 2, 3], [5, 5, 9]) if i in (0, 1, 3) else None for i in range(len(params))]
    info = SamplingBatchInfo.from_params(
        params, [[1, 2, 3]] * 5, [[5, 5, 9]] * 5, vocab, {0}, "cpu", counts, rows
    )
    logits = torch.randn(5, vocab, generator=torch.Generator().manual_seed(0))
    with (
        no_host_sync()
    ):  # the accelerator's path (on CPU the sampler reads back: top_p's width, sparse penalties)
        ids = Sampler(cpu_readback=False).sample(logits, info, torch.Generator().manual_seed(0))
        info.record_output(ids)
    assert ids.shape == (5,)
    assert int(ids[4]) == int(logits[4].argmax())
    assert int(counts.counts[rows[0]].sum()) == 4  # three outputs before, one recorded now


def test_cpu_adaptive_width_equals_the_full_sort():
    """Flat rows whose top_p mass needs thousands of tokens, peaked rows that need a few: same sets either way."""
    gen = torch.Generator().manual_seed(4)
    vocab, rows = 5000, 24
    counts = torch.randint(0, 9, (rows, vocab), generator=gen)
    counts[::2, :3] = 20_000  # peaked rows: a few tokens hold most of the mass
    probs = counts.float() / 65536  # exact dyadic sums
    ks = torch.tensor([vocab, 50, 2000, vocab] * 6)
    top_ps = torch.tensor([0.5, 0.875, 0.75, 0.25, 1.0, 0.625] * 4)
    min_ps = torch.zeros(rows)
    full = filter_probs(probs, ks, top_ps, min_ps, adaptive_width=False)
    adaptive = filter_probs(probs, ks, top_ps, min_ps, adaptive_width=True)
    assert torch.equal(full, adaptive)
    for i in (0, 1, 3):  # spot-check against the plain-Python rules
        expected = reference_kept(probs[i].tolist(), int(ks[i]), float(top_ps[i]), 0.0)
        assert set(full[i].nonzero().squeeze(1).tolist()) == expected
