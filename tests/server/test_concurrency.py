"""Concurrency on the real server (sglkit/server/tokenizer_manager.py + the scheduler process): many requests at
once are batched and answer exactly as alone; /health stays responsive under load; a client that goes away
aborts its request and the KV pool returns to idle.
"""

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

NUM_CONCURRENT = 64
MAX_NEW_TOKENS = 16
GREEDY = {"temperature": 0, "max_new_tokens": MAX_NEW_TOKENS, "ignore_eos": True}
PROMPTS = [f"Request {i}: say something about the number {i * 7 + 3}." for i in range(NUM_CONCURRENT)]
LONG = {"temperature": 0, "max_new_tokens": 1500, "ignore_eos": True}


def generate(base_url: str, prompt: str, sampling_params: dict, timeout: float = 120) -> dict:
    """POST /generate with a text prompt; asserts 200."""
    resp = requests.post(
        f"{base_url}/generate", json={"text": prompt, "sampling_params": sampling_params}, timeout=timeout
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


def server_info(base_url: str) -> dict:
    """GET /get_server_info."""
    resp = requests.get(f"{base_url}/get_server_info", timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def wait_until_idle(base_url: str, timeout: float = 30) -> dict:
    """Poll /get_server_info until nothing runs or waits; returns the idle info (fails after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        info = server_info(base_url)
        if info["num_running_reqs"] == 0 and info["num_queue_reqs"] == 0:
            return info
        assert time.monotonic() < deadline, f"still busy after {timeout} s: {info}"
        time.sleep(0.05)


def wait_until_running(base_url: str, count: int, timeout: float = 60) -> dict:
    """Poll until at least ``count`` requests are running or queued."""
    deadline = time.monotonic() + timeout
    while True:
        info = server_info(base_url)
        if info["num_running_reqs"] + info["num_queue_reqs"] >= count:
            return info
        assert time.monotonic() < deadline, f"only {info['num_running_reqs']} running after {timeout} s"
        time.sleep(0.02)


def decode_batch_sizes(log: str) -> list[int]:
    """The ``#running-req`` of every ``Decode batch.`` line in ``log``."""
    return [int(n) for n in re.findall(r"Decode batch\. #running-req: (\d+)", log)]


def assert_kv_back_to_idle(base_url: str) -> None:
    """No request holds KV: nothing in use beyond the radix cache, and nothing at all after a flush."""
    info = wait_until_idle(base_url)
    assert info["num_used_tokens"] == 0, info
    resp = requests.post(f"{base_url}/flush_cache", timeout=30)
    assert resp.status_code == 200, resp.text
    info = server_info(base_url)
    assert info["num_used_tokens"] == 0 and info["num_cached_tokens"] == 0 and info["token_usage"] == 0, info


@pytest.fixture(scope="module")
def solo_outputs(server) -> list[dict]:
    """Each prompt sent alone (one request in flight at a time)."""
    return [generate(server.base_url, p, GREEDY) for p in PROMPTS]


def test_concurrent_requests_are_batched_and_match_solo_outputs(server, solo_outputs):
    log_start = len(server.log())
    with ThreadPoolExecutor(max_workers=NUM_CONCURRENT) as pool:
        outputs = list(pool.map(lambda p: generate(server.base_url, p, GREEDY), PROMPTS))
    assert [o["output_ids"] for o in outputs] == [s["output_ids"] for s in solo_outputs]
    assert [o["text"] for o in outputs] == [s["text"] for s in solo_outputs]
    assert all(o["meta_info"]["finish_reason"]["type"] == "length" for o in outputs)
    assert len({o["meta_info"]["id"] for o in outputs}) == NUM_CONCURRENT
    new_log = server.log()[log_start:]
    assert max(decode_batch_sizes(new_log), default=0) > 1, new_log[-2000:]
    assert_kv_back_to_idle(server.base_url)


def test_concurrent_async_openai_requests_match_solo_outputs(server, solo_outputs):
    async def one(client, i: int, prompt: str) -> str:
        kwargs = dict(
            model=server.model_path,
            prompt=prompt,
            temperature=0,
            max_tokens=MAX_NEW_TOKENS,
            extra_body={"ignore_eos": True},
        )
        if i % 2 == 0:
            return (await client.completions.create(**kwargs)).choices[0].text
        stream = await client.completions.create(**kwargs, stream=True)
        return "".join([c.choices[0].text async for c in stream])

    async def texts() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=f"{server.base_url}/v1", api_key="None", max_retries=0
        ) as client:
            return await asyncio.gather(*(one(client, i, p) for i, p in enumerate(PROMPTS)))

    log_start = len(server.log())
    assert asyncio.run(texts()) == [s["text"] for s in solo_outputs]
    assert max(decode_batch_sizes(server.log()[log_start:]), default=0) > 1
    assert_kv_back_to_idle(server.base_url)


def test_health_answers_quickly_while_a_long_batch_runs(server):
    num_long = 16
    with ThreadPoolExecutor(max_workers=num_long) as pool:
        futures = [
            pool.submit(generate, server.base_url, f"Long story number {i}:", LONG) for i in range(num_long)
        ]
        wait_until_running(server.base_url, num_long)
        for _ in range(5):
            # The timeout is the assertion: a blocked event loop would not answer within a second.
            assert requests.get(f"{server.base_url}/health", timeout=1.0).status_code == 200
            assert requests.get(f"{server.base_url}/v1/models", timeout=1.0).status_code == 200
        assert server_info(server.base_url)["num_running_reqs"] > 0  # the batch was still running meanwhile
        resp = requests.post(f"{server.base_url}/abort_request", json={"abort_all": True}, timeout=10)
        assert resp.status_code == 200, resp.text
        results = [f.result(timeout=60) for f in futures]
    assert {r["meta_info"]["finish_reason"]["type"] for r in results} == {"abort"}
    assert all(r["meta_info"]["completion_tokens"] < LONG["max_new_tokens"] for r in results)
    assert_kv_back_to_idle(server.base_url)


def _read_native_stream_then_leave(base_url: str) -> None:
    body = {"text": "Tell me a long story.", "sampling_params": LONG, "stream": True}
    with requests.post(f"{base_url}/generate", json=body, stream=True, timeout=30) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        assert next(line for line in lines if line).startswith(b"data: {")


def _read_openai_stream_then_leave(base_url: str, model: str, route: str) -> None:
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="None", max_retries=0) as client:
        extra = {"ignore_eos": True}
        if route == "chat":
            stream = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "Go on."}],
                max_tokens=1500,
                extra_body=extra,
                stream=True,
            )
        else:
            stream = client.completions.create(
                model=model, prompt="Go on.", max_tokens=1500, extra_body=extra, stream=True
            )
        for i, _ in enumerate(stream):
            if i == 3:
                break
        stream.close()


