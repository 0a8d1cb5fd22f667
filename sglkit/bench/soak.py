"""Soak test: a server under a mixed, abusive load for N minutes must neither leak nor fail.

    python -m sglkit.bench.soak --minutes 30
    python -m sglkit.bench.soak --minutes 5 --url http://127.0.0.1:30000

Where it sits: this client (``sglkit.bench.soak_load``) -> HTTP -> a sglkit server. Without ``--url`` it launches
one (the demo model unless ``--model-path``) with a small KV pool (``--max-total-tokens``) so that running
requests get retracted, and always terminates it. 64 clients (``--clients``) send chat / completions /
/generate requests, streaming and not, with shared prompt prefixes, and abort some mid-stream.

It reports requests completed, errors by kind, p50/p99 latency, the RSS of the HTTP process and of the scheduler
processes at start / middle / end, and after the drain (nothing running or queued, then ``/flush_cache``): the KV
slots in use and held by the radix cache (both must be 0: the pool is full again), the HTTP process's request
registry (``request_registry`` of ``/get_server_info``: every count 0) and the retraction count. Exit status 1 on
any leak (KV slots, registry, RSS growth from middle to end over ``--max-rss-growth-mb``) or any 5xx, in-band
error or dropped connection; 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shlex
import sys
import time

import numpy as np

from sglkit.bench.soak_load import Outcome, run_clients

DRAIN_TIMEOUT_S = 120.0
FAILURE_KINDS = frozenset({"http_5xx", "stream_error", "transport", "empty"})
"""Outcome errors that fail the soak (4xx are reported: the mix only sends valid requests, so look at them)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line flags."""
    p = argparse.ArgumentParser(
        prog="python -m sglkit.bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--minutes", type=float, default=30.0, help="How long the clients send requests.")
    p.add_argument("--clients", type=int, default=64, help="Concurrent clients.")
    p.add_argument(
        "--url", default=None, help="A running server; without it one is launched (and stopped) here."
    )
    p.add_argument(
        "--model-path", default=None, help="Model of the launched server (default: the demo model)."
    )
    p.add_argument(
        "--max-total-tokens", type=int, default=2048, help="KV pool of the launched server (small)."
    )
    p.add_argument("--server-args", default="", help="More flags for the launched server (one string).")
    p.add_argument("--max-tokens", type=int, default=64, help="Most tokens a request generates.")
    p.add_argument(
        "--max-rss-growth-mb", type=float, default=256.0, help="RSS growth middle -> end that leaks."
    )
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- server side
def launch(args: argparse.Namespace):
    """Start a server for the soak; returns (process, url)."""
    from sglkit.bench.serving import launch_command

    model = f" --model-path {shlex.quote(args.model_path)}" if args.model_path else ""
    return launch_command(
        f"python -m sglkit.launch_server{model} --max-total-tokens {args.max_total_tokens} "
        f"--log-level warning {args.server_args}"
    )


def server_pid(url: str, process) -> int | None:
    """The HTTP process: the launched one, else whichever local process listens on the URL's port."""
    if process is not None:
        return process.pid
    import psutil

    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
                return conn.pid
    except psutil.Error:
        pass
    return None


def rss_mb(pid: int | None) -> dict[str, float | None]:
    """RSS (MiB) of the HTTP process and of its descendants (the scheduler side) together."""
    import psutil

    if pid is None:
        return {"http": None, "scheduler": None}
    try:
        root = psutil.Process(pid)
        http = root.memory_info().rss
        children = 0
        for child in root.children(recursive=True):
            try:
                children += child.memory_info().rss
            except psutil.Error:
                pass
    except psutil.Error:
        return {"http": None, "scheduler": None}
    return {"http": http / 2**20, "scheduler": children / 2**20}


async def server_info(client, url: str) -> dict:
    """``/get_server_info`` as a dict."""
    response = await client.get(f"{url}/get_server_info")
    response.raise_for_status()
    return response.json()


