"""Online serving benchmark (SGLang's ``bench_serving``): an async HTTP client streams a workload through a server.

    python -m sglkit.bench_serving --num-prompts 128 --max-concurrency 64 --random-input-len 128 \
        --random-output-len 128 --random-range-ratio 1 --compare-offline
    python -m sglkit.bench_serving --base-url http://127.0.0.1:30000 --backend sglang-oai --request-rate 4

Where it sits: this client -> HTTP (``/generate`` or ``/v1/completions``, SSE) -> a running sglkit/SGLang server.
Without ``--base-url`` a server is launched with ``--model-path`` (default: a ~20M Llama made by sglkit.testing)
and always terminated. Per request it records TTFT (first token chunk), inter-token latencies, end-to-end latency
and output tokens, then prints SGLang's result block. ``--compare-offline`` then runs the same prompts through
``sglkit.Engine`` in this process (after the server is gone) and prints the ratio server / offline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from sglkit.bench.workloads import random_prompts

BACKENDS = ("sglang", "sglang-oai")
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


@dataclass
class Workload:
    """Prompts (token ids) with the number of tokens each request must generate."""

    prompts: list[list[int]]
    output_lens: list[int]


def make_workload(
    num_prompts: int,
    input_len: int,
    output_len: int,
    range_ratio: float,
    vocab_size: int,
    seed: int = 0,
    reserved_ids: set[int] | None = None,
) -> Workload:
    """Random prompts and output lengths, both uniform in [range_ratio * len, len]."""
    prompts = random_prompts(num_prompts, input_len, vocab_size, seed, range_ratio, reserved_ids)
    rng = random.Random(seed + 1)
    low = max(1, int(output_len * range_ratio))
    return Workload(prompts, [rng.randint(low, output_len) for _ in range(num_prompts)])


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
        r, new = self.result, num_tokens - self.result.output_len
        if new <= 0:
            return
        if r.output_len == 0:
            r.ttft = elapsed
        else:
            r.itl.extend([(elapsed - self.last) / new] * new)
        r.output_len, self.last = num_tokens, elapsed


async def _stream(client, url: str, payload: dict, result: RequestResult, on_event) -> RequestResult:
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


async def send_sglang(client, base_url: str, prompt: list[int], output_len: int) -> RequestResult:
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


async def send_sglang_oai(client, base_url: str, prompt: list[int], output_len: int) -> RequestResult:
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


def compute_metrics(results: list[RequestResult], duration: float) -> dict:
    """SGLang's bench_serving figures (latencies in ms) from the per-request results."""
    ok = [r for r in results if r.success]
    input_tokens = sum(r.prompt_len for r in ok)
    output_tokens = sum(r.output_len for r in ok)
    tpots = [(r.latency - r.ttft) / (r.output_len - 1) for r in ok if r.output_len > 1]
    itls = [gap for r in ok for gap in r.itl]
    duration = max(duration, 1e-9)
    metrics = {
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "duration": duration,
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "request_throughput": len(ok) / duration,
        "input_throughput": input_tokens / duration,
        "output_throughput": output_tokens / duration,
        "total_throughput": (input_tokens + output_tokens) / duration,
        "concurrency": sum(r.latency for r in ok) / duration,
    }
    for name, values in (
        ("e2e_latency", [r.latency for r in ok]),
        ("ttft", [r.ttft for r in ok]),
        ("tpot", tpots),
        ("itl", itls),
    ):
        ms = np.array(values or [0.0]) * 1000
        metrics.update(
            {
                f"mean_{name}_ms": float(ms.mean()),
                f"median_{name}_ms": float(np.median(ms)),
                f"p99_{name}_ms": float(np.percentile(ms, 99)),
            }
        )
    return metrics


