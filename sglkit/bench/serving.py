"""Online serving benchmark (SGLang's ``bench_serving``): an async HTTP client streams a workload through a server.

    python -m sglkit.bench_serving --num-prompts 128 --max-concurrency 64 --random-input-len 128 \
        --random-output-len 128 --random-range-ratio 1 --compare-offline
    python -m sglkit.bench_serving --base-url http://127.0.0.1:30000 --backend sglang-oai --request-rate 4

Where it sits: this client -> HTTP (``/generate`` or ``/v1/completions``, SSE) -> a running sglkit/SGLang server.
Without ``--base-url`` a server is launched with ``--model-path`` (default: a ~20M Llama made by sglkit.testing)
and always terminated. Per request it records TTFT (first token chunk), inter-token latencies, end-to-end latency
and output tokens, then prints SGLang's result block. ``--compare-offline`` then runs the same prompts through
``sglkit.Engine`` in this process (after the server is gone) and prints the ratio server / offline.
``--compare-dp`` instead launches data-parallel servers in turn (``sglkit.bench.serving_dp``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import tempfile
import time
from typing import TYPE_CHECKING

from sglkit.bench.serving_client import BACKENDS, run_requests
from sglkit.bench.serving_dp import add_dp_args, compare_dp
from sglkit.bench.serving_metrics import compute_metrics, format_metrics
from sglkit.bench.workloads import Workload, make_workload

if TYPE_CHECKING:
    import subprocess


# ----------------------------------------------------------------------------- offline comparison
def run_offline(model_path: str, workload: Workload, engine_kwargs: dict) -> dict:
    """The same requests through ``sglkit.Engine`` in this process (after a small warmup)."""
    import sglkit

    with sglkit.Engine(model_path=model_path, random_seed=0, **engine_kwargs) as llm:
        llm.generate(
            input_ids=workload.prompts[0][:16], sampling_params={"max_new_tokens": 4, "temperature": 0}
        )
        llm.flush_cache()
        params = [{"temperature": 0, "max_new_tokens": n, "ignore_eos": True} for n in workload.output_lens]
        start = time.perf_counter()
        outs = llm.generate(input_ids=workload.prompts, sampling_params=params)
        elapsed = time.perf_counter() - start
    output_tokens = sum(len(o["output_ids"]) for o in outs)
    return {
        "duration": elapsed,
        "total_output_tokens": output_tokens,
        "output_throughput": output_tokens / elapsed,
    }


# ----------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line flags (SGLang's names)."""
    p = argparse.ArgumentParser(
        prog="python -m sglkit.bench_serving",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--backend", choices=BACKENDS, default="sglang")
    p.add_argument("--base-url", default=None, help="A running server; without it one is launched here.")
    p.add_argument(
        "--model-path",
        default=None,
        help="Model to serve (and for the workload's vocabulary); "
        "default: a ~20M Llama made by sglkit.testing.",
    )
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--random-input-len", type=int, default=128)
    p.add_argument("--random-output-len", type=int, default=128)
    p.add_argument(
        "--random-range-ratio",
        type=float,
        default=0.0,
        help="Lengths uniform in [ratio * len, len] (SGLang's default 0.0; pass it explicitly).",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--request-rate", type=float, default=float("inf"), help="Requests/s (Poisson); inf = all at once."
    )
    p.add_argument("--max-concurrency", type=int, default=None, help="Most requests in flight.")
    p.add_argument("--output-file", default=None, help="Append the metrics as one JSON line to this file.")
    p.add_argument(
        "--compare-offline",
        action="store_true",
        help="Then run the same prompts through sglkit.Engine here (at most --max-concurrency running) "
        "and print server / offline.",
    )
    p.add_argument(
        "--max-total-tokens", type=int, default=None, help="KV pool size (launched server and offline)."
    )
    p.add_argument("--max-running-requests", type=int, default=None)
    p.add_argument("--chunked-prefill-size", type=int, default=None)
    p.add_argument("--disable-radix-cache", action="store_true")
    add_dp_args(p)
    return p.parse_args(argv)


def engine_kwargs_of(args: argparse.Namespace) -> dict:
    """The server-side settings given on the command line (used by the launched server and the offline run)."""
    kwargs = {
        "max_total_tokens": args.max_total_tokens,
        "max_running_requests": args.max_running_requests,
        "chunked_prefill_size": args.chunked_prefill_size,
        "disable_radix_cache": args.disable_radix_cache,
    }
    return {k: v for k, v in kwargs.items() if v not in (None, False)}


def offline_engine_kwargs(args: argparse.Namespace, engine_kwargs: dict) -> dict:
    """Engine settings of the offline run: the server's, with at most ``--max-concurrency`` requests running, so
    both sides decode batches of the same size (more running requests is a bigger batch, not less overhead)."""
    cap = engine_kwargs.get("max_running_requests")
    if args.max_concurrency and (cap is None or args.max_concurrency < cap):
        cap = args.max_concurrency
    return {**engine_kwargs, "max_running_requests": cap} if cap else dict(engine_kwargs)


def launch_server(
    model_path: str, engine_kwargs: dict, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """Start ``sglkit.launch_server`` (with ``env`` added to its environment) on a free port and wait until it can
    generate; returns (process, url)."""
    flags = "".join(
        f" --{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in engine_kwargs.items()
    )
    prefix = "".join(f"{k}={shlex.quote(v)} " for k, v in (env or {}).items())
    model = shlex.quote(model_path)
    return launch_command(
        f"{prefix}python -m sglkit.launch_server --model-path {model} --log-level warning{flags}"
    )


def launch_command(command: str) -> tuple[subprocess.Popen, str]:
    """Run a ``python -m sglkit.launch_server ...`` command line on a free port and wait until the server can
    generate (it is stopped if it never does); returns (process, url)."""
    from sglkit.utils import launch_server_cmd, terminate_process, wait_for_server

    process, port = launch_server_cmd(command, echo=False)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(url, timeout=600, process=process, print_note=False)
    except BaseException:
        terminate_process(process)
        raise
    return process, url


def server_model_path(base_url: str) -> str:
    """The model path a running server reports (/get_model_info)."""
    import httpx

    return httpx.get(f"{base_url}/get_model_info", timeout=30, trust_env=False).json()["model_path"]


def workload_vocabulary(model_path: str) -> tuple[int, set[int]]:
    """The model's vocabulary size and its special token ids (never drawn into a workload)."""
    from transformers import AutoConfig, AutoTokenizer

    vocab_size = AutoConfig.from_pretrained(model_path).vocab_size
    return vocab_size, set(AutoTokenizer.from_pretrained(model_path).all_special_ids)


def load_workload(args: argparse.Namespace, model_path: str) -> Workload:
    """The run's workload, drawn from the model's vocabulary minus its special tokens."""
    vocab_size, reserved = workload_vocabulary(model_path)
    return make_workload(
        args.num_prompts,
        args.random_input_len,
        args.random_output_len,
        args.random_range_ratio,
        vocab_size,
        args.seed,
        reserved,
    )


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print SGLang's result block (and the offline comparison); return the metrics."""
    args = parse_args(argv)
    if args.compare_dp and args.base_url:
        raise SystemExit("--compare-dp launches its own servers; drop --base-url.")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sglkit.utils import terminate_process

    tmp_dir = model_path = None
    process, base_url = None, args.base_url.rstrip("/") if args.base_url else None
    engine_kwargs = engine_kwargs_of(args)
    try:
        model_path = args.model_path
        if model_path is None and base_url is None:
            from sglkit.testing import make_tiny_model

            tmp_dir = tempfile.mkdtemp(prefix="sglkit-bench-")
            model_path = str(make_tiny_model(os.path.join(tmp_dir, "small-llama"), preset="small"))
        if base_url is None and not args.compare_dp:
            process, base_url = launch_server(model_path, engine_kwargs)
        model_path = model_path or server_model_path(base_url)
        workload = load_workload(args, model_path)
        if args.compare_dp:
            return compare_dp(
                args, model_path, engine_kwargs, workload, launch_server, workload_vocabulary(model_path)
            )
        print(
            f"#Input tokens: {sum(map(len, workload.prompts))} | #Output tokens: {sum(workload.output_lens)} | "
            f"server: {base_url}",
            flush=True,
        )
        results, duration = asyncio.run(
            run_requests(base_url, args.backend, workload, args.request_rate, args.max_concurrency, args.seed)
        )
        terminate_process(process)  # before the offline run: each side gets the whole machine
        process = None
        failed = [r for r in results if not r.success]
        if failed:
            print(f"{len(failed)} request(s) failed; first error: {failed[0].error}")
        metrics = compute_metrics(results, duration)
        print(format_metrics(metrics, args.backend, args.request_rate, args.max_concurrency), flush=True)
        if args.compare_offline:
            if args.base_url:
                print(
                    "Note: the server at --base-url keeps running during the offline run and shares the machine."
                )
            offline_kwargs = offline_engine_kwargs(args, engine_kwargs)
            offline = run_offline(model_path, workload, offline_kwargs)
            ratio = metrics["output_throughput"] / offline["output_throughput"]
            print(f"Output token throughput, server  (tok/s): {metrics['output_throughput']:.2f}")
            cap = offline_kwargs.get("max_running_requests")
            print(
                f"Output token throughput, offline (tok/s): {offline['output_throughput']:.2f}"
                + (f" (max_running_requests={cap})" if cap else "")
            )
            print(f"Throughput ratio server / offline:        {ratio:.3f}")
            metrics.update(offline_output_throughput=offline["output_throughput"], server_offline_ratio=ratio)
    finally:
        terminate_process(process)
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    if args.output_file:
        record = {
            "backend": args.backend,
            "model_path": model_path,
            "num_prompts": args.num_prompts,
            "random_input_len": args.random_input_len,
            "random_output_len": args.random_output_len,
            "random_range_ratio": args.random_range_ratio,
            "request_rate": args.request_rate if args.request_rate != float("inf") else "inf",
            "max_concurrency": args.max_concurrency,
            **metrics,
        }
        with open(args.output_file, "a") as f:
            f.write(json.dumps(record) + "\n")
    return metrics


__all__ = ["main", "parse_args", "run_offline"]

if __name__ == "__main__":
    main()
