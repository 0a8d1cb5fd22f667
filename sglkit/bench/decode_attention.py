"""``python -m sglkit.bench.decode_attention``: CPU decode steps with sglkit's attention kernel vs SDPA, one process.

One ModelRunner (a ``bench_one_batch`` preset, dummy weights, the torch_native backend) prefills one static
batch; then decode steps alternate in blocks between the two decode paths of the backend: sglkit's kernel
reading the paged pool (``sglkit.layers.cpu_kernels.decode_attention``) and SDPA over the gathered, padded K/V
with its per-batch workspace (``use_cpu_kernel=False``). The first step of each block is not timed (SDPA's
workspace is rebuilt there). Prints both medians and SDPA / kernel. Same runner, KV pool, weights and threads.
"""

from __future__ import annotations

import argparse

import torch

from sglkit.bench.decode_sides import (
    add_block_args,
    add_shape_args,
    alternate_sides,
    block_count,
    main_in_temp_folder,
    shape_runner,
    side_by_side,
)

__all__ = ["main", "parse_args", "run"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """--config, --dtype, --batch-size, --input-len, --steps (timed per side), --block, --threads."""
    p = argparse.ArgumentParser(
        prog="python -m sglkit.bench.decode_attention", description=__doc__.split("\n")[0]
    )
    add_shape_args(p, batch_size=32, input_len=512)
    add_block_args(p, steps=12)
    return p.parse_args(argv)


@torch.inference_mode()
def run(args: argparse.Namespace, model_dir: str, log=print) -> dict:
    """Build the runner, alternate the two paths in blocks; returns the medians (ms) and SDPA / kernel."""
    from sglkit.layers.cpu_kernels.decode_attention import decode_attention_available

    blocks = block_count(args.steps, args.block)
    cpu_native = ["--device", "cpu", "--attention-backend", "torch_native"]
    runner = shape_runner(args, model_dir, blocks * args.block, cpu_native)
    backend = runner.attn_backend
    pool = runner.token_to_kv_pool
    if not decode_attention_available(pool.dtype, pool.dtype, pool.head_dim, 1):
        raise SystemExit(
            f"sglkit's CPU decode attention does not run {args.dtype} / this shape on this machine."
        )

    def switch(side: str) -> None:
        backend.use_cpu_kernel = side == "kernel"

    times = alternate_sides(runner, args, ("kernel", "sdpa"), switch, blocks=blocks, block=args.block)
    switch("kernel")
    result, line = side_by_side(args, times, "kernel", "sdpa", {"kernel": "kernel", "sdpa": "SDPA"})
    log(line)
    return result


def main(argv: list[str] | None = None) -> dict:
    """Parse, run in a temporary model folder, return the result."""
    return main_in_temp_folder(parse_args, run, "decode-attention", argv)


if __name__ == "__main__":
    main()