def format_metrics(metrics: dict, backend: str, request_rate: float, max_concurrency: int | None) -> str:
    """The result block, laid out like SGLang's bench_serving."""
    lines = [f"{' Serving Benchmark Result ':=^50}"]

    def row(label: str, value) -> None:
        text = f"{value:.2f}" if isinstance(value, float) else str(value)
        lines.append(f"{label:<40} {text:<10}")

    row("Backend:", backend)
    row("Traffic request rate:", request_rate)
    row("Max request concurrency:", max_concurrency if max_concurrency else "not set")
    row("Successful requests:", metrics["completed"])
    row("Benchmark duration (s):", metrics["duration"])
    row("Total input tokens:", metrics["total_input_tokens"])
    row("Total generated tokens:", metrics["total_output_tokens"])
    row("Request throughput (req/s):", metrics["request_throughput"])
    row("Input token throughput (tok/s):", metrics["input_throughput"])
    row("Output token throughput (tok/s):", metrics["output_throughput"])
    row("Total token throughput (tok/s):", metrics["total_throughput"])
    row("Concurrency:", metrics["concurrency"])
    sections = (
        ("End-to-End Latency", "e2e_latency", "E2E Latency"),
        ("Time to First Token", "ttft", "TTFT"),
        ("Time per Output Token (excl. 1st token)", "tpot", "TPOT"),
        ("Inter-Token Latency", "itl", "ITL"),
    )
    for title, key, label in sections:
        lines.append(f"{title:-^50}")
        for stat in ("mean", "median", "p99"):
            row(f"{stat.capitalize() if stat != 'p99' else 'P99'} {label} (ms):", metrics[f"{stat}_{key}_ms"])
    lines.append("=" * 50)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- offline comparison
def run_offline(model_path: str, workload: Workload, engine_kwargs: dict) -> dict:
    """The same requests through ``sglkit.Engine`` in this process (after a small warmup)."""
    import sglkit

    with sglkit.Engine(model_path=model_path, random_seed=0, **engine_kwargs) as llm:
        llm.generate(
            input_ids=workload.prompts[0][:16], sampling_params={"max_new_tokens": 4, "temperature": 0}
        )
        llm.flush_cache()
        params = [{"temperature": 0, "max_new_tokens": n, "ignore_eos": True} for n in workload.output_lens]
        start = time.perf_counter()
        outs = llm.generate(input_ids=workload.prompts, sampling_params=params)
        elapsed = time.perf_counter() - start
    output_tokens = sum(len(o["output_ids"]) for o in outs)
    return {
        "duration": elapsed,
        "total_output_tokens": output_tokens,
        "output_throughput": output_tokens / elapsed,
    }


