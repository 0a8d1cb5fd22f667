"""Benchmarks: server start-up time, from launch to the first ``/health`` 200, with the log's timeline.

``python -m sglkit.bench.startup --rounds 3`` launches ``python -m sglkit.launch_server`` (what ``make serve``
runs; the built-in demo model unless ``--model-path``) ``--rounds`` times, one after the other, polls ``/health``
every 50 ms, stops the server's whole process tree, and prints each round's seconds to ready plus the time of
the log lines that mark the phases (weights, KV pool, uvicorn, the warm-up request). Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time

__all__ = ["MILESTONES", "main", "measure_once"]

MILESTONES = (
    "Load weight begin",
    "Load weight end",
    "KV Cache is allocated",
    "Uvicorn running",
    "The server is fired up and ready to roll!",
)


def measure_once(model_path: str | None = None, timeout: float = 120.0) -> dict:
    """One launch: ``ready_s`` (launch to ``/health`` 200, polled by ``sglkit.utils.wait_for_server`` every
    50 ms; None with ``error`` when it timed out or the server exited) and ``timeline`` [(seconds, line)]."""
    from sglkit.launch.ports import pick_free_port, unclaim_port
    from sglkit.launch.process import terminate_process
    from sglkit.utils import wait_for_server

    port = pick_free_port()
    cmd = [sys.executable, "-m", "sglkit.launch_server", "--port", str(port)]
    if model_path:
        cmd += ["--model-path", model_path]
    timeline: list[tuple[float, str]] = []
    start = time.perf_counter()
    process = subprocess.Popen(
        cmd,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )

    def read_log() -> None:
        for line in process.stdout:
            if any(mark in line for mark in MILESTONES):
                timeline.append((time.perf_counter() - start, line.rstrip()))

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    ready, error = None, None
    try:
        wait_for_server(f"http://127.0.0.1:{port}", timeout, process, poll_interval=0.05, print_note=False)
        ready = time.perf_counter() - start
    except (TimeoutError, RuntimeError) as e:  # not ready in time, or the server exited: the round's finding
        error = str(e).splitlines()[0]
    finally:
        terminate_process(process)
        reader.join(timeout=5)
        unclaim_port(port)
    return {"ready_s": ready, "error": error, "timeline": timeline, "returncode": process.returncode}


def main(argv: list[str] | None = None) -> list[dict]:
    """Entry point of ``python -m sglkit.bench.startup``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model-path", default=None, help="default: the built-in demo model")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    results = []
    for round_index in range(args.rounds):
        result = measure_once(args.model_path, args.timeout)
        results.append(result)
        print(f"round {round_index + 1}: ready in {result['ready_s']} s {result['error'] or ''}", flush=True)
        for seconds, line in result["timeline"]:
            print(f"  {seconds:6.2f} s  {line[:140]}")
    ready = [r["ready_s"] for r in results if r["ready_s"] is not None]
    if ready:
        print(
            f"ready: median {statistics.median(ready):.2f} s, min {min(ready):.2f} s, max {max(ready):.2f} s"
        )
    return results


if __name__ == "__main__":
    main()
