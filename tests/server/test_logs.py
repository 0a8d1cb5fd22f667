"""The server's log has the seeds' shape: start-up lines, per-batch lines, and --log-requests lines."""

from __future__ import annotations

import re

import requests

START_UP_PATTERNS = [
    r"\] server_args=ServerArgs\(model_path='[^']+'",
    r" TP0\] Load weight begin\. avail mem=\d+\.\d\d GB",
    r"Loading safetensors checkpoint shards: 100% Completed \| 1/1",
    r" TP0\] Load weight end\. type=LlamaForCausalLM, dtype=torch\.float32, avail mem=\d+\.\d\d GB",
    r" TP0\] KV Cache is allocated\. K size: \d+\.\d\d GB, V size: \d+\.\d\d GB\.",
    r" TP0\] max_total_num_tokens=16384, max_prefill_tokens=16384, max_running_requests=\d+, context_len=\d+",
    r"\] INFO:     Uvicorn running on http://127\.0\.0\.1:\d+ \(Press CTRL\+C to quit\)",
    r'\] INFO:     127\.0\.0\.1:\d+ - "POST /generate HTTP/1\.1" 200 OK',
    r"\] The server is fired up and ready to roll!",
]
PREFILL = (
    r" TP0\] Prefill batch\. #new-seq: \d+, #new-token: \d+, #cached-token: \d+, cache hit rate: \d+\.\d\d%, "
    r"token usage: \d\.\d\d, #running-req: \d+, #queue-req: \d+"
)
DECODE = (
    r" TP0\] Decode batch\. #running-req: \d+, #token: \d+, token usage: \d\.\d\d, "
    r"gen throughput \(token/s\): \d+\.\d\d, #queue-req: \d+"
)


def test_start_up_lines_in_seed_order(server):
    log = server.log()
    positions = []
    for pattern in START_UP_PATTERNS:
        match = re.search(pattern, log)
        assert match, f"missing log line matching {pattern!r}"
        positions.append(match.start())
    assert positions == sorted(positions), "start-up lines out of order"


def test_batch_lines_and_request_log(server):
    response = requests.post(
        f"{server.base_url}/generate",
        json={
            "text": "Log me please",
            "rid": "log-me",
            "sampling_params": {"temperature": 0, "max_new_tokens": 12},
        },
    )
    assert response.status_code == 200
    log = server.log()
    assert re.search(PREFILL, log) and re.search(DECODE, log)
    assert re.search(
        r"Finish: rid=log-me, input='Log me please', output='.*', meta_info=\{'id': 'log-me'", log
    )


def test_rejected_requests_are_logged_with_the_reason(server):
    response = requests.post(
        f"{server.base_url}/generate", json={"text": "x", "sampling_params": {"regex": "(unclosed"}}
    )
    assert response.status_code == 400
    response = requests.post(f"{server.base_url}/v1/chat/completions", json={"messages": []})
    assert response.status_code == 400
    log = server.log()
    assert re.search(r"Rejected request: POST /generate -> 400 \(param: regex\): Invalid regex", log)
    assert "Rejected request: POST /v1/chat/completions -> 400 (param: messages)" in log
