"""Request limits (sglkit/runtime/scheduler/request_limits.py): the queue limit and the waiting / running timeouts.

The timeout rule on plain ``Req`` objects (no model), then a real ``Scheduler`` over the tiny Llama: the 503 abort
outputs, the generated text a timed-out request keeps, the explicit ``expired`` list of a tensor-parallel step
(rank 0's clock decides), the mirror sending rank 0's decision, the Engine's answer, and no leaked KV slot.
"""

from __future__ import annotations

import pytest

import sglkit
from sglkit.core.messages import TokenizedGenerateReq
from sglkit.core.req import FinishReason, Req
from sglkit.core.sampling_params import SamplingParams
from sglkit.runtime.scheduler import mirror
from sglkit.runtime.scheduler.request_limits import (
    QUEUE_FULL_MESSAGE,
    RUNNING_TIMEOUT_MESSAGE,
    WAITING_TIMEOUT_MESSAGE,
    RequestTimeouts,
    queue_is_full,
)
from sglkit.runtime.scheduler.scheduler import Scheduler
from sglkit.server_args import ServerArgs


def plain_req(rid: str, queued: float = 0.0, started: float = 0.0) -> Req:
    req = Req(rid=rid, origin_input_ids=[1, 2, 3], sampling_params=SamplingParams())
    req.queued_time, req.start_time = queued, started
    return req


def abort_reason(message: str) -> dict:
    return {"type": "abort", "message": message, "status_code": 503}


# ----------------------------------------------------------------------------------------- the rules, no model
def test_queue_is_full():
    assert not queue_is_full(None, 10_000)
    assert not queue_is_full(2, 1)
    assert queue_is_full(2, 2) and queue_is_full(2, 3)


def test_expired_waiting_and_running_rules():
    now = 100.0
    reqs = [
        plain_req("fresh", queued=99.0),  # waited 1 s
        plain_req("stale", queued=90.0),  # waited 10 s, never started
        plain_req("not-queued-yet"),  # no timestamp: never judged
        plain_req(
            "running-long", queued=10.0, started=50.0
        ),  # running 50 s: the waiting clock no longer counts
        plain_req("running-short", queued=10.0, started=98.0),
    ]
    timeouts = RequestTimeouts(waiting=5.0, running=20.0)
    assert timeouts.expired(reqs, now) == [
        ("stale", WAITING_TIMEOUT_MESSAGE),
        ("running-long", RUNNING_TIMEOUT_MESSAGE),
    ]
    assert RequestTimeouts(waiting=5.0).expired(reqs, now) == [("stale", WAITING_TIMEOUT_MESSAGE)]
    assert RequestTimeouts(running=20.0).expired(reqs, now) == [("running-long", RUNNING_TIMEOUT_MESSAGE)]
    assert not RequestTimeouts().enabled and RequestTimeouts().expired(reqs, now) == []
    reqs[1].finished_reason = FinishReason("stop")
    assert timeouts.expired(reqs[:2], now) == []  # finished requests are skipped


def test_timeouts_from_server_args_and_sglang_env(monkeypatch, llama_path):
    monkeypatch.setenv("SGLANG_REQ_WAITING_TIMEOUT", "7.5")
    args = ServerArgs(model_path=llama_path, req_running_timeout=3)
    assert RequestTimeouts.from_server_args(args) == RequestTimeouts(waiting=7.5, running=3)


# ----------------------------------------------------------------------------------------- a real scheduler
def greedy(n: int) -> SamplingParams:
    params = SamplingParams.from_dict({"temperature": 0, "max_new_tokens": n, "ignore_eos": True})
    params.normalize()
    return params


def message(sched: Scheduler, rid: str, n: int = 8, stream: bool = False) -> TokenizedGenerateReq:
    return TokenizedGenerateReq(rid, sched.tokenizer.encode(f"Request {rid} says"), greedy(n), stream=stream)


