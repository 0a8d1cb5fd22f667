"""``python -m sglkit.bench.decode_stack``: CPU decode steps as one C++ call for all layers vs the layer modules.

One ModelRunner (a ``bench_one_batch`` preset, dummy weights) prefills one static batch; then decode steps
alternate in blocks between the decode stack (``sglkit.models.cpu_decode_stack``: every layer's kernels called
from C++) and the decoder layers' own Python (``set_cpu_decode_stack(False)``), which call the same kernels. Same
runner, KV pool, weights and threads; prints both medians and layers / stack: what the per-layer Python costs.
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
    """--config, --dtype, --batch-size, --input-len, --torchao-config, --steps (timed per side), --block,
    --threads."""
    p = argparse.ArgumentParser(
        prog="python -m sglkit.bench.decode_stack", description=__doc__.split("\n")[0]
    )
    add_shape_args(p, batch_size=1, input_len=128)
    p.add_argument("--torchao-config", default="", help="int8wo: the stack on int8 weights.")
    add_block_args(p, steps=20)
    return p.parse_args(argv)


@torch.inference_mode()
def run(args: argparse.Namespace, model_dir: str, log=print) -> dict:
    """Build the runner, alternate the stack and the layers in blocks; returns the medians (ms) and
    layers / stack."""
    from sglkit.layers.cpu_kernels.decode_stack import set_cpu_decode_stack

    blocks = block_count(args.steps, args.block)
    extra = ["--device", "cpu"] + (["--torchao-config", args.torchao_config] if args.torchao_config else [])
    runner = shape_runner(args, model_dir, blocks * args.block, extra)
    stack = runner.model.model.cpu_decode_stack
    was_on = set_cpu_decode_stack(True)
    try:
        times = alternate_sides(
            runner,
            args,
            ("stack", "layers"),
            lambda side: set_cpu_decode_stack(side == "stack"),
            blocks,
            args.block,
        )
    finally:
        set_cpu_decode_stack(was_on)
    if stack.reason is not None:
        raise SystemExit(f"The decode stack does not run this model here: {stack.reason}.")
    result, line = side_by_side(args, times, "stack", "layers", {"stack": "stack", "layers": "layers"})
    log(line)
    return result


def main(argv: list[str] | None = None) -> dict:
    """Parse, run in a temporary model folder, return the result."""
    return main_in_temp_folder(parse_args, run, "decode-stack", argv)


if __name__ == "__main__":
    main()
