"""The dashboard's data-parallel panel (server stats dict -> HTML table and text lines): pure functions.

A server started with ``--dp-size N`` reports each replica's statistics under ``replicas`` in /get_server_info
(and the router under ``router``); these turn them into one row per replica -- running, queued, KV use, cache
hit rate, finished requests -- plus the router's policy and decision counts. A server without replicas gives
an empty panel.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from sglkit.widgets.formatting import format_count, format_percent

__all__ = ["replica_lines", "replicas_html"]

_COLUMNS = ("replica", "running", "queued", "KV use", "cache hit rate", "cached tokens", "finished")


def _cells(replica: Mapping[str, Any]) -> list[str]:
    return [
        f"DP{replica.get('dp_rank', '?')}",
        format_count(replica.get("num_running_reqs")),
        format_count(replica.get("num_queue_reqs")),
        format_percent(replica.get("token_usage")),
        format_percent(replica.get("cache_hit_rate")),
        format_count(replica.get("num_cached_tokens")),
        format_count(replica.get("num_finished_reqs")),
    ]


def _router_text(stats: Mapping[str, Any]) -> str:
    router = stats.get("router") or {}
    decisions = ", ".join(f"{k} {v}" for k, v in sorted((router.get("decisions") or {}).items()))
    method = router.get("load_balance_method") or stats.get("load_balance_method", "-")
    return f"router: {method}" + (f" ({decisions})" if decisions else "")


def replicas_html(stats: Mapping[str, Any]) -> str:
    """A table with one row per data-parallel replica and the router's line; ``""`` without replicas."""
    replicas = stats.get("replicas") or []
    if not replicas:
        return ""
    head = "".join(f"<th style='padding:1px 8px;text-align:right'>{c}</th>" for c in _COLUMNS)
    rows = "".join(
        "<tr class='sglkit-replica'>"
        + "".join(f"<td style='padding:1px 8px;text-align:right'>{html.escape(c)}</td>" for c in _cells(r))
        + "</tr>"
        for r in replicas
    )
    return (
        f"<div class='sglkit-replicas' style='font-size:12px'>"
        f"<div style='color:#555;text-transform:uppercase;letter-spacing:0.04em'>"
        f"Data-parallel replicas ({len(replicas)})</div>"
        f"<table style='border-collapse:collapse'><tr>{head}</tr>{rows}</table>"
        f"<div style='color:#777'>{html.escape(_router_text(stats))}</div></div>"
    )


def replica_lines(stats: Mapping[str, Any]) -> list[str]:
    """The same as plain text lines (the dashboard's ``repr``); ``[]`` without replicas."""
    replicas = stats.get("replicas") or []
    if not replicas:
        return []
    lines = [f"  replicas: {len(replicas)}, {_router_text(stats)}"]
    for r in replicas:
        dp, running, queued, kv, hit, cached, finished = _cells(r)
        lines.append(
            f"    {dp}: {running} running, {queued} queued, KV {kv}, cache hit rate {hit} "
            f"({cached} cached tokens), {finished} finished"
        )
    return lines
