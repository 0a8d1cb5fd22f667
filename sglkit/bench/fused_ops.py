"""``python -m sglkit.bench.fused_ops``: CPU decode steps with sglkit's fused C++ small ops vs the torch code.

One ModelRunner (a ``bench_one_batch`` preset, dummy weights) prefills one static batch; then decode steps
alternate in blocks between the layers' fused C++ ops (RMSNorm + residual, RoPE, SiLU-and-mul, the KV write:
``sglkit.layers.cpu_kernels.fused_ops``) and their eager torch code (``set_cpu_fused_ops(False)``). Same runner,
KV pool, weights and threads; prints both medians and torch / fused.
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
    p = argparse.ArgumentParser(prog="python -m sglkit.bench.fused_ops", description=__doc__.split("\n")[0])
    add_shape_args(p, batch_size=1, input_len=128)
    add_block_args(p, steps=20)
    return p.parse_args(argv)


@torch.inference_mode()
def run(args: argparse.Namespace, model_dir: str, log=print) -> dict:
    """Build the runner, alternate fused and torch ops in blocks; returns the medians (ms) and torch / fused."""
    from sglkit.layers.cpu_kernels.fused_ops import cpu_fused_ops_enabled, set_cpu_fused_ops

    blocks = block_count(args.steps, args.block)
    runner = shape_runner(args, model_dir, blocks * args.block, ["--device", "cpu"])
    probe = torch.empty(1, dtype=runner.model_config.dtype)
    was_on = set_cpu_fused_ops(True)
    try:
        if not cpu_fused_ops_enabled(probe):
            raise SystemExit(f"sglkit's fused CPU ops do not run {args.dtype} on this machine.")
        times = alternate_sides(
            runner,
            args,
            ("fused", "torch"),
            lambda side: set_cpu_fused_ops(side == "fused"),
            blocks,
            args.block,
        )
    finally:
        set_cpu_fused_ops(was_on)
    result, line = side_by_side(args, times, "fused", "torch", {"fused": "fused", "torch": "torch"})
    log(line)
    return result


def main(argv: list[str] | None = None) -> dict:
    """Parse, run in a temporary model folder, return the result."""
    return main_in_temp_folder(parse_args, run, "fused-ops", argv)


if __name__ == "__main__":
    main()
