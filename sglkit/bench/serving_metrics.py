"""Report of the serving benchmark (``serving_client``'s per-request results -> SGLang's figures -> printed block).

``compute_metrics`` reduces the ``RequestResult`` list to SGLang's ``bench_serving`` figures (throughputs, and mean,
median and P99 of end-to-end latency, TTFT, TPOT and ITL in ms); ``format_metrics`` lays them out as SGLang's
"Serving Benchmark Result" block.
"""

from __future__ import annotations

import numpy as np

from sglkit.bench.serving_client import RequestResult


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
