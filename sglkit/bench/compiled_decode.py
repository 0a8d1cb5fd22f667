"""``python -m sglkit.bench.compiled_decode``: eager vs --enable-torch-compile decode, side by side in one process.

One ModelRunner is built with ``enable_torch_compile`` on a named shape (``sglkit.bench.one_batch.PRESETS``,
dummy weights) and one static batch is prefilled; then decode steps alternate in pairs between the eager
forward (the compiled runner switched off) and the compiled one, on the same KV pool, threads and memory state,
so the machine's drift hits both sides alike. Prints the median step time of each side and their ratio. (That
both sides compute the same tokens is tests/runtime/executor/test_compiled_decode.py's job.) Both sides run the
layer modules: the CPU decode stack, with which start-up compiles nothing (``sglkit.bench.decode_stack``
measures it), is off here.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sglkit.bench.decode_sides import add_shape_args, alternate_sides, main_in_temp_folder, shape_runner

__all__ = ["main", "parse_args", "run"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """--config, --dtype, --batch-size, --input-len, --steps (per side), --threads."""
    p = argparse.ArgumentParser(
        prog="python -m sglkit.bench.compiled_decode", description=__doc__.split("\n")[0]
    )
    add_shape_args(p, batch_size=1, input_len=128)
    p.add_argument("--steps", type=int, default=40, help="Decode steps per side (they alternate in pairs).")
    return p.parse_args(argv)


def _alternate(runner, args: argparse.Namespace, compiled) -> dict[str, list[float]]:
    def switch(side: str) -> None:
        runner.compiled_decode = compiled if side == "compiled" else None

    times = alternate_sides(runner, args, ("eager", "compiled"), switch, blocks=args.steps, block=2)
    switch("compiled")
    return times


@torch.inference_mode()
def run(args: argparse.Namespace, model_dir: str, log=print) -> dict:
    """Build the runner, alternate the sides; returns the medians (ms) and eager / compiled."""
    from sglkit.layers.cpu_kernels.decode_stack import set_cpu_decode_stack

    stack_was_on = set_cpu_decode_stack(False)  # with the decode stack on, start-up compiles nothing
    try:
        start = time.perf_counter()
        runner = shape_runner(args, model_dir, 2 * args.steps, ["--enable-torch-compile"])
        load_and_compile_s = time.perf_counter() - start
        compiled = runner.compiled_decode
        times = _alternate(runner, args, compiled)
    finally:
        set_cpu_decode_stack(stack_was_on)

    eager_ms, compiled_ms = (statistics.median(times[s]) * 1e3 for s in ("eager", "compiled"))
    result = {
        "config": args.config,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "eager_ms": eager_ms,
        "compiled_ms": compiled_ms,
        "eager_over_compiled": eager_ms / compiled_ms,
        "compiled_runs": compiled.num_runs,
        "load_and_compile_s": load_and_compile_s,
    }
    log(
        f"decode step, {args.config} {args.dtype}, batch {args.batch_size}, {args.steps} steps a side: "
        f"eager {eager_ms:.2f} ms, compiled {compiled_ms:.2f} ms, ratio {result['eager_over_compiled']:.3f} "
        f"(load + compile {load_and_compile_s:.1f} s)"
    )
    return result


def main(argv: list[str] | None = None) -> dict:
    """Parse, run in a temporary model folder, return the result."""
    return main_in_temp_folder(parse_args, run, "compiled-decode", argv)


if __name__ == "__main__":
    main()
