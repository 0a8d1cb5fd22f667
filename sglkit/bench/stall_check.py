"""Stall check: the requests that once stalled or bloated the server, each run while ``/health`` is polled.

    python -m sglkit.bench.stall_check
    python -m sglkit.bench.stall_check --url http://127.0.0.1:30000   # a running server (flood needs its limit)

Where it sits: this client -> HTTP -> a sglkit server (launched here unless ``--url``; always terminated).
Scenarios, one after the other, with a thread polling ``GET /health`` every 20 ms:

- ``max-batch``: one ``/generate`` carrying ``--max-inputs-per-request`` (2048) prompts: it completes;
- ``over-cap``: one ``/generate`` of 10,000 prompts: a 400 naming the limit;
- ``50MB-prompt``: one 50 MB prompt: a 400 in under a second;
- ``padding-kwargs``: ``chat_template_kwargs {"padding": "max_length", "max_length": 1e7}``: a 400;
- ``flood``: 200 concurrent clients over the queue limit: each gets its answer or a 503, none hangs (run on a
  second server launched with ``--max-queued-requests 32 --max-running-requests 32``, or on ``--flood-url``).

For each: the statuses, seconds, the /health latencies (max, p99; the goal is under 100 ms) and the growth of
the HTTP process's RSS. Exit status 1 when a request got a 5xx other than 503, hung, or a check failed.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests

from sglkit.bench.soak import launch, rss_mb, server_pid

HEALTH_POLL_S = 0.02
FLOOD_SERVER_ARGS = "--max-queued-requests 32 --max-running-requests 32"
CLIENT_TIMEOUT_S = 120.0


def _poll_health(url: str, stop, out) -> None:
    """The poller process: GET /health every HEALTH_POLL_S until ``stop`` is set; sends (latencies, failures)."""
    session = requests.Session()
    session.trust_env = False
    latencies, failures = [], 0
    while not stop.is_set():
        start = time.perf_counter()
        try:
            ok = session.get(f"{url}/health", timeout=30).status_code == 200
        except requests.RequestException:
            ok = False
        latencies.append(time.perf_counter() - start)
        failures += not ok
        time.sleep(HEALTH_POLL_S)
    out.send((latencies, failures))


class HealthPoller:
    """Polls ``/health`` from its own process (the load's client threads must not delay it) and records each
    answer's latency (s)."""

    def __init__(self, url: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._recv, send = ctx.Pipe(duplex=False)
        self._process = ctx.Process(target=_poll_health, args=(url, self._stop, send), daemon=True)
        self.latencies: list[float] = []
        self.failures = 0

    def __enter__(self) -> HealthPoller:
        self._process.start()
        time.sleep(1.0)  # the poller is up and polling before the load starts
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.latencies, self.failures = self._recv.recv()
        self._process.join()


def _post(url: str, body: dict | bytes) -> tuple[int | str, str]:
    try:
        if isinstance(body, bytes):
            resp = requests.post(
                url, data=body, headers={"Content-Type": "application/json"}, timeout=CLIENT_TIMEOUT_S
            )
        else:
            resp = requests.post(url, json=body, timeout=CLIENT_TIMEOUT_S)
        return resp.status_code, resp.text[:300]
    except requests.RequestException as e:
        return type(e).__name__, str(e)[:300]


def scenarios(url: str, max_inputs: int, model: str) -> dict[str, Callable[[], list[tuple[int | str, str]]]]:
    """Name -> a callable sending that scenario's request(s) and returning (status, body head) per request
    (all but ``flood``, which ``flood_scenario`` sends)."""
    generate = f"{url}/generate"
    few_tokens = {"max_new_tokens": 1}

    def max_batch():
        return [
            _post(generate, {"text": [f"n{i}" for i in range(max_inputs)], "sampling_params": few_tokens})
        ]

    def over_cap():
        return [_post(generate, {"text": [f"n{i}" for i in range(10_000)], "sampling_params": few_tokens})]

    def huge_prompt():
        text = "hello " * ((50 << 20) // 6)
        return [_post(generate, json.dumps({"text": text, "sampling_params": few_tokens}).encode())]

    def padding_kwargs():
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "hi"}],
            "chat_template_kwargs": {"padding": "max_length", "max_length": 10_000_000},
        }
        return [_post(f"{url}/v1/chat/completions", body)]

    return {
        "max-batch": max_batch,
        "over-cap": over_cap,
        "50MB-prompt": huge_prompt,
        "padding-kwargs": padding_kwargs,
    }


