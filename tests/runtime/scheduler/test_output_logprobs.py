"""Scheduler output path, logprobs (sglkit/runtime/scheduler/output.py): ``token_ids_logprob`` is gathered from the
same log-softmax as the prompt / sampled tokens' own logprobs, position by position, also across prefill chunks."""

from __future__ import annotations

import torch

from sglkit.core.req import FinishReason, Req
from sglkit.core.sampling_params import SamplingParams
from sglkit.runtime.scheduler.output import collect_input_logprobs, make_output, record_output_logprobs
from sglkit.runtime.scheduler.readout import read_step

VOCAB = 11
PROMPT = [3, 1, 4, 1, 5]


def record_step(req: Req, step_logits: torch.Tensor, token_id: int) -> None:
    """step_logits: [V] -> the sampled token's logprobs as the scheduler records them (read_step, then record)."""
    readout = read_step(torch.tensor([token_id]), step_logits[None], [req])
    record_output_logprobs(req, readout.next_ids[0], readout.logprobs[0])


def make_req(token_ids_logprob=None, logprob_start_len=0) -> Req:
    return Req(
        rid="r",
        origin_input_ids=list(PROMPT),
        sampling_params=SamplingParams(max_new_tokens=4),
        return_logprob=True,
        logprob_start_len=logprob_start_len,
        top_logprobs_num=2,
        token_ids_logprob=token_ids_logprob,
    )


def logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed))


def test_input_token_ids_logprobs_follow_the_prompt_positions() -> None:
    req = make_req([2, 9, 1])
    rows = logits(len(PROMPT) - 1)
    collect_input_logprobs(req, rows, 0, len(PROMPT) - 1, 0)
    lp = torch.log_softmax(rows, dim=-1)
    assert req.input_token_ids_logprobs[0] is None  # the first prompt token is not scored
    assert len(req.input_token_ids_logprobs) == len(req.input_token_logprobs) == len(PROMPT)
    for pos, row in enumerate(req.input_token_ids_logprobs[1:]):
        assert [t for _, t in row] == [2, 9, 1]
        assert [v for v, _ in row] == torch.stack([lp[pos, 2], lp[pos, 9], lp[pos, 1]]).tolist()
        own_value, own_id = req.input_token_logprobs[pos + 1]
        assert own_id == PROMPT[pos + 1] and (own_id != 1 or dict((t, v) for v, t in row)[1] == own_value)


def test_input_token_ids_logprobs_across_chunks_match_one_pass() -> None:
    rows = logits(len(PROMPT) - 1, seed=3)
    whole = make_req([0, 4])
    collect_input_logprobs(whole, rows, 0, 4, 0)
    chunked = make_req([0, 4])
    collect_input_logprobs(chunked, rows, 0, 2, 0)  # positions 0-1 in the first chunk
    collect_input_logprobs(chunked, rows, 2, 2, 2)  # positions 2-3 in the second
    assert chunked.input_token_ids_logprobs == whole.input_token_ids_logprobs


def test_output_token_ids_logprobs_and_their_deltas() -> None:
    req = make_req([7, 3])
    step_logits = logits(2, seed=5)
    for step, token_id in enumerate([3, 7]):
        lp = torch.log_softmax(step_logits[step], dim=-1)
        record_step(req, step_logits[step], token_id)
        req.output_ids.append(token_id)
        assert req.output_token_ids_logprobs[-1] == [(lp[7].item(), 7), (lp[3].item(), 3)]
        assert (
            dict((t, v) for v, t in req.output_token_ids_logprobs[-1])[token_id]
            == req.output_token_logprobs[-1][0]
        )
        if step == 0:
            first = make_output(req)
            assert first.input_token_ids_logprobs == [] and len(first.output_token_ids_logprobs_delta) == 1
    req.finished_reason = FinishReason("length", length=2)
    last = make_output(req)
    assert last.output_token_ids_logprobs_delta == req.output_token_ids_logprobs[1:]


def test_no_token_ids_logprob_means_none_in_outputs() -> None:
    req = make_req(None)
    record_step(req, logits(1)[0], 4)
    req.output_ids.append(4)
    out = make_output(req)
    assert out.input_token_ids_logprobs is None and out.output_token_ids_logprobs_delta is None
    assert req.output_token_ids_logprobs == []
