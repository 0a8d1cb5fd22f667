"""/metrics (sglkit/server/metrics.py) over the shared real server (started with --enable-metrics).

The exposition must parse with ``prometheus_client.parser``, carry SGLang's names, kinds and labels, and move
as requests run: counters by exactly the requests and tokens sent (split by ``is_streaming``), histograms with
consistent buckets, count and sum, time to first token never above end-to-end latency. The collector itself is
also checked in process (bucket edges, inter-token observations, its own registry per instance).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import requests

from sglkit.core.messages import GenerateOutput
from sglkit.server.metrics import MetricsCollector

parser = pytest.importorskip("prometheus_client.parser")

SCHEDULER_LABELS = {"model_name", "engine_type", "tp_rank", "pp_rank", "moe_ep_rank"}
SCHEDULER_FAMILIES = {
    "sglang:num_running_reqs": "gauge",
    "sglang:num_queue_reqs": "gauge",
    "sglang:num_used_tokens": "gauge",
    "sglang:token_usage": "gauge",
    "sglang:cache_hit_rate": "gauge",
    "sglang:gen_throughput": "gauge",
    "sglang:max_total_num_tokens": "gauge",
    "sglang:context_len": "gauge",
    "sglang:num_retracted_requests": "counter",  # the parser drops a counter family's _total
}
TOKENIZER_FAMILIES = {
    "sglang:prompt_tokens": "counter",
    "sglang:generation_tokens": "counter",
    "sglang:num_requests": "counter",
    "sglang:num_aborted_requests": "counter",
    "sglang:time_to_first_token_seconds": "histogram",
    "sglang:inter_token_latency_seconds": "histogram",
    "sglang:request_time_per_output_token_seconds": "histogram",
    "sglang:e2e_request_latency_seconds": "histogram",
    "sglang:queue_time_seconds": "histogram",
}
STREAMED = ("sglang:time_to_first_token_seconds", "sglang:e2e_request_latency_seconds")


def scrape(base_url: str) -> dict:
    """name -> type and (sample name, sorted labels) -> value of one /metrics answer."""
    response = requests.get(f"{base_url}/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "sglkit:" not in response.text  # one name per series: SGLang's
    types, samples = {}, {}
    for family in parser.text_string_to_metric_families(response.text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return {"types": types, "samples": samples}


def value(scraped: dict, name: str, **labels: str) -> float:
    """The one sample ``name`` whose labels include ``labels``."""
    found = [
        v for (n, lbls), v in scraped["samples"].items() if n == name and labels.items() <= dict(lbls).items()
    ]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def buckets(scraped: dict, name: str, **labels: str) -> dict[float, float]:
    """le -> cumulative count of histogram ``name`` (the series matching ``labels``)."""
    out = {}
    for (n, lbls), v in scraped["samples"].items():
        lbls = dict(lbls)
        if n == f"{name}_bucket" and labels.items() <= lbls.items():
            out[float(lbls["le"])] = v
    return dict(sorted(out.items()))


def generate(base_url: str, **body) -> dict | list:
    """POST /generate (not streaming) and return its JSON."""
    response = requests.post(f"{base_url}/generate", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def stream(base_url: str, **body) -> list[dict]:
    """POST /generate with stream=true and return every event before [DONE]."""
    response = requests.post(f"{base_url}/generate", json={**body, "stream": True}, stream=True, timeout=120)
    assert response.status_code == 200, response.text
    lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == b"data: [DONE]"
    return [json.loads(line[len(b"data: ") :]) for line in lines[:-1]]


def test_names_kinds_and_labels(server):
    scraped = scrape(server.base_url)
    expected = {**SCHEDULER_FAMILIES, **TOKENIZER_FAMILIES}
    assert {n: scraped["types"].get(n) for n in expected} == expected
    for (name, labels), _ in scraped["samples"].items():
        labels = dict(labels)
        assert labels["model_name"] == server.model_path and labels["engine_type"] == "unified"
        family = name.removesuffix("_total")
        if family in SCHEDULER_FAMILIES:
            assert labels.keys() == SCHEDULER_LABELS  # one replica: no dp_rank, as SGLang without --dp
            assert labels["tp_rank"] == labels["pp_rank"] == labels["moe_ep_rank"] == "0"
    assert value(scraped, "sglang:max_total_num_tokens") == 16384
    for is_streaming in (
        "false",
        "true",
    ):  # both label values from the start, so rate() sees the first request
        assert value(scraped, "sglang:num_requests_total", is_streaming=is_streaming) >= 0


def test_requests_move_counters_and_histograms(server):
    """Two plain requests and one stream of 4 tokens each: the counters, histogram counts and inter-token
    observations move by exactly that; buckets are cumulative and end at the count; TTFT <= E2E."""
    before = scrape(server.base_url)
    params = {"max_new_tokens": 4, "ignore_eos": True, "temperature": 0}
    plain = generate(
        server.base_url, text=["The capital of France is", "One two three"], sampling_params=params
    )
    events = stream(server.base_url, text="Once upon a time", sampling_params=params)
    after = scrape(server.base_url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    streamed_prompt = events[-1]["meta_info"]["prompt_tokens"]
    for is_streaming, n, prompt in (
        ("false", 2, sum(o["meta_info"]["prompt_tokens"] for o in plain)),
        ("true", 1, streamed_prompt),
    ):
        assert delta("sglang:num_requests_total", is_streaming=is_streaming) == n
        assert delta("sglang:generation_tokens_total", is_streaming=is_streaming) == 4 * n
        assert delta("sglang:prompt_tokens_total", is_streaming=is_streaming) == prompt
        for name in STREAMED:
            assert delta(f"{name}_count", is_streaming=is_streaming) == n
        ttft = buckets(after, STREAMED[0], is_streaming=is_streaming)
        e2e = buckets(after, STREAMED[1], is_streaming=is_streaming)
        ttft_before = buckets(before, STREAMED[0], is_streaming=is_streaming)
        e2e_before = buckets(before, STREAMED[1], is_streaming=is_streaming)
        for le in ttft:  # each request's first token came no later than its end
            assert ttft[le] - ttft_before[le] >= e2e[le] - e2e_before[le]
        assert delta(f"{STREAMED[0]}_sum", is_streaming=is_streaming) <= delta(
            f"{STREAMED[1]}_sum", is_streaming=is_streaming
        )
    # Only the stream brings tokens one by one: 3 gaps after its first token. A plain request's only output is
    # its last, so (as in SGLang) its time to first token is its whole latency and it has no inter-token gaps.
    assert delta("sglang:inter_token_latency_seconds_count") == 3
    assert delta("sglang:request_time_per_output_token_seconds_count", is_streaming="true") == 1
    assert delta("sglang:request_time_per_output_token_seconds_count", is_streaming="false") == 0

    for name, kind in TOKENIZER_FAMILIES.items():
        if kind != "histogram":
            continue
        for (n, labels), count in after["samples"].items():
            if n != f"{name}_count":
                continue
            series = {k: v for k, v in labels if k != "le"}
            cumulative = list(buckets(after, name, **series).items())
            assert [c for _, c in cumulative] == sorted(c for _, c in cumulative)
            assert cumulative[-1] == (float("inf"), count)
            assert value(after, f"{name}_sum", **series) >= 0

    for key, old in before["samples"].items():  # counters never go down
        if key[0].endswith("_total") or key[0].endswith(("_count", "_bucket", "_sum")):
            assert after["samples"][key] >= old, key


def test_aborted_request_counts(server):
    """A stream aborted by /abort_request counts as aborted and as a (streaming) request, as in SGLang."""
    before = scrape(server.base_url)
    response = requests.post(
        f"{server.base_url}/generate",
        stream=True,
        json={
            "text": "Once upon a time",
            "rid": "metrics-abort",
            "stream": True,
            "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True, "temperature": 0},
        },
    )
    try:
        lines = (line for line in response.iter_lines() if line)
        next(lines)  # the first token is out
        abort = requests.post(f"{server.base_url}/abort_request", json={"rid": "metrics-abort"})
        assert abort.status_code == 200
        rest = list(lines)
    finally:
        response.close()
    assert rest[-1] == b"data: [DONE]"
    after = scrape(server.base_url)
    assert (
        value(after, "sglang:num_requests_total", is_streaming="true")
        == value(before, "sglang:num_requests_total", is_streaming="true") + 1
    )
    # Aborted: no time per output token (its decode was cut short).
    tpot = "sglang:request_time_per_output_token_seconds_count"
    assert value(after, tpot, is_streaming="true") == value(before, tpot, is_streaming="true")
    assert (
        value(after, "sglang:num_aborted_requests_total")
        == value(before, "sglang:num_aborted_requests_total") + 1
    )


def test_health_probe_is_not_counted(server):
    """/health_generate's one-token probe is not a request of the dashboard's (SGLang: log_metrics=False)."""
    before = scrape(server.base_url)
    assert requests.get(f"{server.base_url}/health_generate", timeout=30).status_code == 200
    after = scrape(server.base_url)
    for is_streaming in ("false", "true"):
        for name in ("sglang:num_requests_total", "sglang:time_to_first_token_seconds_count"):
            assert value(after, name, is_streaming=is_streaming) == value(
                before, name, is_streaming=is_streaming
            )


def _output(rid: str, tokens: int, finished: bool = False, **meta) -> GenerateOutput:
    return GenerateOutput(rid, "", [], finished, {"completion_tokens": tokens, "prompt_tokens": 5, **meta})


def test_collector_in_process():
    """Bucket edges are inclusive (le), several tokens in one output share their gap, each collector has its
    own registry, and a disabled collector times nothing."""
    a, b = MetricsCollector("a"), MetricsCollector("b")
    assert a.registry is not b.registry
    a.itl.observe(0.002)  # exactly on a bound: counted in that bucket
    a.itl.observe(9.0)  # above every bound: +Inf only
    cumulative = dict(a.itl.cumulative_buckets())
    assert (cumulative["0.002"], cumulative["8.0"], cumulative["+Inf"]) == (1, 1, 2)

    timer = b.begin([SimpleNamespace(rid="r", stream=True)])
    timer.on_output(_output("r", 1))
    timer.on_output(_output("r", 4))  # 3 tokens in one chunk: 3 observations of a third of the gap
    timer.on_output(_output("r", 4, finished=True, finish_reason={"type": "length"}, queue_time=0.02))
    assert (b.ttft[1].count, b.itl.count, b.e2e[1].count, b.tpot[1].count) == (1, 3, 1, 1)
    assert (b.num_requests, b.generation_tokens, b.prompt_tokens) == ([0, 1], [0, 4], [0, 5])
    assert b.queue_time.count == 1
    text = b.render({"num_running_reqs": 2, "num_aborted_reqs": 1}).decode()
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert families["sglang:num_running_reqs"].samples[0].value == 2
    assert families["sglang:queue_time_seconds"].samples  # reported once meta_info carried queue_time
    assert not MetricsCollector("c").render({}).decode().count("sglang:queue_time_seconds_count")

    off = MetricsCollector("d", enabled=False)
    off.begin([SimpleNamespace(rid="r", stream=False)]).on_output(_output("r", 1, finished=True))
    assert off.registry is None and off.num_requests == [0, 0]
