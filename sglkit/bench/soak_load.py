"""The soak test's load mix (``sglkit.bench.soak``): concurrent clients sending SGLang's and OpenAI's requests.

Each client loops until the deadline, drawing a request kind from ``KINDS``: chat, completions and /generate,
streaming and not, plus two kinds of abort (a stream dropped after its first chunk, a plain request given up
after a short wait). Prompts start with one of a few shared prefixes (the radix cache is exercised) and end
with a per-request suffix; output lengths vary. Every request becomes one ``Outcome``: its kind, its latency and
what went wrong if anything (``error`` is the kind of failure: ``http_4xx``, ``http_5xx``, ``stream_error``,
``transport``, ``empty``; an abort that went as planned is ``aborted`` and not a failure).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

KINDS = (
    "chat",
    "chat_stream",
    "completions",
    "completions_stream",
    "generate",
    "generate_stream",
    "abort_stream",
    "abort_plain",
)
"""The request kinds of the mix (drawn uniformly)."""

SHARED_PREFIXES = tuple(
    f"You are assistant number {i}. Answer briefly and politely. " * 6 + "Here is the question. "
    for i in range(4)
)
"""Prompt prefixes shared by many requests (about 100 tokens each for the demo model)."""


@dataclass
class Outcome:
    """What one request ended as (``error`` empty: completed; ``aborted``: the planned disconnect)."""

    kind: str
    latency: float
    error: str = ""
    status: int = 200
    detail: str = ""


def request_for(kind: str, rng: random.Random, max_new_tokens: int, model: str) -> tuple[str, dict]:
    """(route, JSON body) for a request of ``kind``; prompts share a prefix, lengths and sampling vary."""
    text = rng.choice(SHARED_PREFIXES) + f"Question {rng.randrange(10**6)}: what is {rng.randrange(100)} + 1?"
    tokens = rng.randint(max(1, max_new_tokens // 8), max_new_tokens)
    temperature = rng.choice((0.0, 0.7))
    stream = kind.endswith("_stream")
    if kind.startswith("chat"):
        messages = [{"role": "user", "content": text}]
        body = {"model": model, "messages": messages, "max_tokens": tokens, "temperature": temperature}
        return "/v1/chat/completions", {**body, "stream": stream, "ignore_eos": rng.random() < 0.5}
    if kind.startswith("completions"):
        body = {"model": model, "prompt": text, "max_tokens": tokens, "temperature": temperature}
        return "/v1/completions", {**body, "stream": stream, "ignore_eos": rng.random() < 0.5}
    params = {"max_new_tokens": tokens, "temperature": temperature, "ignore_eos": rng.random() < 0.5}
    return "/generate", {"text": text, "sampling_params": params, "stream": kind != "generate"}


def _in_band_error(line: bytes) -> str | None:
    """The error message of an SSE error event, or None."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    error = obj.get("error") if isinstance(obj, dict) else None
    if error is None:
        return None
    code = error.get("code") if isinstance(error, dict) else None
    return f"{code}: {error.get('message', error) if isinstance(error, dict) else error}"


async def _streamed(client: httpx.AsyncClient, url: str, body: dict, abort: bool) -> tuple[int, str, str]:
    """POST a streaming request; (status, error kind, detail). ``abort``: hang up after the first chunk."""
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            return (
                response.status_code,
                _http_kind(response.status_code),
                (await response.aread()).decode()[:200],
            )
        chunks = 0
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            error = _in_band_error(data.encode())
            if error is not None:
                return 200, "stream_error", error[:200]
            chunks += 1
            if abort:
                return 200, "aborted", ""  # leaving the block closes the connection mid-stream
        return 200, "" if chunks else "empty", ""


def _http_kind(status: int) -> str:
    return "http_5xx" if status >= 500 else "http_4xx"


async def send_one(
    client: httpx.AsyncClient, base_url: str, kind: str, rng: random.Random, max_tokens: int, model: str
) -> Outcome:
    """Send one request of ``kind`` and classify how it ended (never raises but on cancellation)."""
    import httpx

    route, body = request_for(kind, rng, max_tokens, model)
    url = base_url + route
    start = time.perf_counter()
    status, error, detail = 200, "", ""
    try:
        if kind == "abort_plain":
            try:  # give up after a short wait: the client disconnects while the server generates
                await asyncio.wait_for(
                    client.post(url, json={**body, "stream": False}), rng.uniform(0.05, 0.5)
                )
            except asyncio.TimeoutError:
                pass
            error = "aborted"
        elif kind.endswith("_stream"):
            status, error, detail = await _streamed(client, url, body, abort=kind == "abort_stream")
        else:
            response = await client.post(url, json=body)
            status = response.status_code
            if status != 200:
                error, detail = _http_kind(status), response.text[:200]
    except httpx.HTTPError as e:
        status, error, detail = 0, "transport", f"{type(e).__name__}: {e}"[:200]
    return Outcome(kind, time.perf_counter() - start, error, status, detail)


async def run_clients(
    base_url: str,
    num_clients: int,
    seconds: float,
    max_tokens: int = 64,
    seed: int = 0,
    model: str = "default",
    on_tick=None,
) -> list[Outcome]:
    """``num_clients`` clients send requests back to back for ``seconds``; every request's ``Outcome``.

    ``on_tick(elapsed_s)`` (optional, async) is awaited about once a second while the clients run (the soak takes
    its mid-run snapshot there).
    """
    import httpx

    outcomes: list[Outcome] = []
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=num_clients + 4, max_keepalive_connections=num_clients + 4)

    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), limits=limits, trust_env=False) as client:

        async def client_loop(index: int) -> None:
            rng = random.Random(seed * 1000 + index)
            while time.monotonic() < deadline:
                outcomes.append(await send_one(client, base_url, rng.choice(KINDS), rng, max_tokens, model))

        tasks = [asyncio.create_task(client_loop(i)) for i in range(num_clients)]
        start = time.monotonic()
        while not all(t.done() for t in tasks):
            await asyncio.wait(tasks, timeout=1.0)
            if on_tick is not None:
                await on_tick(time.monotonic() - start)
        for task in tasks:
            task.result()  # a bug in the client itself surfaces here
    return outcomes