def run_until_idle(sched: Scheduler, **step_kwargs) -> dict:
    """Step until idle; every output's fields by rid (outputs folded: text and ids concatenated)."""
    done: dict = {}
    for _ in range(500):
        if sched.is_idle():
            break
        for out in sched.step(**step_kwargs):
            seen = done.setdefault(out.rid, {"text": "", "ids": []})
            seen["text"] += out.text_delta
            seen["ids"] += out.output_ids_delta
            seen.update(finished=out.finished, meta=out.meta_info, error=out.error, status=out.error_status)
    assert sched.is_idle()
    return done


def check_leak(sched: Scheduler) -> None:
    ok, detail = sched.check_memory_leak()
    assert ok, detail


@pytest.fixture(scope="module")
def sched(llama_path):
    """One scheduler; tests set its limits (they are read at each arrival / iteration) and restore them."""
    return Scheduler(ServerArgs(model_path=llama_path, max_total_tokens=2048, random_seed=0))


@pytest.fixture
def limits(sched):
    """Set ``max_queued_requests`` / timeouts on the shared scheduler for one test."""
    args = sched.server_args
    saved = (args.max_queued_requests, sched.timeouts)

    def apply(max_queued: int | None = None, waiting: float | None = None, running: float | None = None):
        args.max_queued_requests = max_queued
        sched.timeouts = RequestTimeouts(waiting, running)

    yield apply
    args.max_queued_requests, sched.timeouts = saved
    sched.abort_request(abort_all=True)


def test_full_queue_refuses_arrivals_with_503_and_the_others_complete(sched, limits):
    limits(max_queued=2)
    refused = sched.handle([message(sched, rid) for rid in ("q1", "q2", "q3", "q4")])
    assert [o.rid for o in refused] == ["q3", "q4"]
    for out in refused:
        assert out.finished and out.error == QUEUE_FULL_MESSAGE and out.error_status == 503
        assert out.meta_info["finish_reason"] == abort_reason(QUEUE_FULL_MESSAGE)
        assert out.output_ids_delta == [] and out.meta_info["completion_tokens"] == 0
    done = run_until_idle(sched)
    assert set(done) == {"q1", "q2"}
    assert all(d["error"] is None and len(d["ids"]) == 8 for d in done.values())
    assert sched.handle(message(sched, "q5")) == []  # room again
    run_until_idle(sched)
    check_leak(sched)


def test_retracted_requests_are_never_refused(sched, limits):
    limits(max_queued=1)
    assert sched.handle([message(sched, "r1", n=20), message(sched, "r2", n=20)])[0].rid == "r2"
    sched.step()  # r1 prefilled: running, the queue is empty
    sched.handle(message(sched, "r3", n=4))  # the queue is at its limit (1)
    victim = sched.running_reqs[0]
    sched.running_reqs.remove(victim)
    sched._retract(victim)  # what decoding does when the KV pool runs out
    assert [r.rid for r in sched.waiting_queue] == ["r1", "r3"]  # over the limit: it went back anyway
    done = run_until_idle(sched)
    assert len(done["r1"]["ids"]) == 20 and len(done["r3"]["ids"]) == 4
    check_leak(sched)


def test_waiting_timeout_ends_a_queued_request_with_503(sched, limits):
    limits(waiting=30.0)
    sched.max_running_requests, saved = 1, sched.max_running_requests
    try:
        sched.handle([message(sched, "w1", n=6), message(sched, "w2", n=6)])
        sched.step()  # w1 runs; w2 waits (one running request at most)
        waiting = sched.waiting_queue[0]
        assert waiting.rid == "w2" and waiting.start_time == 0.0 and waiting.queued_time > 0
        waiting.queued_time -= 60  # it has waited a minute
        done = run_until_idle(sched)
    finally:
        sched.max_running_requests = saved
    assert done["w2"]["error"] == WAITING_TIMEOUT_MESSAGE and done["w2"]["status"] == 503
    assert done["w2"]["meta"]["finish_reason"] == abort_reason(WAITING_TIMEOUT_MESSAGE)
    assert done["w2"]["ids"] == []
    assert done["w1"]["error"] is None and len(done["w1"]["ids"]) == 6
    check_leak(sched)


