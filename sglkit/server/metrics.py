"""Prometheus metrics under SGLang's names (``--enable-metrics``): the HTTP process's request timing plus the
scheduler's statistics, rendered together at ``/metrics``.

Request path (HTTP process): ``TokenizerManager.run`` asks :meth:`MetricsCollector.begin` for a
:class:`RequestTimer` per call and hands it every output -> time to first token, inter-token latency, time per
output token, end-to-end latency and the request / token counters (SGLang's ``TokenizerMetricsCollector``).
Scrape: ``/metrics`` -> ``TokenizerManager.get_stats()`` (every replica's scheduler) -> :meth:`render`, which
adds the scheduler's gauges (SGLang's ``SchedulerMetricsCollector`` names, one series per DP replica with
``dp_rank``) and writes the Prometheus text exposition through ``prometheus_client`` with this server's own
registry (never the global one: tests run several servers in one process).

Observing costs a ``perf_counter()``, a dict lookup and a bisect per output: the histograms below are plain
counters owned by the event loop's thread (no lock, nothing allocated but floats).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any

# SGLang's default buckets (srt/observability/metrics_collector.py: TokenizerMetricsCollector's,
# and the scheduler's for queue_time).
TTFT_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400)
E2E_BUCKETS = TTFT_BUCKETS + (600, 1200, 1800, 2400)
ITL_BUCKETS = (
    0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040, 0.060, 0.080, 0.100,
    0.200, 0.400, 0.600, 0.800, 1.0, 2.0, 4.0, 6.0, 8.0,
)  # fmt: skip

QUEUE_BUCKETS = (
    0.0, 0.001, 0.005, 0.010, 0.050, 0.100, 0.200, 0.500, 1, 2, 3, 4, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80,
    90, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1200, 1400, 1600, 1800, 2000, 2500, 3000,
)  # fmt: skip

# Scheduler series: (SGLang name, get_stats key, kind, help). Counters end in ``_total``, as Prometheus requires.
SCHEDULER_METRICS = (
    ("sglang:num_running_reqs", "num_running_reqs", "gauge", "The number of running requests."),
    ("sglang:num_queue_reqs", "num_queue_reqs", "gauge", "The number of requests in the waiting queue."),
    ("sglang:num_used_tokens", "num_used_tokens", "gauge", "The number of used tokens."),
    ("sglang:token_usage", "token_usage", "gauge", "The token usage."),
    ("sglang:cache_hit_rate", "cache_hit_rate", "gauge", "The prefix cache hit rate."),
    ("sglang:gen_throughput", "gen_throughput", "gauge", "The generation throughput (token/s)."),
    (
        "sglang:max_total_num_tokens",
        "max_total_num_tokens",
        "gauge",
        "Maximum total number of tokens in the KV cache pool.",
    ),
    ("sglang:context_len", "context_len", "gauge", "Maximum context length."),
    (
        "sglang:num_retracted_requests_total",
        "num_retracted_reqs",
        "counter",
        "Total number of retracted requests.",
    ),
)
"""What ``/metrics`` takes from each scheduler's statistics."""

SCHEDULER_LABELS = ("model_name", "engine_type", "tp_rank", "pp_rank", "moe_ep_rank")
"""SGLang's labels on scheduler series (``dp_rank`` is added per replica with ``--dp-size`` > 1)."""

TOKENIZER_LABELS = ("model_name", "engine_type")
"""SGLang's labels on the HTTP process's series (``is_streaming`` is added where SGLang splits by it)."""

HEALTH_CHECK_RID_PREFIX = "HEALTH_CHECK"
"""SGLang's rid prefix for /health_generate's probe, whose request is not counted (SGLang: ``log_metrics=False``)."""

STREAMING = ("false", "true")  # is_streaming label values, indexed by the request's stream flag


