"""Data-parallel fan-in: the answers of N replicas combined into one (tokenizer manager -> routes).

With ``--dp-size N`` every control request (``/flush_cache``, ``/update_weights_from_disk``, statistics) goes to
each replica; :func:`combine_results` folds their ``ControlResult``s (success only if every replica succeeded)
and :func:`combine_stats` their statistics (totals at the top level, each replica's own under ``replicas``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sglkit.core.messages import ControlResult

SUMMED_STATS = (
    "num_running_reqs",
    "num_queue_reqs",
    "num_used_tokens",
    "num_cached_tokens",
    "gen_throughput",
    "num_decode_steps",
    "num_generated_tokens",
    "num_finished_reqs",
    "num_aborted_reqs",
    "num_retracted_reqs",
    "total_prompt_tokens",
    "total_completion_tokens",
    "cache_hit_tokens",
    "cache_total_tokens",
    "max_total_num_tokens",
    "max_running_requests",
)
"""Statistics whose total over the replicas is their sum (counts, token pools, throughput)."""


def combine_stats(per_replica: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Totals of the replicas' statistics plus ``replicas``: each one's own, with its ``dp_rank``.

    Counts and pool sizes are summed (so ``max_total_num_tokens`` is the KV capacity of the whole server);
    ``token_usage`` and ``cache_hit_rate`` are recomputed from the sums; ``uptime_s`` is the longest; the other
    fields (context length, model path, limits of one request) are replica 0's, the same on every replica.
    """
    if not per_replica:
        raise ValueError("No replica statistics to combine.")
    total = dict(per_replica[0])
    for key in SUMMED_STATS:
        if all(key in s for s in per_replica):
            total[key] = sum(s[key] for s in per_replica)
    if total.get("max_total_num_tokens"):
        total["token_usage"] = total.get("num_used_tokens", 0) / total["max_total_num_tokens"]
    if "cache_total_tokens" in total:
        cached, seen = total.get("cache_hit_tokens", 0), total["cache_total_tokens"]
        total["cache_hit_rate"] = cached / seen if seen else 0.0
    if all("uptime_s" in s for s in per_replica):
        total["uptime_s"] = max(s["uptime_s"] for s in per_replica)
    total["replicas"] = [{"dp_rank": rank, **stats} for rank, stats in enumerate(per_replica)]
    return total


def combine_results(results: Sequence[ControlResult]) -> ControlResult:
    """One answer for a control request sent to every replica: success only if all succeeded.

    The message is the replicas' common message, or each replica's (``DP<rank>: ...``) when they differ; the
    payload is replica 0's, with every replica's payload under ``replicas``.
    """
    if not results:
        raise ValueError("No replica results to combine.")
    success = all(r.success for r in results)
    messages = [r.message for r in results]
    if len(set(messages)) == 1:
        message = messages[0]
    else:
        message = "; ".join(f"DP{rank}: {m}" for rank, m in enumerate(messages) if m)
    payload = dict(results[0].payload)
    if len(results) > 1:
        payload["replicas"] = [r.payload for r in results]
    return ControlResult(success, message, payload)
