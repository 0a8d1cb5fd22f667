"""Benchmark peers, worker side: the job/figures protocol and the timing loop every peer's worker shares.

A worker is started by ``sglkit.bench.peers.runner`` in its peer's own Python (a side virtualenv), reads one
JSON job on stdin, and prints one JSON line of figures on stdout (``FIGURES_PREFIX`` + JSON, so a library's own
prints cannot be mistaken for it). This file imports only the standard library: the workers run it as a
top-level module (``PYTHONPATH`` = this folder) where sglkit is not installed.

Job fields (all sides get the same token ids):
    model, gguf (llama.cpp only), dtype ("bfloat16" | "float32"), threads, seed,
    prompts (list of token-id lists), output_len, decode_prompt, decode_len, ttft_prompt, ttft_repeats,
    max_batch, figures (subset of "decode", "batch", "ttft", "static"; default the first three).
Figures: decode_tok_s (batch-1 decode: (decode_len - 1) / (t(decode_len) - t(1))), batch_output_tok_s,
batch_elapsed_s, batch_output_tokens, ttft_s (median over repeats of a 1-token generate of ttft_prompt),
load_s, peak_rss_mb (ru_maxrss of the worker plus its largest waited-for child), outputs (the batch's ids);
"static" (bench_one_batch): prefill_latency / prefill_throughput of generate(prompts, 1) and decode_throughput =
len(prompts) * (output_len - 1) / (t(output_len) - t(1)); a decode figure is left out when t(N) <= t(1).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable

FIGURES_PREFIX = "SGLKIT_PEER_FIGURES "
EXIT_UNAVAILABLE = 2  # the peer library cannot be imported / loaded here
FIGURE_NAMES = ("decode", "batch", "ttft", "static")

# generate(prompts, max_tokens) -> one list of greedy output ids per prompt (exactly max_tokens each).
Generate = Callable[[list[list[int]], int], list[list[int]]]


def read_job(stream=None) -> dict:
    """The JSON job from ``stream`` (stdin by default), with defaults filled in and basic checks."""
    job = json.loads((stream or sys.stdin).read())
    if not isinstance(job, dict) or "model" not in job:
        raise ValueError("a job is a JSON object with at least 'model'")
    job.setdefault("dtype", "bfloat16")
    job.setdefault("threads", 2)
    job.setdefault("seed", 0)
    job.setdefault("prompts", [])
    job.setdefault("output_len", 16)
    job.setdefault("decode_prompt", (job["prompts"] or [[1]])[0])
    job.setdefault("decode_len", job["output_len"])
    job.setdefault("ttft_prompt", job["decode_prompt"])
    job.setdefault("ttft_repeats", 3)
    job.setdefault("max_batch", max(1, len(job["prompts"])))
    job.setdefault("figures", list(FIGURE_NAMES[:3]))
    unknown = set(job["figures"]) - set(FIGURE_NAMES)
    if unknown:
        raise ValueError(f"unknown figures {sorted(unknown)}; known: {FIGURE_NAMES}")
    return job


def peak_rss_mb() -> float:
    """Peak resident set of this process plus the largest of its waited-for children, in MiB (Linux: KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024


def _timed(generate: Generate, prompts: list[list[int]], max_tokens: int) -> tuple[list[list[int]], float]:
    start = time.perf_counter()
    outputs = generate(prompts, max_tokens)
    return outputs, time.perf_counter() - start


def measure(job: dict, generate: Generate) -> dict:
    """Warm up, then the figures ``job['figures']`` asks for, timed around ``generate`` alone."""
    figures: dict = {}
    warm = job["decode_prompt"][:16] or [1]
    generate([warm], 4)
    if "decode" in job["figures"]:
        n = job["decode_len"]
        _, one = _timed(generate, [job["decode_prompt"]], 1)
        outs, full = _timed(generate, [job["decode_prompt"]], n)
        if full > one:  # else the machine's noise exceeded the decode time: no figure rather than a wild one
            figures["decode_tok_s"] = (n - 1) / (full - one)
        figures["decode_outputs"] = outs[0]
    if "batch" in job["figures"] and job["prompts"]:
        outs, elapsed = _timed(generate, job["prompts"], job["output_len"])
        tokens = sum(len(o) for o in outs)
        figures.update(
            batch_elapsed_s=elapsed, batch_output_tokens=tokens, batch_output_tok_s=tokens / elapsed
        )
        figures["outputs"] = outs
    if "ttft" in job["figures"]:
        times = [_timed(generate, [job["ttft_prompt"]], 1)[1] for _ in range(max(1, job["ttft_repeats"]))]
        figures["ttft_s"] = statistics.median(times)
    if "static" in job["figures"] and job["prompts"]:
        n, prompts = job["output_len"], job["prompts"]
        _, one = _timed(generate, prompts, 1)
        outs, full = _timed(generate, prompts, n)
        figures.update(prefill_latency=one, prefill_throughput=sum(len(p) for p in prompts) / one)
        figures["outputs"] = outs
        if full > one:
            figures["decode_throughput"] = len(prompts) * (n - 1) / (full - one)
    return figures


def emit(figures: dict, stream=None) -> None:
    """Print the figures line the runner looks for."""
    out = stream or sys.stdout
    out.write(FIGURES_PREFIX + json.dumps(figures) + "\n")
    out.flush()


def main(peer: str, load: Callable[[dict], tuple[Generate, str]], argv: list[str] | None = None) -> int:
    """A worker's whole life: read the job, ``load(job) -> (generate, version)``, measure, emit; the exit code.

    ``--check`` only reads and validates the job and echoes it back (no peer library needed). A load that
    raises ImportError emits ``{"error": "not available: ..."}`` and returns ``EXIT_UNAVAILABLE``.
    """
    argv = sys.argv[1:] if argv is None else argv
    try:
        job = read_job()
    except (ValueError, json.JSONDecodeError) as exc:
        emit({"peer": peer, "error": f"bad job: {exc}"})
        return 1
    if "--check" in argv:
        emit({"peer": peer, "job": job})
        return 0
    start = time.perf_counter()
    try:
        generate, version = load(job)
    except ImportError as exc:
        emit({"peer": peer, "error": f"not available: {exc}"})
        return EXIT_UNAVAILABLE
    except Exception as exc:  # noqa: BLE001 - any load failure is one line; the traceback goes to stderr
        traceback.print_exc()
        emit({"peer": peer, "error": f"load failed: {type(exc).__name__}: {exc}"})
        return 1
    figures = {"peer": peer, "version": version, "load_s": time.perf_counter() - start}
    try:
        figures.update(measure(job, generate))
    except Exception as exc:  # noqa: BLE001 - a failed run still reports its figures so far
        traceback.print_exc()
        figures["error"] = f"run failed: {type(exc).__name__}: {exc}"
    figures["peak_rss_mb"] = peak_rss_mb()
    figures["pid"] = os.getpid()
    emit(figures)
    return 0 if "error" not in figures else 1
