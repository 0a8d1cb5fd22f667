"""Request limits over real HTTP: --max-queued-requests (503 for the arrivals over it, the others complete),
--req-waiting-timeout and --req-running-timeout (503 with SGLang's messages; a stream keeps what it got and ends
with an in-band error event and [DONE]), the schedule policies lof and random, and
--incremental-streaming-output (streamed /generate chunks carry only what is new).

Two server subprocesses, each started once for the module: one with the queue limit (one running request, two
waiting; lof order, incremental streaming), one with the timeouts (one running request, waiting 0.5 s, running 1 s).
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from sglkit.utils import terminate_process
from tests.server.conftest import start_server

# Runs far longer than any timeout here: the tiny model decodes ~2,000 tokens a second on a CPU with sglkit's
# kernels, so the servers here load a long-context copy of it and ask for 50,000 tokens (~25 s unless cut short).
LONG = {"max_new_tokens": 50_000, "ignore_eos": True, "temperature": 0}
LONG_CONTEXT = 65_536
SHORT = {"max_new_tokens": 4, "ignore_eos": True, "temperature": 0}


@pytest.fixture(scope="module")
def long_context_model_path(tiny_model_factory) -> str:
    """The servers' checkpoint: the tiny Llama with room for LONG."""
    return tiny_model_factory("LlamaForCausalLM", max_position_embeddings=LONG_CONTEXT)


@pytest.fixture(scope="module")
def queue_server(long_context_model_path):
    running = start_server(
        long_context_model_path,
        "--max-running-requests 1 --max-queued-requests 2 --schedule-policy lof --incremental-streaming-output",
    )
    yield running
    terminate_process(running.process)


@pytest.fixture(scope="module")
def timeout_server(long_context_model_path):
    running = start_server(
        long_context_model_path, "--max-running-requests 1 --req-waiting-timeout 0.5 --req-running-timeout 1"
    )
    yield running
    terminate_process(running.process)


def events(response: requests.Response):
    """The SSE events of a streamed answer as JSON (None for [DONE])."""
    for line in response.iter_lines():
        if line:
            assert line.startswith(b"data: "), line
            payload = line[len(b"data: ") :]
            yield None if payload == b"[DONE]" else json.loads(payload)


def start_stream(base_url: str, rid: str, params: dict, **extra):
    """A streamed /generate, returned after its first chunk (it is running then): (response, events, first).

    Keep the events iterator referenced: once it is garbage-collected the connection closes and the server aborts
    the request (the client went away)."""
    response = requests.post(
        f"{base_url}/generate",
        json={"text": "Once upon a time", "rid": rid, "stream": True, "sampling_params": params, **extra},
        stream=True,
        timeout=120,
    )
    assert response.status_code == 200
    it = events(response)
    return response, it, next(it)


def post_in_thread(url: str, body: dict, results: dict, key: str) -> threading.Thread:
    def run() -> None:
        results[key] = requests.post(url, json=body, timeout=120)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def num_queued(base_url: str) -> int:
    return requests.get(f"{base_url}/get_server_info", timeout=30).json()["num_queue_reqs"]


def assert_503(response: requests.Response, message: str) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["message"] == message and error["code"] == 503, error