async def drain_and_flush(client, url: str) -> tuple[dict, bool]:
    """Wait until nothing runs, waits or is registered, flush the radix cache; (server info after, flushed)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    flushed = False
    while time.monotonic() < deadline:
        info = await server_info(client, url)
        registry = info.get("request_registry") or {}
        if (
            info.get("num_running_reqs") == 0
            and info.get("num_queue_reqs") == 0
            and not registry.get("in_flight")
        ):
            flushed = (await client.post(f"{url}/flush_cache")).status_code == 200
            if flushed:
                break
        await asyncio.sleep(0.5)
    await asyncio.sleep(0.5)
    return await server_info(client, url), flushed


# ----------------------------------------------------------------------------- report
def summarize(outcomes: list[Outcome], seconds: float) -> dict:
    """Counts, errors by kind and latency percentiles of the completed requests."""
    completed = [o for o in outcomes if not o.error]
    errors = collections.Counter(o.error for o in outcomes if o.error and o.error != "aborted")
    latencies = np.array([o.latency for o in completed]) * 1000 if completed else np.zeros(1)
    first = {}
    for o in outcomes:
        if o.error and o.error != "aborted":
            first.setdefault(o.error, f"{o.kind}: {o.status} {o.detail}")
    return {
        "requests": len(outcomes),
        "completed": len(completed),
        "aborted": sum(o.error == "aborted" for o in outcomes),
        "errors": dict(errors),
        "first_errors": first,
        "p50_latency_ms": float(np.percentile(latencies, 50)),
        "p99_latency_ms": float(np.percentile(latencies, 99)),
        "requests_per_s": len(outcomes) / max(seconds, 1e-9),
    }


def leaks(final: dict, flushed: bool, rss: dict, max_growth_mb: float) -> list[str]:
    """What did not come back after the drain (empty: nothing leaked)."""
    found = []
    if not flushed:
        found.append("the radix cache could not be flushed (requests still running or queued)")
    for key in ("num_used_tokens", "num_cached_tokens", "num_running_reqs", "num_queue_reqs"):
        if final.get(key):
            found.append(
                f"{key}={final[key]} after drain and flush (pool {final.get('max_total_num_tokens')})"
            )
    for key, value in (final.get("request_registry") or {}).items():
        if isinstance(value, int) and value:
            found.append(f"request_registry.{key}={value} after drain")
    for proc in ("http", "scheduler"):
        middle, end = rss["middle"][proc], rss["end"][proc]
        if middle is not None and end is not None and end - middle > max_growth_mb:
            found.append(f"{proc} RSS grew {end - middle:.0f} MiB from middle to end (> {max_growth_mb:g})")
    return found


def format_report(summary: dict, rss: dict, final: dict, found: list[str]) -> str:
    """The printed report."""

    def mb(value) -> str:
        return "n/a" if value is None else f"{value:.0f}"

    lines = ["=" * 20 + " Soak Result " + "=" * 20]
    lines.append(f"Requests: {summary['requests']} ({summary['requests_per_s']:.1f}/s)")
    lines.append(f"Completed: {summary['completed']}  Aborted (planned): {summary['aborted']}")
    lines.append(f"Errors by kind: {summary['errors'] or 'none'}")
    for kind, text in summary["first_errors"].items():
        lines.append(f"  first {kind}: {text}")
    lines.append(f"Latency p50 / p99 (ms): {summary['p50_latency_ms']:.0f} / {summary['p99_latency_ms']:.0f}")
    for proc in ("http", "scheduler"):
        points = " / ".join(mb(rss[when][proc]) for when in ("start", "middle", "end"))
        lines.append(f"RSS {proc} start / middle / end (MiB): {points}")
    registry = final.get("request_registry")
    lines.append(f"After drain + flush: KV slots used {final.get('num_used_tokens')}, cached ")
    lines[-1] += f"{final.get('num_cached_tokens')}, pool {final.get('max_total_num_tokens')}"
    lines.append(f"Request registry: {registry if registry is not None else 'absent from /get_server_info'}")
    lines.append(f"Retractions: {final.get('num_retracted_reqs', 'n/a')}")
    lines.append("Leaks: " + ("; ".join(found) if found else "none"))
    return "\n".join(lines)


async def soak(args: argparse.Namespace, url: str, pid: int | None) -> int:
    """Run the load, take the snapshots, drain, report; the exit status."""
    import httpx

    seconds = args.minutes * 60
    rss: dict = {"start": rss_mb(pid)}

    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:

        async def on_tick(elapsed: float) -> None:
            if "middle" not in rss and elapsed >= seconds / 2:
                rss["middle"] = rss_mb(pid)
                info = await server_info(client, url)
                print(
                    f"[{elapsed:.0f} s] middle: RSS {rss['middle']}, retractions {info.get('num_retracted_reqs')}"
                )

        start = time.monotonic()
        outcomes = await run_clients(url, args.clients, seconds, args.max_tokens, args.seed, on_tick=on_tick)
        elapsed = time.monotonic() - start
        rss.setdefault("middle", rss["start"])
        final, flushed = await drain_and_flush(client, url)
        rss["end"] = rss_mb(pid)
    summary = summarize(outcomes, elapsed)
    found = leaks(final, flushed, rss, args.max_rss_growth_mb)
    print(format_report(summary, rss, final, found), flush=True)
    failed = sum(summary["errors"].get(kind, 0) for kind in FAILURE_KINDS)
    return 1 if found or failed or not summary["completed"] else 0


def main(argv: list[str] | None = None) -> int:
    """Launch (or reach) the server, soak it, stop what was launched; the exit status."""
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sglkit.utils import terminate_process

    process, url = (None, args.url.rstrip("/")) if args.url else launch(args)
    try:
        print(f"Soaking {url} with {args.clients} clients for {args.minutes:g} min", flush=True)
        return asyncio.run(soak(args, url, server_pid(url, process)))
    finally:
        terminate_process(process)


__all__ = ["main", "parse_args", "summarize", "leaks"]

if __name__ == "__main__":
    sys.exit(main())
