"""EmbeddingScheduler (sglkit/runtime/embedding_scheduler.py): prefill-only batches under the token and size budgets,
the seed's 'Prefill batch.' line, refusals as error outputs, abort, stats and no leaked KV slots."""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager

import pytest
import torch

from sglkit.core.messages import EmbeddingOutput, TokenizedEmbeddingReq, TokenizedGenerateReq
from sglkit.core.sampling_params import SamplingParams
from sglkit.runtime.scheduler.embedding_scheduler import EmbeddingScheduler
from sglkit.server_args import ServerArgs
from tests.embedding_reference import tiny_embedding_model  # noqa: F401 - fixture

PREFILL_LINE = re.compile(
    r"^Prefill batch\. #new-seq: (\d+), #new-token: (\d+), #cached-token: 0, cache hit rate: 0\.00%, "
    r"token usage: 0\.00, #running-req: 0, #queue-req: (\d+)$"
)


class ListHandler(logging.Handler):
    """Keeps the messages it receives."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def scheduler_log():
    """Capture the scheduler's INFO lines (sglkit loggers do not propagate to the root logger)."""
    logger = logging.getLogger("sglkit.runtime.scheduler")
    old_level, handler = logger.level, ListHandler()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def make_scheduler(path: str, **kwargs) -> EmbeddingScheduler:
    return EmbeddingScheduler(ServerArgs(model_path=path, is_embedding=True, random_seed=0, **kwargs))


def req(rid: str, num_tokens: int) -> TokenizedEmbeddingReq:
    return TokenizedEmbeddingReq(rid=rid, input_ids=[(7 * i + 11) % 500 + 5 for i in range(num_tokens)])


def run_all(scheduler: EmbeddingScheduler) -> list[list[EmbeddingOutput]]:
    """Step until idle; the outputs of each step."""
    steps = []
    while not scheduler.is_idle():
        steps.append(scheduler.step())
    return steps


@pytest.fixture(scope="module", params=["Qwen2Model", "BertModel"])
def path(request, tiny_embedding_model):  # noqa: F811
    return tiny_embedding_model(request.param)


def test_waiting_inputs_share_passes_under_max_prefill_tokens(path):
    scheduler = make_scheduler(path, max_prefill_tokens=20)
    for i in range(5):
        assert scheduler.add_request(req(f"r{i}", 8)) is None
    with scheduler_log() as lines:
        steps = run_all(scheduler)
    assert [[o.rid for o in step] for step in steps] == [["r0", "r1"], ["r2", "r3"], ["r4"]]
    parsed = [PREFILL_LINE.match(line).groups() for line in lines if line.startswith("Prefill")]
    assert parsed == [("2", "16", "3"), ("2", "16", "1"), ("1", "8", "0")]
    assert scheduler.forward_ct == 3 and scheduler.step() == []
    ok, detail = scheduler.check_memory_leak()
    assert ok, detail


def test_batching_does_not_change_vectors(path):
    alone = make_scheduler(path, max_prefill_tokens=8)
    together = make_scheduler(path)
    for scheduler in (alone, together):
        for i, n in enumerate([8, 3, 6]):
            scheduler.add_request(req(f"r{i}", n))
    a = {o.rid: o.embedding for step in run_all(alone) for o in step}
    b = {o.rid: o.embedding for step in run_all(together) for o in step}
    assert together.forward_ct == 1 and alone.forward_ct == 3
    for rid in a:
        torch.testing.assert_close(torch.tensor(a[rid]), torch.tensor(b[rid]), atol=1e-5, rtol=0)


def test_an_input_over_the_budget_still_runs_alone_and_max_running_requests_caps_a_pass(path):
    scheduler = make_scheduler(path, max_prefill_tokens=4, max_running_requests=2)
    scheduler.add_request(req("big", 10))
    for i in range(3):
        scheduler.add_request(req(f"s{i}", 1))
    steps = run_all(scheduler)
    assert [[o.rid for o in step] for step in steps] == [["big"], ["s0", "s1"], ["s2"]]
    assert all(not o.error and o.embedding for step in steps for o in step)


def test_refused_inputs_become_error_outputs(path):
    scheduler = make_scheduler(path)
    too_long = scheduler.add_request(req("long", scheduler.context_len + 1))
    assert too_long.finished and "longer than the model's context length" in too_long.error
    empty = scheduler.add_request(TokenizedEmbeddingReq(rid="empty", input_ids=[]))
    assert empty.error == "The input is empty." and empty.embedding == []
    generate = scheduler.add_request(TokenizedGenerateReq("g", [5, 6], SamplingParams()))
    assert "embedding model" in generate.error
    assert scheduler.is_idle()


def test_abort_drops_waiting_inputs(path):
    scheduler = make_scheduler(path)
    for rid in ("a", "b", "c"):
        scheduler.add_request(req(rid, 4))
    (aborted,) = scheduler.abort_request("b")
    assert aborted.rid == "b" and aborted.error and aborted.meta_info["finish_reason"] == {"type": "abort"}
    assert [o.rid for o in scheduler.step()] == ["a", "c"]
    scheduler.add_request(req("d", 4))
    assert [o.rid for o in scheduler.abort_request(abort_all=True)] == ["d"] and scheduler.is_idle()


def test_control_requests_and_stats(path, tiny_embedding_model):  # noqa: F811
    scheduler = make_scheduler(path)
    assert scheduler.flush_cache().success  # nothing to flush: a successful no-op
    stats = scheduler.get_stats()
    assert stats["context_len"] == scheduler.context_len and stats["is_embedding"] is True
    assert stats["vocab_size"] == scheduler.model_runner.vocab_size and stats["max_total_num_tokens"] > 0
    scheduler.add_request(req("x", 5))
    assert not scheduler.update_weights(path).success  # busy
    before = run_all(scheduler)[0][0].embedding
    assert scheduler.update_weights(path).success
    scheduler.add_request(req("x", 5))
    assert run_all(scheduler)[0][0].embedding == before
    assert scheduler.get_stats()["num_finished_reqs"] == 2


def test_queue_limit_and_waiting_timeout_end_inputs_with_503(path):
    scheduler = make_scheduler(path, max_queued_requests=2, req_waiting_timeout=30.0)
    assert [scheduler.add_request(req(rid, 4)) for rid in ("a", "b")] == [None, None]
    full = scheduler.add_request(req("c", 4))
    assert full.error == "The request queue is full." and full.error_status == 503 and full.embedding == []
    assert full.meta_info["finish_reason"] == {
        "type": "abort",
        "message": "The request queue is full.",
        "status_code": 503,
    }
    scheduler.waiting_queue[0].created_time -= 60  # "a" has waited a minute
    assert scheduler.poll_expired() == [("a", "Request waiting timeout reached.")]
    assert scheduler.step(expired=[]) and scheduler.is_idle()  # rank 0 said nothing expired: both ran
    scheduler.add_request(req("d", 4))
    scheduler.add_request(req("e", 4))
    scheduler.waiting_queue[0].created_time -= 60
    outs = {o.rid: o for o in scheduler.step()}
    assert outs["d"].error == "Request waiting timeout reached." and outs["d"].error_status == 503
    assert outs["d"].meta_info["finish_reason"]["status_code"] == 503
    assert not outs["e"].error and outs["e"].embedding
    ok, detail = scheduler.check_memory_leak()
    assert ok, detail