# ----------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line flags (SGLang's names)."""
    p = argparse.ArgumentParser(
        prog="python -m sglkit.bench_serving",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--backend", choices=BACKENDS, default="sglang")
    p.add_argument("--base-url", default=None, help="A running server; without it one is launched here.")
    p.add_argument(
        "--model-path",
        default=None,
        help="Model to serve (and for the workload's vocabulary); "
        "default: a ~20M Llama made by sglkit.testing.",
    )
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--random-input-len", type=int, default=128)
    p.add_argument("--random-output-len", type=int, default=128)
    p.add_argument(
        "--random-range-ratio",
        type=float,
        default=0.0,
        help="Lengths uniform in [ratio * len, len] (SGLang's default 0.0; pass it explicitly).",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--request-rate", type=float, default=float("inf"), help="Requests/s (Poisson); inf = all at once."
    )
    p.add_argument("--max-concurrency", type=int, default=None, help="Most requests in flight.")
    p.add_argument("--output-file", default=None, help="Append the metrics as one JSON line to this file.")
    p.add_argument(
        "--compare-offline",
        action="store_true",
        help="Then run the same prompts through sglkit.Engine here (at most --max-concurrency running) "
        "and print server / offline.",
    )
    p.add_argument(
        "--max-total-tokens", type=int, default=None, help="KV pool size (launched server and offline)."
    )
    p.add_argument("--max-running-requests", type=int, default=None)
    p.add_argument("--chunked-prefill-size", type=int, default=None)
    p.add_argument("--disable-radix-cache", action="store_true")
    return p.parse_args(argv)


def engine_kwargs_of(args: argparse.Namespace) -> dict:
    """The server-side settings given on the command line (used by the launched server and the offline run)."""
    kwargs = {
        "max_total_tokens": args.max_total_tokens,
        "max_running_requests": args.max_running_requests,
        "chunked_prefill_size": args.chunked_prefill_size,
        "disable_radix_cache": args.disable_radix_cache,
    }
    return {k: v for k, v in kwargs.items() if v not in (None, False)}


def offline_engine_kwargs(args: argparse.Namespace, engine_kwargs: dict) -> dict:
    """Engine settings of the offline run: the server's, with at most ``--max-concurrency`` requests running, so
    both sides decode batches of the same size (more running requests is a bigger batch, not less overhead)."""
    cap = engine_kwargs.get("max_running_requests")
    if args.max_concurrency and (cap is None or args.max_concurrency < cap):
        cap = args.max_concurrency
    return {**engine_kwargs, "max_running_requests": cap} if cap else dict(engine_kwargs)


def launch_server(model_path: str, engine_kwargs: dict):
    """Start ``sglkit.launch_server`` on a free port and wait until it can generate; returns (process, url)."""
    from sglkit.utils import launch_server_cmd, terminate_process, wait_for_server

    flags = "".join(
        f" --{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in engine_kwargs.items()
    )
    command = (
        f"python -m sglkit.launch_server --model-path {shlex.quote(model_path)} --log-level warning{flags}"
    )
    process, port = launch_server_cmd(command, echo=False)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(url, timeout=600, process=process, print_note=False)
    except BaseException:
        terminate_process(process)
        raise
    return process, url


def server_model_path(base_url: str) -> str:
    """The model path a running server reports (/get_model_info)."""
    import httpx

    return httpx.get(f"{base_url}/get_model_info", timeout=30, trust_env=False).json()["model_path"]


def load_workload(args: argparse.Namespace, model_path: str) -> Workload:
    """The run's workload, drawn from the model's vocabulary minus its special tokens."""
    from transformers import AutoConfig, AutoTokenizer

    vocab_size = AutoConfig.from_pretrained(model_path).vocab_size
    reserved = set(AutoTokenizer.from_pretrained(model_path).all_special_ids)
    return make_workload(
        args.num_prompts,
        args.random_input_len,
        args.random_output_len,
        args.random_range_ratio,
        vocab_size,
        args.seed,
        reserved,
    )


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print SGLang's result block (and the offline comparison); return the metrics."""
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sglkit.utils import terminate_process

    tmp_dir = model_path = None
    process, base_url = None, args.base_url.rstrip("/") if args.base_url else None
    engine_kwargs = engine_kwargs_of(args)
    try:
        model_path = args.model_path
        if model_path is None and base_url is None:
            from sglkit.testing import make_tiny_model

            tmp_dir = tempfile.mkdtemp(prefix="sglkit-bench-")
            model_path = str(make_tiny_model(os.path.join(tmp_dir, "small-llama"), preset="small"))
        if base_url is None:
            process, base_url = launch_server(model_path, engine_kwargs)
        model_path = model_path or server_model_path(base_url)
        workload = load_workload(args, model_path)
        print(
            f"#Input tokens: {sum(map(len, workload.prompts))} | #Output tokens: {sum(workload.output_lens)} | "
            f"server: {base_url}",
            flush=True,
        )
        results, duration = asyncio.run(
            run_requests(base_url, args.backend, workload, args.request_rate, args.max_concurrency, args.seed)
        )
        terminate_process(process)  # before the offline run: each side gets the whole machine
        process = None
        failed = [r for r in results if not r.success]
        if failed:
            print(f"{len(failed)} request(s) failed; first error: {failed[0].error}")
        metrics = compute_metrics(results, duration)
        print(format_metrics(metrics, args.backend, args.request_rate, args.max_concurrency), flush=True)
        if args.compare_offline:
            if args.base_url:
                print(
                    "Note: the server at --base-url keeps running during the offline run and shares the machine."
                )
            offline_kwargs = offline_engine_kwargs(args, engine_kwargs)
            offline = run_offline(model_path, workload, offline_kwargs)
            ratio = metrics["output_throughput"] / offline["output_throughput"]
            print(f"Output token throughput, server  (tok/s): {metrics['output_throughput']:.2f}")
            cap = offline_kwargs.get("max_running_requests")
            print(
                f"Output token throughput, offline (tok/s): {offline['output_throughput']:.2f}"
                + (f" (max_running_requests={cap})" if cap else "")
            )
            print(f"Throughput ratio server / offline:        {ratio:.3f}")
            metrics.update(offline_output_throughput=offline["output_throughput"], server_offline_ratio=ratio)
    finally:
        terminate_process(process)
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    if args.output_file:
        record = {
            "backend": args.backend,
            "model_path": model_path,
            "num_prompts": args.num_prompts,
            "random_input_len": args.random_input_len,
            "random_output_len": args.random_output_len,
            "random_range_ratio": args.random_range_ratio,
            "request_rate": args.request_rate if args.request_rate != float("inf") else "inf",
            "max_concurrency": args.max_concurrency,
            **metrics,
        }
        with open(args.output_file, "a") as f:
            f.write(json.dumps(record) + "\n")
    return metrics


__all__ = [
    "RequestResult",
    "Workload",
    "compute_metrics",
    "format_metrics",
    "main",
    "make_workload",
    "run_offline",
    "run_requests",
    "send_sglang",
    "send_sglang_oai",
]

if __name__ == "__main__":
    main()
