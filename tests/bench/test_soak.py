"""``python -m sglkit.bench.soak``: a short real run (its own server, a small KV pool, 8 clients for 18 s), and the
leak verdict on made-up snapshots."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from sglkit.bench.soak import leaks, summarize
from sglkit.bench.soak_load import KINDS, SHARED_PREFIXES, Outcome, request_for

CLEAN = {"num_used_tokens": 0, "num_cached_tokens": 0, "num_running_reqs": 0, "num_queue_reqs": 0}
FLAT_RSS = {when: {"http": 300.0, "scheduler": 400.0} for when in ("start", "middle", "end")}


def test_soak_cli_short_run_is_clean():
    """A 0.3-minute soak against the demo model: requests complete, nothing leaks, exit status 0."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "sglkit.bench.soak",
        "--minutes",
        "0.3",
        "--clients",
        "8",
        "--max-tokens",
        "16",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr[-3000:]
    completed = int(re.search(r"^Completed: (\d+)", out, re.M).group(1))
    assert completed > 0
    assert "Errors by kind: none" in out
    assert re.search(r"^After drain \+ flush: KV slots used 0, cached 0, pool 2048$", out, re.M)
    assert re.search(r"^Request registry: \{'in_flight': 0, ", out, re.M), out
    assert re.search(r"^RSS scheduler start / middle / end \(MiB\): \d+ / \d+ / \d+$", out, re.M)
    assert re.search(r"^Retractions: \d+$", out, re.M)
    assert "Leaks: none" in out


def test_leaks_names_what_did_not_come_back():
    assert leaks({**CLEAN, "request_registry": {"in_flight": 0}}, True, FLAT_RSS, 256) == []
    found = leaks(
        {**CLEAN, "num_used_tokens": 12, "request_registry": {"registered_rids": 3}},
        False,
        {**FLAT_RSS, "end": {"http": 900.0, "scheduler": 400.0}},
        256,
    )
    assert len(found) == 4
    assert any("num_used_tokens=12" in f for f in found)
    assert any("request_registry.registered_rids=3" in f for f in found)
    assert any("http RSS grew 600 MiB" in f for f in found)
    assert any("could not be flushed" in f for f in found)


def test_summary_counts_planned_aborts_apart_from_errors():
    outcomes = [
        Outcome("chat", 0.1),
        Outcome("generate", 0.3),
        Outcome("abort_stream", 0.05, "aborted"),
        Outcome("chat_stream", 0.2, "http_5xx", 503, "busy"),
    ]
    summary = summarize(outcomes, 2.0)
    assert (summary["requests"], summary["completed"], summary["aborted"]) == (4, 2, 1)
    assert summary["errors"] == {"http_5xx": 1}
    assert summary["first_errors"]["http_5xx"] == "chat_stream: 503 busy"
    assert 100 <= summary["p50_latency_ms"] <= 300


def test_every_kind_builds_a_request_with_a_shared_prefix():
    import random

    rng = random.Random(0)
    requests = [request_for(kind, rng, 32, "default") for kind in KINDS]
    assert {route for route, _ in requests} == {"/v1/chat/completions", "/v1/completions", "/generate"}
    for _, body in requests:
        text = body.get("text") or body.get("prompt") or body["messages"][0]["content"]
        assert text.startswith(SHARED_PREFIXES)