def test_running_timeout_keeps_the_generated_text_and_frees_the_kv(sched, limits):
    limits(running=30.0)
    sched.handle([message(sched, "t1", n=200), message(sched, "t2", n=5)])
    for _ in range(4):
        sched.step()
    victim = next(r for r in sched.running_reqs if r.rid == "t1")
    generated = list(victim.output_ids)
    assert generated and victim.start_time > 0
    victim.start_time -= 60
    done = run_until_idle(sched)
    assert done["t1"]["error"] == RUNNING_TIMEOUT_MESSAGE and done["t1"]["status"] == 503
    assert done["t1"]["meta"]["finish_reason"] == abort_reason(RUNNING_TIMEOUT_MESSAGE)
    assert done["t1"]["ids"][: len(generated)] == generated and len(done["t1"]["ids"]) < 200
    assert done["t1"]["text"] == sched.tokenizer.decode(done["t1"]["ids"])
    assert done["t1"]["meta"]["completion_tokens"] == len(done["t1"]["ids"])
    assert done["t2"]["error"] is None and len(done["t2"]["ids"]) == 5
    check_leak(sched)


def test_an_explicit_expired_list_overrides_the_local_clock(sched, limits):
    """A tensor-parallel follower: it ends exactly the requests rank 0 sent, whatever its own clock says."""
    limits(running=30.0)
    sched.handle([message(sched, "x1", n=30), message(sched, "x2", n=30)])
    sched.step()
    for req in sched.running_reqs:
        req.start_time -= 60  # expired by this rank's clock, but rank 0 did not say so
    assert sched.step(expired=[]) == [] and len(sched.running_reqs) == 2  # decoding on, nothing ended
    outs = sched.step(expired=[("x2", RUNNING_TIMEOUT_MESSAGE)])
    ended = [o for o in outs if o.finished]
    assert [o.rid for o in ended] == ["x2"] and ended[0].error == RUNNING_TIMEOUT_MESSAGE
    assert [r.rid for r in sched.running_reqs] == ["x1"]
    sched.abort_request("x1")
    check_leak(sched)


def test_leader_sends_rank_zero_decision_with_the_step(sched, limits, monkeypatch):
    limits(running=30.0)
    sent: list = []
    monkeypatch.setattr(mirror, "broadcast_object", lambda obj: sent.append(obj) or obj)
    leader = mirror.LeaderScheduler(sched)
    sched.handle(message(sched, "m1", n=30))
    leader.step()
    sched.running_reqs[0].start_time -= 60
    outs = leader.step()
    assert sent == [("step", []), ("step", [("m1", RUNNING_TIMEOUT_MESSAGE)])]
    assert [o.error for o in outs if o.finished] == [RUNNING_TIMEOUT_MESSAGE]
    check_leak(sched)


# ----------------------------------------------------------------------------------------- the offline Engine
def test_engine_returns_an_aborted_request_with_its_text_and_503_reason(llama_path):
    """Engine.generate does not raise for a request the scheduler gave up on: its dict says so (finish_reason abort
    with message and status_code 503) and holds what was generated (here: the first token)."""
    with sglkit.Engine(
        model_path=llama_path, max_total_tokens=2048, random_seed=0, req_running_timeout=1e-9
    ) as llm:
        out = llm.generate("Once upon a time", {"temperature": 0, "max_new_tokens": 50, "ignore_eos": True})
        assert out["meta_info"]["finish_reason"] == abort_reason(RUNNING_TIMEOUT_MESSAGE)
        assert len(out["output_ids"]) == 1 and out["meta_info"]["completion_tokens"] == 1
        assert out["text"] == llm.tokenizer.decode(out["output_ids"])
        ok, detail = llm.scheduler.check_memory_leak()
        assert ok, detail
