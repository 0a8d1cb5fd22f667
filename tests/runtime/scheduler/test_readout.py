"""Step readout (sglkit/runtime/scheduler/readout.py): the sampled ids and every requested logprob come back in one
``.tolist()``, equal to the log-softmax of the raw logits row by row."""

from __future__ import annotations

import pytest
import torch

from sglkit.core.req import FinishReason, Req
from sglkit.core.sampling_params import SamplingParams
from sglkit.runtime.scheduler.readout import read_step

VOCAB = 13


@pytest.fixture
def count_tolist(monkeypatch):
    calls = []
    original = torch.Tensor.tolist

    def counted(self):
        calls.append(tuple(self.shape))
        return original(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counted)
    return calls


def req(rid: str, logprob: bool = False, top: int = 0, token_ids=None) -> Req:
    return Req(
        rid=rid,
        origin_input_ids=[1, 2],
        sampling_params=SamplingParams(),
        return_logprob=logprob,
        top_logprobs_num=top,
        token_ids_logprob=token_ids,
    )


def test_ids_only_is_one_plain_read(count_tolist):
    ids = torch.tensor([4, 0, 12])
    out = read_step(ids, torch.randn(3, VOCAB), [req("a"), req("b"), req("c")])
    assert out.next_ids == [4, 0, 12] and out.logprobs == {}
    assert count_tolist == [(3,)]


def test_mixed_logprob_requests_in_one_read(count_tolist):
    logits = torch.randn(5, VOCAB, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([3, 7, 1, 12, 5])
    reqs = [
        req("plain"),
        req("lp", logprob=True),
        req("top", logprob=True, top=4),
        req("ids", logprob=True, top=2, token_ids=[9, 0, 9]),
        req("finished", logprob=True, top=3),
    ]
    reqs[4].finished_reason = FinishReason("length", length=0)
    out = read_step(ids, logits, reqs)
    assert len(count_tolist) == 1
    assert out.next_ids == [3, 7, 1, 12, 5] and all(type(i) is int for i in out.next_ids)
    assert sorted(out.logprobs) == [1, 2, 3]  # neither the row that asked nothing nor the finished one
    lp = torch.log_softmax(logits, dim=-1)
    for i in (1, 2, 3):
        row = out.logprobs[i]
        assert row.token_logprob == lp[i, ids[i]].item()
    assert out.logprobs[1].top is None and out.logprobs[1].token_ids is None
    values, top_ids = lp[2].topk(4)
    assert out.logprobs[2].top == list(zip(values.tolist(), top_ids.tolist()))
    assert [t for _, t in out.logprobs[3].top] == lp[3].topk(2).indices.tolist()
    assert out.logprobs[3].token_ids == [(lp[3, 9].item(), 9), (lp[3, 0].item(), 0), (lp[3, 9].item(), 9)]


def test_empty_token_ids_logprob_gives_an_empty_list():
    out = read_step(torch.tensor([2]), torch.randn(1, VOCAB), [req("e", logprob=True, token_ids=[])])
    assert out.logprobs[0].token_ids == [] and out.logprobs[0].top is None