def flood_scenario(url: str) -> dict[str, Callable[[], list[tuple[int | str, str]]]]:
    """200 concurrent clients at once (for a server with a small --max-queued-requests)."""

    def flood():
        body = {"text": "Count to ten:", "sampling_params": {"max_new_tokens": 64, "ignore_eos": True}}
        with ThreadPoolExecutor(200) as pool:
            return list(pool.map(lambda _: _post(f"{url}/generate", body), range(200)))

    return {"flood": flood}


EXPECTED = {  # scenario -> statuses that pass
    "max-batch": {200},
    "over-cap": {400},
    "50MB-prompt": {400},
    "padding-kwargs": {400},
    "flood": {200, 503},
}


def run(
    url: str, pid: int | None, named: dict[str, Callable[[], list[tuple[int | str, str]]]]
) -> tuple[list[dict], list[str]]:
    """Run the ``named`` scenarios against ``url`` (HTTP process ``pid``); (one row per scenario, failures)."""
    rows, failures = [], []
    for name, send in named.items():
        rss_before = rss_mb(pid)["http"]
        with HealthPoller(url) as poller:
            start = time.perf_counter()
            answers = send()
            seconds = time.perf_counter() - start
        rss_after = rss_mb(pid)["http"]
        statuses = collections.Counter(status for status, _ in answers)
        lat = np.array(poller.latencies or [0.0]) * 1000
        row = {
            "scenario": name,
            "statuses": dict(statuses),
            "seconds": round(seconds, 2),
            "health_max_ms": round(float(lat.max()), 1),
            "health_p99_ms": round(float(np.percentile(lat, 99)), 1),
            "health_polls": len(poller.latencies),
            "health_failures": poller.failures,
            "http_rss_growth_mb": None if rss_before is None else round(rss_after - rss_before, 1),
        }
        rows.append(row)
        bad = set(statuses) - EXPECTED[name]
        if bad:
            sample = next(body for status, body in answers if status in bad)
            failures.append(f"{name}: unexpected statuses {sorted(map(str, bad))}: {sample}")
    return rows, failures


def format_rows(rows: list[dict]) -> str:
    """A fixed-width table of the rows."""
    head = f"{'scenario':<15}{'statuses':<26}{'s':>7}{'health max ms':>15}{'p99 ms':>9}{'RSS +MB':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        statuses = ", ".join(f"{k}x{v}" for k, v in sorted(r["statuses"].items(), key=str))
        lines.append(
            f"{r['scenario']:<15}{statuses:<26}{r['seconds']:>7}{r['health_max_ms']:>15}"
            f"{r['health_p99_ms']:>9}{str(r['http_rss_growth_mb']):>9}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Launch (or use) a server, run the scenarios, print the table; 1 on any failure."""
    p = argparse.ArgumentParser(prog="python -m sglkit.bench.stall_check", description=__doc__)
    p.add_argument("--url", default=None, help="A running server; without it one is launched here.")
    p.add_argument(
        "--model-path", default=None, help="Model of the launched server (default: the demo model)."
    )
    p.add_argument("--flood-url", default=None, help="A running server with a small queue limit, for flood.")
    p.add_argument("--max-inputs", type=int, default=2048, help="The server's --max-inputs-per-request.")
    args = p.parse_args(argv)
    rows, failures = [], []
    for url, server_args, named in (
        (args.url, "", lambda url, model: scenarios(url, args.max_inputs, model)),
        (args.flood_url, FLOOD_SERVER_ARGS, lambda url, model: flood_scenario(url)),
    ):
        process = None
        if url is None:
            launch_args = argparse.Namespace(
                model_path=args.model_path, max_total_tokens=16384, server_args=server_args
            )
            process, url = launch(launch_args)
        try:
            model = requests.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
            more_rows, more_failures = run(url, server_pid(url, process), named(url, model))
            rows += more_rows
            failures += more_failures
        finally:
            if process is not None:
                from sglkit.utils import terminate_process

                terminate_process(process)
    print(format_rows(rows))
    for failure in failures:
        print(f"FAIL {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
