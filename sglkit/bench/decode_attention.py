"""``python -m sglkit.bench.decode_attention``: CPU decode steps with sglkit's attention kernel vs SDPA, one process.

One ModelRunner (a ``bench_one_batch`` preset, dummy weights, the torch_native backend) prefills one static
batch; then decode steps alternate in blocks between the two decode paths of the backend: sglkit's kernel
reading the paged pool (``sglkit.layers.cpu_kernels.decode_attention``) and SDPA over the gathered, padded K/V
with its per-batch workspace (``use_cpu_kernel=False``). The first step of each block is not timed (SDPA's
workspace is rebuilt there). Prints both medians and SDPA / kernel. Same runner, KV pool, weights and threads.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from sglkit.bench.one_batch import PRESETS, StaticBatch, build_runner, write_preset
from sglkit.bench.one_batch import parse_args as one_batch_args

__all__ = ["main", "parse_args", "run"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """--config, --dtype, --batch-size, --input-len, --steps (timed per side), --block, --threads."""
    p = argparse.ArgumentParser(
        prog="python -m sglkit.bench.decode_attention", description=__doc__.split("\n")[0]
    )
    p.add_argument("--config", default="small", choices=sorted(PRESETS))
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=12, help="Timed decode steps per side.")
    p.add_argument("--block", type=int, default=4, help="Steps per block (the first is not timed).")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    return p.parse_args(argv)


@torch.inference_mode()
def run(args: argparse.Namespace, model_dir: str, log=print) -> dict:
    """Build the runner, alternate the two paths in blocks; returns the medians (ms) and SDPA / kernel."""
    from sglkit.layers.cpu_kernels.decode_attention import decode_attention_available

    if args.threads:
        torch.set_num_threads(args.threads)
    timed_per_block = args.block - 1
    blocks = 2 * -(-args.steps // timed_per_block)
    total = args.input_len + blocks * args.block + 1
    runner_args = one_batch_args(
        ["--config", args.config, "--dtype", args.dtype, "--batch-size", str(args.batch_size)]
        + ["--input-len", str(args.input_len), "--output-len", str(total - args.input_len)]
        + ["--device", "cpu", "--attention-backend", "torch_native"]
    )
    runner = build_runner(runner_args, str(write_preset(args.config, model_dir)))
    backend = runner.attn_backend
    pool = runner.token_to_kv_pool
    if not decode_attention_available(pool.dtype, pool.dtype, pool.head_dim, 1):
        raise SystemExit(
            f"sglkit's CPU decode attention does not run {args.dtype} / this shape on this machine."
        )
    batch = StaticBatch(runner, args.batch_size, args.input_len, total - args.input_len)
    ids = runner.forward(batch.prefill()).argmax(-1)
    times: dict[str, list[float]] = {"kernel": [], "sdpa": []}
    step = 0
    for block in range(blocks):
        side = "kernel" if block % 2 == 0 else "sdpa"
        backend.use_cpu_kernel = side == "kernel"
        for i in range(args.block):
            forward_batch = batch.decode(step, ids)
            tic = time.perf_counter()
            ids = runner.forward(forward_batch).argmax(-1)
            if i:
                times[side].append(time.perf_counter() - tic)
            step += 1
    backend.use_cpu_kernel = True
    kernel_ms, sdpa_ms = (statistics.median(times[s]) * 1e3 for s in ("kernel", "sdpa"))
    result = {
        "config": args.config,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "input_len": args.input_len,
        "kernel_ms": kernel_ms,
        "sdpa_ms": sdpa_ms,
        "sdpa_over_kernel": sdpa_ms / kernel_ms,
    }
    log(
        f"decode step, {args.config} {args.dtype}, batch {args.batch_size}, ~{args.input_len} tokens of KV each, "
        f"{len(times['kernel'])} steps a side: kernel {kernel_ms:.2f} ms, SDPA {sdpa_ms:.2f} ms, "
        f"SDPA / kernel {result['sdpa_over_kernel']:.3f}"
    )
    return result


def main(argv: list[str] | None = None) -> dict:
    """Parse, run in a temporary model folder, return the result."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sglkit-decode-attention-") as model_dir:
        return run(args, model_dir)


if __name__ == "__main__":
    main()
