"""``python -m sglkit.bench.fused_ops``: CPU decode steps with sglkit's fused C++ small ops vs the torch code.

One ModelRunner (a ``bench_one_batch`` preset, dummy weights) prefills one static batch; then decode steps
alternate in blocks between the layers' fused C++ ops (RMSNorm + residual, RoPE, SiLU-and-mul, the KV write:
``sglkit.layers.cpu_kernels.fused_ops``) and their eager torch code (``set_cpu_fused_ops(False)``). Same runner,
KV pool, weights and threads; prints both medians and torch / fused.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from sglkit.bench.decode_sides import add_shape_args, alternate_sides, shape_runner

__all__ = ["main", "parse_args", "run"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """--config, --dtype, --batch-size, --input-len, --steps (timed per side), --block, --threads."""
    p = argparse.ArgumentParser(prog="python -m sglkit.bench.fused_ops", description=__doc__.split("\n")[0])
    add_shape_args(p, batch_size=1, input_len=128)
    p.add_argument("--steps", type=int, default=20, help="Timed decode steps per side.")
    p.add_argument("--block", type=int, default=4, help="Steps per block (3+: the first is not timed).")
    return p.parse_args(argv)


@torch.inference_mode()
def run(args: argparse.Namespace, model_dir: str, log=print) -> dict:
    """Build the runner, alternate fused and torch ops in blocks; returns the medians (ms) and torch / fused."""
    from sglkit.layers.cpu_kernels.fused_ops import cpu_fused_ops_enabled, set_cpu_fused_ops

    timed_per_block = args.block - 1 if args.block > 2 else args.block  # as alternate_sides times them
    blocks = 2 * -(-args.steps // timed_per_block)
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
    fused_ms, torch_ms = (statistics.median(times[s]) * 1e3 for s in ("fused", "torch"))
    result = {
        "config": args.config,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "input_len": args.input_len,
        "fused_ms": fused_ms,
        "torch_ms": torch_ms,
        "torch_over_fused": torch_ms / fused_ms,
    }
    log(
        f"decode step, {args.config} {args.dtype}, batch {args.batch_size}, ~{args.input_len} tokens of KV each, "
        f"{len(times['fused'])} steps a side: fused {fused_ms:.2f} ms, torch {torch_ms:.2f} ms, "
        f"torch / fused {result['torch_over_fused']:.3f}"
    )
    return result


def main(argv: list[str] | None = None) -> dict:
    """Parse, run in a temporary model folder, return the result."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sglkit-fused-ops-") as model_dir:
        return run(args, model_dir)


if __name__ == "__main__":
    main()