class Histogram:
    """A Prometheus histogram without a lock: only the event loop's thread observes it.

    ``counts[i]`` holds the observations in ``(bounds[i - 1], bounds[i]]``; the last slot those above every
    bound (``+Inf``).
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        """Record ``value`` ``n`` times (``n`` tokens that shared one interval)."""
        self.counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n

    @property
    def count(self) -> int:
        """Number of observations."""
        return sum(self.counts)

    def cumulative_buckets(self) -> list[tuple[str, int]]:
        """``(le, observations <= le)`` pairs, ending with ``+Inf`` (the exposition's ``_bucket`` samples)."""
        out, total = [], 0
        for bound, n in zip(self.bounds + (float("inf"),), self.counts):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out


class _ReqTiming:
    """One request's timing inside a :class:`RequestTimer`."""

    __slots__ = ("stream", "first", "last", "tokens")

    def __init__(self, stream: bool) -> None:
        self.stream = int(bool(stream))
        self.first = 0.0  # perf_counter() of the first output with a token; 0 until then
        self.last = 0.0  # perf_counter() of the last output that brought tokens
        self.tokens = 0  # completion_tokens seen so far


class RequestTimer:
    """The timing of the requests of one ``TokenizerManager.run`` call, from the moment it was created."""

    __slots__ = ("collector", "start", "requests")

    def __init__(self, collector: MetricsCollector, reqs: Sequence[Any]) -> None:
        self.collector = collector
        self.start = time.perf_counter()
        self.requests = {
            r.rid: _ReqTiming(r.stream) for r in reqs if not r.rid.startswith(HEALTH_CHECK_RID_PREFIX)
        }

    def on_output(self, out: Any) -> None:
        """Account one ``GenerateOutput``: first token, inter-token gaps, and the totals once finished."""
        now = time.perf_counter()
        req = self.requests.get(out.rid)
        if req is None:
            return
        meta = out.meta_info
        tokens = meta.get("completion_tokens", 0)
        c = self.collector
        if not req.first:
            if tokens > 0:
                req.first = req.last = now
                req.tokens = tokens
                c.ttft[req.stream].observe(now - self.start)
        elif tokens > req.tokens:
            n = tokens - req.tokens
            c.itl.observe((now - req.last) / n, n)
            req.last, req.tokens = now, tokens
        if out.finished:
            c.finish(req, meta, now - self.start, now)


class _NullTimer:
    """The timer of a server without ``--enable-metrics``: observes nothing."""

    __slots__ = ()

    def on_output(self, out: Any) -> None:
        """Do nothing."""


NULL_TIMER = _NullTimer()


class MetricsCollector:
    """One server's metrics: the HTTP-side histograms and counters, and the exposition of everything.

    ``model_name``: the ``model_name`` label (``--served-model-name``). ``enabled=False`` gives a collector
    whose timers do nothing and which never imports ``prometheus_client``.
    """

    def __init__(self, model_name: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self.labels = {"model_name": model_name, "engine_type": "unified"}
        self.ttft = (Histogram(TTFT_BUCKETS), Histogram(TTFT_BUCKETS))  # indexed by is_streaming
        self.e2e = (Histogram(E2E_BUCKETS), Histogram(E2E_BUCKETS))
        self.tpot = (Histogram(ITL_BUCKETS), Histogram(ITL_BUCKETS))
        self.itl = Histogram(ITL_BUCKETS)
        self.queue_time = Histogram(
            QUEUE_BUCKETS
        )  # from meta_info["queue_time"], when the scheduler reports it
        self.num_requests = [0, 0]
        self.prompt_tokens = [0, 0]
        self.generation_tokens = [0, 0]
        self._stats: dict[str, Any] = {}
        self.registry = None
        if enabled:
            from prometheus_client import CollectorRegistry

            self.registry = CollectorRegistry(auto_describe=False)
            self.registry.register(self)

    def begin(self, reqs: Sequence[Any]) -> RequestTimer | _NullTimer:
        """A timer for ``reqs`` (objects with ``rid`` and ``stream``), started now."""
        return RequestTimer(self, reqs) if self.enabled else NULL_TIMER

    def finish(self, req: _ReqTiming, meta: dict[str, Any], e2e: float, now: float) -> None:
        """Count one finished request (aborted and failed ones too, as SGLang does)."""
        s = req.stream
        self.num_requests[s] += 1
        self.prompt_tokens[s] += meta.get("prompt_tokens", 0)
        self.generation_tokens[s] += meta.get("completion_tokens", 0)
        self.e2e[s].observe(e2e)
        finish = (meta.get("finish_reason") or {}).get("type")
        if finish in ("stop", "length") and req.tokens > 1 and 0 < req.first < now:  # a decode period seen
            self.tpot[s].observe((now - req.first) / (req.tokens - 1))
        queue_time = meta.get("queue_time")
        if queue_time is not None:
            self.queue_time.observe(float(queue_time))

    # ----- exposition -----
    def render(self, stats: dict[str, Any]) -> bytes:
        """The Prometheus text exposition (format 0.0.4) of this collector plus the scheduler ``stats``
        (``TokenizerManager.get_stats()``; with data parallelism its ``replicas`` give one series each)."""
        from prometheus_client import generate_latest

        self._stats = stats
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Any]:
        """``prometheus_client`` collector protocol: every metric family, from the last stats given to
        :meth:`render`."""
        yield from self._scheduler_families(self._stats)
        yield from self._tokenizer_families(self._stats)

    def _scheduler_families(self, stats: dict[str, Any]) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        replicas = stats.get("replicas") or [stats]
        label_names = list(SCHEDULER_LABELS) + (["dp_rank"] if "replicas" in stats else [])
        base = [self.labels["model_name"], self.labels["engine_type"], "0", "0", "0"]
        for name, key, kind, help_text in SCHEDULER_METRICS:
            family_cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = family_cls(name, help_text, labels=label_names)
            for replica in replicas:
                extra = [str(replica["dp_rank"])] if "replicas" in stats else []
                family.add_metric(base + extra, float(replica.get(key) or 0.0))
            yield family

    def _tokenizer_families(self, stats: dict[str, Any]) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        base = [self.labels[k] for k in TOKENIZER_LABELS]
        stream_labels = [*TOKENIZER_LABELS, "is_streaming"]
        counters = (
            ("sglang:prompt_tokens_total", "Number of prefill tokens processed.", self.prompt_tokens),
            (
                "sglang:generation_tokens_total",
                "Number of generation tokens processed.",
                self.generation_tokens,
            ),
            ("sglang:num_requests_total", "Number of requests processed.", self.num_requests),
        )
        for name, help_text, values in counters:
            family = CounterMetricFamily(name, help_text, labels=stream_labels)
            for s, value in enumerate(values):
                family.add_metric([*base, STREAMING[s]], value)
            yield family
        aborted = CounterMetricFamily(
            "sglang:num_aborted_requests_total", "Number of requests aborted.", labels=list(TOKENIZER_LABELS)
        )
        aborted.add_metric(base, float(stats.get("num_aborted_reqs") or 0))
        yield aborted
        by_stream = (
            ("sglang:time_to_first_token_seconds", "Histogram of time to first token in seconds.", self.ttft),
            (
                "sglang:e2e_request_latency_seconds",
                "Histogram of End-to-end request latency in seconds",
                self.e2e,
            ),
            (
                "sglang:request_time_per_output_token_seconds",
                "Per-request TPOT in seconds: (finished_time - first_token_time) / (completion_tokens - 1).",
                self.tpot,
            ),
        )
        for name, help_text, pair in by_stream:
            family = HistogramMetricFamily(name, help_text, labels=stream_labels)
            for s, hist in enumerate(pair):
                family.add_metric([*base, STREAMING[s]], hist.cumulative_buckets(), hist.sum)
            yield family
        itl = HistogramMetricFamily(
            "sglang:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            labels=list(TOKENIZER_LABELS),
        )
        itl.add_metric(base, self.itl.cumulative_buckets(), self.itl.sum)
        yield itl
        queue = HistogramMetricFamily(
            "sglang:queue_time_seconds",
            "Histogram of queueing time in seconds.",
            labels=list(TOKENIZER_LABELS),
        )
        if self.queue_time.count:  # like a labelled prometheus_client metric: no samples before the first one
            queue.add_metric(base, self.queue_time.cumulative_buckets(), self.queue_time.sum)
        yield queue


def create_metrics_collector(server_args: Any) -> MetricsCollector:
    """The collector for a server started with ``server_args`` (a no-op one without ``--enable-metrics``)."""
    return MetricsCollector(str(server_args.served_model_name), enabled=bool(server_args.enable_metrics))
