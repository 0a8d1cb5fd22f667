"""Text and HTML of the dashboard (server stats dict -> strings): pure functions, no widgets, no I/O.

The same figures feed the widget's panels and its plain-text ``repr``, so both always say the same thing.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ARG_SUMMARY_KEYS",
    "HEALTH_COLORS",
    "HEALTH_STATES",
    "args_table_html",
    "format_count",
    "format_duration",
    "format_percent",
    "health_html",
    "log_html",
    "summary_lines",
]

HEALTH_STATES = ("starting", "ready", "unhealthy", "stopped")
"""The health light's states."""

HEALTH_COLORS = {"starting": "#f0ad4e", "ready": "#2ca02c", "unhealthy": "#d62728", "stopped": "#7f7f7f"}

ARG_SUMMARY_KEYS = (
    "served_model_name",
    "dtype",
    "device",
    "context_len",
    "max_total_num_tokens",
    "max_running_requests",
    "max_prefill_tokens",
    "chunked_prefill_size",
    "schedule_policy",
    "disable_radix_cache",
    "attention_backend",
    "stream_interval",
    "random_seed",
    "enable_metrics",
    "api_key",
    "host",
    "port",
    "version",
)
"""Server arguments shown in the dashboard's summary (``api_key`` is shown as set / not set)."""


def format_count(value: Any) -> str:
    """12345 -> '12,345'; missing -> '-'."""
    if value is None:
        return "-"
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return str(value)


def format_percent(value: Any) -> str:
    """0.0384 -> '3.8%'; missing -> '-'."""
    if value is None:
        return "-"
    try:
        return f"{100 * float(value):.1f}%"
    except (TypeError, ValueError):
        return str(value)


def format_duration(seconds: Any) -> str:
    """Seconds -> '42 s', '3 min 05 s', '2 h 07 min'; missing -> '-'."""
    if seconds is None:
        return "-"
    total = int(float(seconds))
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _arg_value(key: str, value: Any) -> str:
    if key == "api_key":
        return "set" if value else "not set"
    if key in ("max_total_num_tokens", "context_len", "max_prefill_tokens", "chunked_prefill_size"):
        return format_count(value)
    return "-" if value is None else str(value)


def args_table_html(info: Mapping[str, Any], keys: tuple[str, ...] = ARG_SUMMARY_KEYS) -> str:
    """A two-column table of the chosen server arguments present in ``info``."""
    rows = "".join(
        f"<tr><td style='padding:1px 12px 1px 0;color:#555'>{html.escape(k)}</td>"
        f"<td style='padding:1px 0'><code>{html.escape(_arg_value(k, info[k]))}</code></td></tr>"
        for k in keys
        if k in info
    )
    return f"<table class='sglkit-args' style='font-size:12px'>{rows}</table>" if rows else "<i>no data</i>"


def health_html(state: str, detail: str, base_url: str) -> str:
    """The health light: a coloured dot, the state, the URL and (if any) why."""
    color = HEALTH_COLORS.get(state, "#7f7f7f")
    why = f" <span style='color:#777'>({html.escape(detail)})</span>" if detail else ""
    return (
        f"<div class='sglkit-health sglkit-health-{state}' style='font-size:14px'>"
        f"<span style='color:{color};font-size:18px'>&#9679;</span> <b>{state}</b> "
        f"<code>{html.escape(base_url)}</code>{why}</div>"
    )


def log_html(text: str, num_lines: int) -> str:
    """The tail of the server log in a scrolling monospace block."""
    body = html.escape(text) if text else "(no output yet)"
    return (
        f"<div style='font-size:11px;color:#555'>last {num_lines} lines of the server log</div>"
        f"<pre class='sglkit-log' style='max-height:220px;overflow:auto;font-size:11px;line-height:1.3;"
        f"background:#f7f7f7;padding:6px;margin:0'>{body}</pre>"
    )


def summary_lines(
    base_url: str,
    state: str,
    detail: str,
    stats: Mapping[str, Any],
    served_model: str | None,
    throughput: float | None,
) -> list[str]:
    """The dashboard as plain text lines (its ``repr`` outside Jupyter)."""
    lines = [f"ServerDashboard({base_url}) [{state}{f': {detail}' if detail else ''}]"]
    if not stats:
        lines.append("  no statistics yet")
        return lines
    model = served_model or stats.get("model_path")
    lines += [
        f"  model: {model} (context {format_count(stats.get('context_len'))} tokens)",
        f"  KV pool: {format_count(stats.get('num_used_tokens'))} / {format_count(stats.get('max_total_num_tokens'))}"
        f" tokens ({format_percent(stats.get('token_usage'))})",
        f"  radix cache: hit rate {format_percent(stats.get('cache_hit_rate'))}, "
        f"{format_count(stats.get('num_cached_tokens'))} cached tokens",
        f"  requests: {format_count(stats.get('num_running_reqs'))} running, "
        f"{format_count(stats.get('num_queue_reqs'))} queued",
        f"  throughput: {0.0 if throughput is None else throughput:.1f} token/s "
        f"(last decode batch {float(stats.get('gen_throughput') or 0.0):.1f} token/s)",
        f"  totals: {format_count(stats.get('num_finished_reqs'))} finished requests, "
        f"{format_count(stats.get('total_prompt_tokens'))} prompt + "
        f"{format_count(stats.get('total_completion_tokens'))} completion tokens, "
        f"{format_count(stats.get('num_generated_tokens'))} generated, "
        f"uptime {format_duration(stats.get('uptime_s'))}",
    ]
    return lines