@pytest.mark.parametrize("route", ["native", "chat", "completions"])
def test_client_leaving_a_stream_aborts_its_request_and_frees_its_kv(server, route):
    before = server_info(server.base_url)["num_generated_tokens"]
    if route == "native":
        _read_native_stream_then_leave(server.base_url)
    else:
        _read_openai_stream_then_leave(server.base_url, server.model_path, route)
    info = wait_until_idle(server.base_url)
    assert info["num_generated_tokens"] - before < LONG["max_new_tokens"]  # it did not run to its end
    assert_kv_back_to_idle(server.base_url)


def test_client_timing_out_a_non_streamed_request_aborts_it(server):
    # The tiny model decodes ~2,000 tokens a second with sglkit's CPU decode stack: the longest request its
    # context allows, and a client timeout well under the time it needs.
    longest = dict(LONG, max_new_tokens=2000)
    before = server_info(server.base_url)["num_generated_tokens"]
    with pytest.raises(requests.Timeout):
        requests.post(
            f"{server.base_url}/generate",
            json={"text": "Tell me a long story.", "sampling_params": longest},
            timeout=0.25,
        )
    info = wait_until_idle(server.base_url)
    assert info["num_generated_tokens"] - before < longest["max_new_tokens"]
    assert_kv_back_to_idle(server.base_url)
