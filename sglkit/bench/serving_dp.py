"""``--compare-dp`` of the serving benchmark: data parallelism against one replica, and the router's policies.

    python -m sglkit.bench_serving --compare-dp --num-prompts 64 --random-input-len 128 --random-output-len 64 \
        --random-range-ratio 1

Where it sits: ``sglkit.bench.serving`` -> here -> servers launched one at a time (``--dp-size``,
``--load-balance-method``, threads by ``OMP_NUM_THREADS``) -> the same async client (``serving_client``).
Two comparisons, each on the whole machine in turn:

1. Throughput: the run's random workload through ``dp=1`` with every core's thread against ``dp=N`` with
   cores / N threads per replica (same prompts, same client).
2. Routing: a shared-prefix workload (``--shared-prefix-groups`` prefixes of ``--shared-prefix-len`` tokens, each
   followed by the run's input length of random tokens, in a shuffled order) through ``dp=N`` with
   ``cache_aware`` against ``round_robin``: the servers' cache hit rate (/get_server_info) and throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
from collections.abc import Callable

from sglkit.bench.serving_client import run_requests
from sglkit.bench.serving_metrics import compute_metrics
from sglkit.bench.workloads import Workload, random_prompts


def shared_prefix_workload(
    num_prompts: int,
    num_groups: int,
    prefix_len: int,
    suffix_len: int,
    output_len: int,
    vocab_size: int,
    seed: int = 0,
    reserved_ids: set[int] | None = None,
) -> Workload:
    """``num_prompts`` prompts, each one of ``num_groups`` random prefixes plus its own random suffix; groups
    interleaved in a seeded random order (so round robin cannot line groups up with replicas by accident)."""
    prefixes = random_prompts(num_groups, prefix_len, vocab_size, seed, 1.0, reserved_ids)
    suffixes = random_prompts(num_prompts, suffix_len, vocab_size, seed + 1, 1.0, reserved_ids)
    prompts = [prefixes[i % num_groups] + suffix for i, suffix in enumerate(suffixes)]
    random.Random(seed + 2).shuffle(prompts)
    return Workload(prompts, [output_len] * num_prompts)


def serve_and_measure(
    launch: Callable,
    model_path: str,
    engine_kwargs: dict,
    threads: int,
    workload: Workload,
    args: argparse.Namespace,
) -> dict:
    """Launch one server with ``launch`` (``threads`` per replica), run ``workload`` through it, stop it: metrics
    and the server's cache hit rate."""
    import httpx

    from sglkit.utils import terminate_process

    process, url = launch(model_path, engine_kwargs, env={"OMP_NUM_THREADS": str(threads)})
    try:
        httpx.post(f"{url}/flush_cache", timeout=60, trust_env=False)  # the warmup request's prefix is gone
        results, duration = asyncio.run(
            run_requests(url, args.backend, workload, args.request_rate, args.max_concurrency, args.seed)
        )
        info = httpx.get(f"{url}/get_server_info", timeout=60, trust_env=False).json()
    finally:
        terminate_process(process)
    metrics = compute_metrics(results, duration)
    metrics["cache_hit_rate"] = info.get("cache_hit_rate", 0.0)
    metrics["replica_finished"] = [r["num_finished_reqs"] for r in info.get("replicas", [])]
    return metrics


def _row(label: str, m: dict) -> str:
    return (
        f"{label:<34} {m['output_throughput']:>9.2f} {m['total_throughput']:>9.2f} "
        f"{m['median_ttft_ms']:>9.1f} {100 * m['cache_hit_rate']:>6.1f}%  {m['replica_finished'] or '-'}"
    )


def compare_dp(
    args: argparse.Namespace,
    model_path: str,
    engine_kwargs: dict,
    workload: Workload,
    launch: Callable,
    vocabulary: tuple[int, set[int]],
) -> dict:
    """Run both comparisons, print them as a table, return their figures (ratios included).

    ``launch(model_path, engine_kwargs, env=...)`` starts a server and returns (process, url) (the serving
    benchmark's ``launch_server``); ``vocabulary`` is (vocab size, special ids) for the shared-prefix prompts.
    """
    dp, cores = args.dp_size, len(os.sched_getaffinity(0))
    per_replica = max(1, cores // dp)
    vocab_size, reserved = vocabulary
    shared = shared_prefix_workload(
        args.num_prompts,
        args.shared_prefix_groups,
        args.shared_prefix_len,
        args.random_input_len,
        args.random_output_len,
        vocab_size,
        args.seed,
        reserved,
    )
    runs = {
        f"random: dp=1, {cores} threads": (1, cores, "cache_aware", workload),
        f"random: dp={dp}, {per_replica} thread(s) each": (dp, per_replica, "cache_aware", workload),
        f"shared prefix: dp={dp}, cache_aware": (dp, per_replica, "cache_aware", shared),
        f"shared prefix: dp={dp}, round_robin": (dp, per_replica, "round_robin", shared),
    }
    out: dict = {}
    for label, (dp_size, threads, method, load) in runs.items():
        kwargs = {**engine_kwargs, "dp_size": dp_size, "load_balance_method": method}
        print(f"-- {label} ...", flush=True)
        out[label] = serve_and_measure(launch, model_path, kwargs, threads, load, args)
    print(f"{'':<34} {'out tok/s':>9} {'tot tok/s':>9} {'TTFT ms':>9} {'hit':>7}  finished per replica")
    for label, metrics in out.items():
        print(_row(label, metrics))
    names = list(out)
    ratios = {
        "dp_over_dp1_output_throughput": out[names[1]]["output_throughput"]
        / out[names[0]]["output_throughput"],
        "cache_aware_over_round_robin_throughput": out[names[2]]["total_throughput"]
        / out[names[3]]["total_throughput"],
    }
    print(f"Output throughput dp={dp} / dp=1:                {ratios['dp_over_dp1_output_throughput']:.3f}")
    print(
        f"Total throughput cache_aware / round_robin:     {ratios['cache_aware_over_round_robin_throughput']:.3f}"
    )
    return {"runs": out, **ratios}


def add_dp_args(parser: argparse.ArgumentParser) -> None:
    """The ``--compare-dp`` flags."""
    parser.add_argument(
        "--compare-dp",
        action="store_true",
        help="Launch servers in turn: dp=1 (all threads) vs dp=--dp-size (threads split) on the random workload, "
        "then cache_aware vs round_robin routing on a shared-prefix workload; print throughput and hit rates.",
    )
    parser.add_argument(
        "--dp-size", type=int, default=2, help="Replicas of the data-parallel runs (--compare-dp)."
    )
    parser.add_argument(
        "--shared-prefix-groups", type=int, default=8, help="Distinct prefixes of the shared-prefix workload."
    )
    parser.add_argument(
        "--shared-prefix-len",
        type=int,
        default=512,
        help="Tokens of each prefix of the shared-prefix workload.",
    )
