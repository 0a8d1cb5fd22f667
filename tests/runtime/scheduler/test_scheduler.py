"""Scheduler sampling state (sglkit/runtime/scheduler/scheduler.py) on the tiny Llama: seeded, penalized requests
give the same tokens alone, in a batch and after retractions; penalty rows are released on finish, abort and
retraction (the leak check counts them)."""

from __future__ import annotations

import pytest

import sglkit
from sglkit.core.messages import TokenizedGenerateReq
from sglkit.core.sampling_params import SamplingParams

PROMPTS = [
    "The capital of France is",
    "Once upon a time there was",
    "List three colours:",
    "Hello, my name is",
    "In the beginning the",
    "A quick brown fox",
    "The best way to learn is",
    "Numbers: one two three",
]
MAX_NEW = 24


def sampled(i: int) -> dict:
    """Seeded, penalized and filtered: every piece of per-request sampling state at once."""
    return {
        "temperature": 0.9,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.02,
        "frequency_penalty": 0.4,
        "presence_penalty": 0.3,
        "repetition_penalty": 1.2,
        "sampling_seed": 100 + i,
        "max_new_tokens": MAX_NEW,
        "ignore_eos": True,
    }


def check_leak(llm) -> None:
    ok, detail = llm.scheduler.check_memory_leak()
    assert ok, detail
    assert "penalty rows held=0" in detail


@pytest.fixture(scope="module")
def reference(llama_path):
    """Each request alone in a roomy KV pool."""
    with sglkit.Engine(model_path=llama_path, max_total_tokens=2048, random_seed=0) as llm:
        outs = [llm.generate(p, sampled(i))["output_ids"] for i, p in enumerate(PROMPTS)]
        check_leak(llm)
    return outs


def test_seeded_penalized_requests_are_batch_invariant(llama_path, reference):
    with sglkit.Engine(model_path=llama_path, max_total_tokens=2048, random_seed=7) as llm:
        outs = llm.generate(PROMPTS, [sampled(i) for i in range(len(PROMPTS))])
        assert [o["output_ids"] for o in outs] == reference
        assert len({tuple(r) for r in reference}) == len(PROMPTS)
        check_leak(llm)


def test_same_tokens_after_retractions(llama_path, reference):
    pool = 120
    with sglkit.Engine(model_path=llama_path, max_total_tokens=pool, random_seed=3) as llm:
        outs = llm.generate(PROMPTS, [sampled(i) for i in range(len(PROMPTS))])
        assert llm.scheduler.stats.num_retracted_reqs > 0
        assert [o["output_ids"] for o in outs] == reference
        check_leak(llm)


def test_an_aborted_penalized_request_releases_its_row(llama_path):
    with sglkit.Engine(model_path=llama_path, max_total_tokens=2048, random_seed=0) as llm:
        sched = llm.scheduler
        params = SamplingParams.from_dict(sampled(0) | {"max_new_tokens": 200})
        params.normalize()
        ids = sched.tokenizer.encode(PROMPTS[0])
        sched.add_request(TokenizedGenerateReq("victim", ids, params))
        sched.add_request(TokenizedGenerateReq("other", ids, params))
        for _ in range(3):
            sched.step()
        assert sched.penalty_counts.num_used == 2
        outs = sched.abort_request("victim")
        assert [o.rid for o in outs] == ["victim"] and outs[0].finished
        assert sched.penalty_counts.num_used == 1
        sched.abort_request(abort_all=True)
        assert sched.is_idle()
        check_leak(llm)
