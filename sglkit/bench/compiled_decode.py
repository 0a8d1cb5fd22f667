"""``python -m sglkit.bench.compiled_decode``: eager vs --enable-torch-compile decode, side by side in one process.

One ModelRunner is built with ``enable_torch_compile`` on a named shape (``sglkit.bench.one_batch.PRESETS``,
dummy weights) and one static batch is prefilled; then decode steps alternate in pairs between the eager
forward (the compiled runner switched off) and the compiled one, on the same KV pool, threads and memory state,
so the machine's drift hits both sides alike. Prints the median step time of each side and their ratio. (That
both sides compute the same tokens is tests/runtime/executor/test_compiled_decode.py's job.)
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
    """--config, --dtype, --batch-size, --input-len, --steps (per side), --threads."""
    p = argparse.ArgumentParser(
        prog="python -m sglkit.bench.compiled_decode", description=__doc__.split("\n")[0]
    )
    p.add_argument("--config", default="small", choices=sorted(PRESETS))
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=40, help="Decode steps per side (they alternate in pairs).")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    return p.parse_args(argv)


@torch.inference_mode()
def run(args: argparse.Namespace, model_dir: str, log=print) -> dict:
    """Build the runner, alternate the sides; returns the medians (ms) and eager / compiled."""
    if args.threads:
        torch.set_num_threads(args.threads)
    total = args.input_len + 2 * args.steps + 1
    runner_args = one_batch_args(
        ["--config", args.config, "--dtype", args.dtype, "--batch-size", str(args.batch_size)]
        + ["--input-len", str(args.input_len), "--output-len", str(total - args.input_len)]
        + ["--enable-torch-compile"]
    )
    start = time.perf_counter()
    runner = build_runner(runner_args, str(write_preset(args.config, model_dir)))
    load_and_compile_s = time.perf_counter() - start
    compiled = runner.compiled_decode
    batch = StaticBatch(runner, args.batch_size, args.input_len, total - args.input_len)
    ids = runner.forward(batch.prefill()).argmax(-1)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for step in range(2 * args.steps):
        side = "compiled" if (step // 2) % 2 else "eager"
        runner.compiled_decode = compiled if side == "compiled" else None
        forward_batch = batch.decode(step, ids)
        tic = time.perf_counter()
        ids = runner.forward(forward_batch).argmax(-1)
        times[side].append(time.perf_counter() - tic)
    runner.compiled_decode = compiled
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
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sglkit-compiled-decode-") as model_dir:
        return run(args, model_dir)


if __name__ == "__main__":
    main()
