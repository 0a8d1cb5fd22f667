"""``python -m sglkit.bench.prefill_attention``: CPU prefill passes with sglkit's extend attention kernel vs SDPA.

One ModelRunner (a ``bench_one_batch`` preset, dummy weights, the torch_native backend) runs the same static
batch's prefill again and again, alternating between the backend's two extend paths: sglkit's flash-style kernel
over the paged pool (``sglkit.layers.cpu_kernels.extend_attention``) and SDPA over per-request gathered K/V
(``use_cpu_kernel=False``). Same runner, weights and threads; prints both medians, SDPA / kernel and the time the
kernel's attention itself took (so the rest of the pass, GEMMs mostly, can be read off).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sglkit.bench.decode_sides import add_shape_args, main_in_temp_folder, shape_runner
from sglkit.bench.one_batch import StaticBatch

__all__ = ["main", "parse_args", "run"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """--config, --dtype, --batch-size, --input-len (prompt tokens), --rounds (prefills per side), --threads."""
    p = argparse.ArgumentParser(
        prog="python -m sglkit.bench.prefill_attention", description=__doc__.split("\n")[0]
    )
    add_shape_args(p, batch_size=1, input_len=512)
    p.add_argument("--rounds", type=int, default=5, help="Timed prefill passes per side (after one warm-up).")
    return p.parse_args(argv)


@torch.inference_mode()
def run(args: argparse.Namespace, model_dir: str, log=print) -> dict:
    """Build the runner, alternate the two extend paths; returns the medians (ms) and SDPA / kernel."""
    from sglkit.layers.attention import cpu_kernel_paths
    from sglkit.layers.cpu_kernels.extend_attention import extend_attention_available

    cpu_native = ["--device", "cpu", "--attention-backend", "torch_native"]
    runner = shape_runner(args, model_dir, 1, cpu_native)
    pool = runner.token_to_kv_pool
    if not extend_attention_available(pool.dtype, pool.dtype, pool.head_dim, 1):
        raise SystemExit(
            f"sglkit's CPU prefill attention does not run {args.dtype} / this shape on this machine."
        )
    kernel_seconds = [0.0]
    real = cpu_kernel_paths.extend_attention

    def timed(*a, **k):
        tic = time.perf_counter()
        out = real(*a, **k)
        kernel_seconds[0] += time.perf_counter() - tic
        return out

    cpu_kernel_paths.extend_attention = timed
    times: dict[str, list[float]] = {"kernel": [], "sdpa": []}
    attention: list[float] = []
    try:
        for i in range(2 * (args.rounds + 1)):
            side = ("kernel", "sdpa")[i % 2]
            runner.attn_backend.use_cpu_kernel = side == "kernel"
            batch = StaticBatch(runner, args.batch_size, args.input_len, 1)
            forward_batch = batch.prefill()
            kernel_seconds[0] = 0.0
            tic = time.perf_counter()
            runner.forward(forward_batch)
            if i >= 2:  # the first pass of each side warms up
                times[side].append(time.perf_counter() - tic)
                if side == "kernel":
                    attention.append(kernel_seconds[0])
    finally:
        cpu_kernel_paths.extend_attention = real
        runner.attn_backend.use_cpu_kernel = True
    kernel_ms, sdpa_ms = (statistics.median(times[s]) * 1e3 for s in ("kernel", "sdpa"))
    result = {
        "config": args.config,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "input_len": args.input_len,
        "kernel_ms": kernel_ms,
        "sdpa_ms": sdpa_ms,
        "sdpa_over_kernel": sdpa_ms / kernel_ms,
        "kernel_attention_ms": statistics.median(attention) * 1e3,
    }
    log(
        f"prefill, {args.config} {args.dtype}, batch {args.batch_size} x {args.input_len} tokens, "
        f"{len(times['kernel'])} passes a side: kernel {kernel_ms:.1f} ms (its attention "
        f"{result['kernel_attention_ms']:.1f} ms), SDPA {sdpa_ms:.1f} ms, "
        f"SDPA / kernel {result['sdpa_over_kernel']:.3f}"
    )
    return result


def main(argv: list[str] | None = None) -> dict:
    """Parse, run in a temporary model folder, return the result."""
    return main_in_temp_folder(parse_args, run, "prefill-attention", argv)


if __name__ == "__main__":
    main()
