"""Load generator of the serving benchmark (workload -> HTTP requests, SSE streams -> per-request timings).

An async HTTP client sends every prompt of a ``Workload`` to a running server (``/generate`` for ``sglang``,
``/v1/completions`` for ``sglang-oai``), streaming, greedy, ``ignore_eos``: Poisson arrivals at a request rate, at
most ``max_concurrency`` in flight. Per request it records TTFT (first token chunk), inter-token latencies,
end-to-end latency and output tokens as a ``RequestResult``; ``serving_metrics`` turns those into the report.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sglkit.bench.workloads import Workload

if TYPE_CHECKING:
    import httpx

BACKENDS = ("sglang", "sglang-oai")
"""The ``--backend`` choices: SGLang's native ``/generate`` or the OpenAI ``/v1/completions`` route."""

# Native stream chunks are JSON with SGLang's meta_info; a string value can't hold an unescaped quote, so this
# pattern only matches the real field (cheaper than decoding every chunk on a CPU the server needs too).
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens":\s*(\d+)')


@dataclass
class RequestResult:
    """What the client saw of one request (times in seconds)."""

    prompt_len: int
    success: bool = False
    latency: float = 0.0
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    output_len: int = 0
    error: str = ""


# ----------------------------------------------------------------------------- one request per backend
async def _sse_payloads(response):
    """The ``data:`` payloads of an SSE response (bytes), up to ``[DONE]``."""
    buffer = b""
    async for piece in response.aiter_bytes():
        buffer += piece
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                return
            yield data


class _TokenClock:
    """Turns "n tokens so far, t s after the send" into TTFT and inter-token gaps (k tokens in one chunk: k equal
    gaps)."""

    def __init__(self, result: RequestResult) -> None:
        self.result, self.last = result, 0.0

    def add(self, num_tokens: int, elapsed: float) -> None:
        """Record that ``num_tokens`` tokens have arrived ``elapsed`` s after the send."""
        r, new = self.result, num_tokens - self.result.output_len
        if new <= 0:
            return
        if r.output_len == 0:
            r.ttft = elapsed
        else:
            r.itl.extend([(elapsed - self.last) / new] * new)
        r.output_len, self.last = num_tokens, elapsed


async def _stream(
    client: httpx.AsyncClient, url: str, payload: dict, result: RequestResult, on_event
) -> RequestResult:
    """POST ``payload``; feed each SSE payload to ``on_event(data, elapsed_s)``, which returns an error text or None."""
    start = time.perf_counter()
    try:
        async with client.stream("POST", url, json=payload) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread()).decode()[:200]}"
                return result
            async for data in _sse_payloads(response):
                error = on_event(data, time.perf_counter() - start)
                if error:
                    result.error = error
                    return result
        result.latency = time.perf_counter() - start
        result.success = result.output_len > 0
        result.error = "" if result.success else "no tokens received"
    except Exception as e:  # noqa: BLE001 - a failed request is a result, not a crash
        result.error = f"{type(e).__name__}: {e}"
    return result


async def send_sglang(
    client: httpx.AsyncClient, base_url: str, prompt: list[int], output_len: int
) -> RequestResult:
    """POST /generate (input_ids, stream, greedy, ignore_eos); tokens counted from meta_info.completion_tokens."""
    result = RequestResult(prompt_len=len(prompt))
    clock = _TokenClock(result)

    def on_event(data: bytes, elapsed: float) -> str | None:
        match = _COMPLETION_TOKENS.search(data)
        if match is None:
            return _error_text(data)
        clock.add(int(match.group(1)), elapsed)
        return None

    payload = {
        "input_ids": prompt,
        "stream": True,
        "sampling_params": {"temperature": 0, "max_new_tokens": output_len, "ignore_eos": True},
    }
    return await _stream(client, f"{base_url}/generate", payload, result, on_event)


async def send_sglang_oai(
    client: httpx.AsyncClient, base_url: str, prompt: list[int], output_len: int
) -> RequestResult:
    """POST /v1/completions (token-id prompt, stream with usage); a chunk with text counts as one token, the
    final usage gives the output token count."""
    result = RequestResult(prompt_len=len(prompt))
    clock = _TokenClock(result)
    usage: dict = {}

    def on_event(data: bytes, elapsed: float) -> str | None:
        obj = json.loads(data)
        if "error" in obj:
            return _error_text(data)
        usage.update(obj.get("usage") or {})
        if any(c.get("text") for c in obj.get("choices") or ()):
            clock.add(result.output_len + 1, elapsed)
        return None

    payload = {
        "prompt": prompt,
        "max_tokens": output_len,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    await _stream(client, f"{base_url}/v1/completions", payload, result, on_event)
    if result.success and "completion_tokens" in usage:
        result.output_len = usage["completion_tokens"]
    return result


def _error_text(data: bytes) -> str:
    try:
        error = json.loads(data).get("error")
        return str(error.get("message", error)) if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        return data[:200].decode(errors="replace")


SENDERS = {"sglang": send_sglang, "sglang-oai": send_sglang_oai}
"""Backend name -> the coroutine that sends one request to it."""


# ----------------------------------------------------------------------------- the run
async def run_requests(
    base_url: str,
    backend: str,
    workload: Workload,
    request_rate: float = float("inf"),
    max_concurrency: int | None = None,
    seed: int = 0,
) -> tuple[list[RequestResult], float]:
    """Send every request (Poisson arrivals at ``request_rate``, at most ``max_concurrency`` in flight);
    returns the results in workload order and the benchmark duration (first send -> last answer)."""
    import httpx

    send = SENDERS[backend]
    num_conn = max_concurrency or len(workload.prompts)
    limits = httpx.Limits(max_connections=num_conn, max_keepalive_connections=num_conn)
    rng = random.Random(seed)
    semaphore = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    async with httpx.AsyncClient(timeout=httpx.Timeout(None), limits=limits, trust_env=False) as client:

        async def one(prompt: list[int], output_len: int) -> RequestResult:
            if semaphore is None:
                return await send(client, base_url, prompt, output_len)
            async with semaphore:
                return await send(client, base_url, prompt, output_len)

        await send(client, base_url, workload.prompts[0][:16], 4)  # warm up the connection and the server
        try:
            await client.post(f"{base_url}/flush_cache")
        except httpx.HTTPError:
            pass
        start = time.perf_counter()
        tasks = []
        for i, (prompt, output_len) in enumerate(zip(workload.prompts, workload.output_lens)):
            if i and request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(request_rate))  # Poisson process: exponential gaps
            tasks.append(asyncio.create_task(one(prompt, output_len)))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    return list(results), duration
