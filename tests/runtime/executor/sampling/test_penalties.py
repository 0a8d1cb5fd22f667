"""Penalty counts on the device (sglkit/runtime/executor/sampling/penalties.py): rows kept across steps and updated
with the sampled tokens give the same logits as rebuilding from the id lists each step; rows are recycled."""

from __future__ import annotations

import torch

from sglkit.core.req import Req
from sglkit.core.sampling_params import SamplingParams
from sglkit.runtime.executor.sampling import (
    PenaltyCounts,
    Sampler,
    SamplingBatchInfo,
    apply_logit_processors,
)

VOCAB = 40


def test_counts_kept_across_steps_equal_a_rebuild_from_the_lists():
    params = [
        SamplingParams(temperature=0.8, frequency_penalty=0.7, presence_penalty=0.2, sampling_seed=1),
        SamplingParams(temperature=0.0),  # no penalty: no row
        SamplingParams(temperature=1.2, repetition_penalty=1.6, sampling_seed=2),
        SamplingParams(temperature=0.9, repetition_penalty=0.8, frequency_penalty=-0.3, sampling_seed=3),
    ]
    reqs = [Req(rid=str(i), origin_input_ids=[i, i + 1, 7], sampling_params=p) for i, p in enumerate(params)]
    counts = PenaltyCounts(VOCAB)
    gen = torch.Generator().manual_seed(0)
    for _ in range(25):
        logits = torch.randn(len(reqs), VOCAB, generator=gen)
        kept = SamplingBatchInfo.from_reqs(reqs, VOCAB, {0}, "cpu", counts)
        rebuilt = SamplingBatchInfo.from_params(
            params, [r.origin_input_ids for r in reqs], [r.output_ids for r in reqs], VOCAB, {0}, "cpu"
        )
        assert torch.equal(apply_logit_processors(logits, kept), apply_logit_processors(logits, rebuilt))
        ids = Sampler().sample(logits, kept)
        kept.record_output(ids)
        for req, token_id in zip(reqs, ids.tolist()):
            req.output_ids.append(token_id)
    assert reqs[1].penalty_row is None and counts.num_used == 3
    for req in reqs:
        if req.penalty_row is not None:
            assert torch.equal(
                counts.counts[req.penalty_row],
                torch.bincount(torch.tensor(req.output_ids), minlength=VOCAB).float(),
            )
    for req in reqs:
        counts.release_req(req)
        counts.release_req(req)  # twice is harmless
    assert counts.num_used == 0 and all(r.penalty_row is None for r in reqs)


def test_rows_are_recycled_and_reset_and_the_table_grows():
    counts = PenaltyCounts(VOCAB)
    rows = [counts.acquire([1, 2], [3, 3, 4]) for _ in range(5)]
    assert sorted(rows) == list(range(5)) and counts.capacity == 8 and counts.num_used == 5
    counts.record(torch.tensor(rows), torch.full((5,), 9))
    assert counts.counts[:5, 9].tolist() == [1] * 5 and counts.counts[:5, 3].tolist() == [2] * 5
    counts.release(rows[2])
    again = counts.acquire([5], [])
    assert again == rows[2]  # the freed row comes back, emptied and refilled
    assert int(counts.counts[again].sum()) == 0 and counts.seen[again].nonzero().squeeze(1).tolist() == [5]
    assert counts.capacity == 8


def test_a_retracted_request_gets_its_counts_back_from_its_output_ids():
    params = SamplingParams(temperature=0.0, frequency_penalty=1.0)
    req = Req(rid="r", origin_input_ids=[1], sampling_params=params, output_ids=[4, 4, 6])
    counts = PenaltyCounts(VOCAB)
    first = counts.row_for(req)
    counts.record(torch.tensor([first]), torch.tensor([6]))
    req.output_ids.append(6)
    counts.release_req(req)  # retracted
    counts.acquire([], [])  # someone else takes the row meanwhile
    row = counts.row_for(req)
    assert row != first
    assert counts.counts[row, 4] == 2 and counts.counts[row, 6] == 2 and int(counts.counts[row].sum()) == 4