# ----------------------------------------------------------------------------------------- queue limit
def test_full_queue_refuses_the_extras_with_503_while_the_others_complete(queue_server):
    url = queue_server.base_url
    response, alive, _ = start_stream(
        url, "qf-running", LONG
    )  # the one running request (keep reading it open)
    results: dict = {}
    try:
        threads = [
            post_in_thread(
                f"{url}/generate", {"text": f"Queued {i}", "sampling_params": SHORT}, results, f"q{i}"
            )
            for i in range(2)
        ]
        deadline = time.monotonic() + 60
        while num_queued(url) < 2:
            assert time.monotonic() < deadline, "the two requests never queued"
            time.sleep(0.05)
        for _ in range(2):  # the queue is full: refused at once
            extra = requests.post(f"{url}/generate", json={"text": "One more", "sampling_params": SHORT})
            assert_503(extra, "The request queue is full.")
        chat = requests.post(
            f"{url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        )
        assert_503(chat, "The request queue is full.")
    finally:
        requests.post(f"{url}/abort_request", json={"rid": "qf-running"})
        response.close()
        del alive
    for thread in threads:
        thread.join(timeout=120)
    for key in ("q0", "q1"):
        assert results[key].status_code == 200, results[key].text
        assert results[key].json()["meta_info"]["completion_tokens"] == 4


def test_lof_runs_the_longest_output_first(queue_server):
    """With one running request, the two queued ones start longest-max_new_tokens first, not in arrival order."""
    url = queue_server.base_url
    response, alive, _ = start_stream(url, "lof-running", LONG)  # (dropping the iterator would disconnect)
    results: dict = {}
    try:
        threads = []
        for key, n in (("short", 2), ("long", 12)):  # the short one arrives first
            threads.append(
                post_in_thread(
                    f"{url}/generate",
                    {
                        "text": f"Order {key}",
                        "rid": f"lof-{key}",
                        "sampling_params": {**SHORT, "max_new_tokens": n},
                    },
                    results,
                    key,
                )
            )
            deadline = time.monotonic() + 60
            while num_queued(url) < len(threads):
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        requests.post(f"{url}/abort_request", json={"rid": "lof-running"})
        response.close()
        del alive
    for thread in threads:
        thread.join(timeout=120)
    assert results["long"].status_code == results["short"].status_code == 200
    # One request runs at a time: the long one ran first, so the short one's whole run came after it. Its
    # meta_info e2e_latency (arrival -> end) is then longer than the long one's, although it arrived earlier.
    long_meta, short_meta = results["long"].json()["meta_info"], results["short"].json()["meta_info"]
    assert short_meta["e2e_latency"] > long_meta["e2e_latency"]


def test_incremental_streaming_chunks_carry_only_the_new_output(queue_server):
    url = queue_server.base_url
    params = {**SHORT, "max_new_tokens": 12}
    response, it, first = start_stream(url, "inc", params, return_logprob=True, top_logprobs_num=2)
    chunks = [first] + [e for e in it if e is not None]
    response.close()
    assert len(chunks) > 1
    whole = requests.post(
        f"{url}/generate",
        json={
            "text": "Once upon a time",
            "sampling_params": params,
            "return_logprob": True,
            "top_logprobs_num": 2,
        },
    ).json()
    assert sum((c["output_ids"] for c in chunks), []) == whole["output_ids"]
    assert "".join(c["text"] for c in chunks) == whole["text"]
    got = sum((c["meta_info"]["output_token_logprobs"] for c in chunks), [])
    assert (
        [e[1] for e in got]
        == [e[1] for e in whole["meta_info"]["output_token_logprobs"]]
        == whole["output_ids"]
    )
    tops = sum((c["meta_info"]["output_top_logprobs"] for c in chunks), [])
    assert len(tops) == 12 and all(len(top) == 2 for top in tops)
    for chunk in chunks:
        assert len(chunk["meta_info"]["output_token_logprobs"]) == len(chunk["output_ids"])
        assert chunk["meta_info"]["input_token_logprobs"] == whole["meta_info"]["input_token_logprobs"]
    assert chunks[-1]["meta_info"]["completion_tokens"] == 12
    # The OpenAI routes stream deltas as before.
    stream = requests.post(
        f"{url}/v1/completions",
        json={
            "prompt": "Once upon a time",
            "max_tokens": 12,
            "temperature": 0,
            "stream": True,
            "ignore_eos": True,
        },
        stream=True,
    )
    texts = [e["choices"][0]["text"] for e in events(stream) if e is not None and e.get("choices")]
    assert "".join(texts) == whole["text"]


# ----------------------------------------------------------------------------------------- timeouts
def test_waiting_then_running_timeout(timeout_server):
    """SGLang's test: one running request at a time, two long requests: exactly one gets 503 after waiting 0.5 s
    (an OpenAI-style body with code 503) while the other still streams; 1 s after it started, that one ends too: an
    in-band 503 error event after the text it got, then [DONE]. (LONG's 50,000 tokens take ~25 s even with
    sglkit's CPU decode stack, so the 1 s timeout always comes first.)"""
    url = timeout_server.base_url
    started = time.monotonic()
    response, it, first = start_stream(url, "to-running", LONG)
    try:
        waiting = requests.post(f"{url}/generate", json={"text": "Wait", "sampling_params": LONG}, timeout=60)
        assert_503(waiting, "Request waiting timeout reached.")
        assert waiting.headers.get("Retry-After")
        rest = list(it)
    finally:
        response.close()
    assert time.monotonic() - started >= 1
    assert rest[-1] is None  # [DONE]
    error = rest[-2]["error"]
    assert error["message"] == "Request running timeout reached." and error["code"] == 503
    streamed = [first] + rest[:-2]
    assert all(c["meta_info"]["finish_reason"] is None for c in streamed)
    assert (
        0 < len(streamed[-1]["output_ids"]) < LONG["max_new_tokens"]
    )  # cumulative chunks (no --incremental-streaming-output)


def test_running_timeout_non_streaming_is_a_503_answer(timeout_server):
    response = requests.post(
        f"{timeout_server.base_url}/generate", json={"text": "Run", "sampling_params": LONG}, timeout=60
    )
    assert_503(response, "Request running timeout reached.")
    chat = requests.post(
        f"{timeout_server.base_url}/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": LONG["max_new_tokens"],
            "ignore_eos": True,
        },
        timeout=60,
    )
    assert_503(chat, "Request running timeout reached.")
    info = requests.get(f"{timeout_server.base_url}/get_server_info", timeout=30).json()
    assert info["num_running_reqs"] == 0 and info["num_queue_reqs"] == 0
    assert info["num_used_tokens"] == 0  # the aborted requests' KV went back (to the radix cache)
