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
    apply_penalties,
    apply_penalties_sparse,
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


def test_the_sparse_cpu_path_equals_the_dense_path():
    """``apply_penalties_sparse`` (CPU) gives exactly the dense (accelerator) values, on a subset of the table."""
    gen = torch.Generator().manual_seed(3)
    table = PenaltyCounts(VOCAB)
    for i in range(6):
        output = torch.randint(0, VOCAB, (i * 3,), generator=gen).tolist()
        table.acquire(torch.randint(0, VOCAB, (4,), generator=gen).tolist(), output)
    rows = torch.tensor([4, 0, 5, 2])
    logits = torch.randn(4, VOCAB, generator=gen)
    repetition = torch.tensor([1.3, 1.0, 0.7, 2.0])
    frequency, presence = torch.tensor([0.5, 0.0, -0.4, 1.0]), torch.tensor([0.25, 0.0, 0.0, -1.0])
    for rep, freq, pres in [
        (repetition, frequency, presence),
        (repetition, None, None),
        (None, frequency, presence),
    ]:
        dense = apply_penalties(
            logits, table.counts.index_select(0, rows), table.seen.index_select(0, rows), rep, freq, pres
        )
        sparse = apply_penalties_sparse(logits.clone(), table, rows, rep, freq, pres)
        assert torch.equal(sparse, dense) and not torch.equal(sparse, logits)


def test_seen_pairs_equal_a_nonzero_over_the_rows():
    """The word-then-byte scan finds exactly ``seen[rows].nonzero()``, in its order, for a width not a multiple of 8
    (the padding columns are never reported) and for rows that saw nothing."""
    gen = torch.Generator().manual_seed(5)
    vocab = 37
    table = PenaltyCounts(vocab)
    for i in range(5):
        prompt = torch.randint(0, vocab, (i * 4,), generator=gen).tolist() + ([vocab - 1] if i == 3 else [])
        table.acquire(prompt, torch.randint(0, vocab, (i,), generator=gen).tolist())
    rows = torch.tensor([3, 0, 4, 1, 3])
    batch_row, token = table.seen_pairs(rows)
    expected_row, expected_token = table.seen.index_select(0, rows).nonzero(as_tuple=True)
    assert torch.equal(batch_row, expected_row) and torch.equal(token, expected_token)
    assert len(token) > 0 and int(token.max()) == vocab - 1
