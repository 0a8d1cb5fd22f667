"""Benchmarks: decode steps of one runner alternating between two settings (the side-by-side A/B helpers).

``python -m sglkit.bench.compiled_decode`` (eager vs compiled) and ``python -m sglkit.bench.decode_attention``
(SDPA vs sglkit's CPU kernel) build one ModelRunner on a ``bench_one_batch`` preset, prefill one static batch and
then time decode steps in blocks, switching the setting between blocks, so both sides share the runner, KV pool,
weights, threads and the machine's drift.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from sglkit.bench.one_batch import PRESETS, StaticBatch, build_runner, write_preset
from sglkit.bench.one_batch import parse_args as one_batch_args

__all__ = [
    "add_block_args",
    "add_shape_args",
    "alternate_sides",
    "block_count",
    "main_in_temp_folder",
    "shape_runner",
    "side_by_side",
]


def add_shape_args(p: argparse.ArgumentParser, batch_size: int, input_len: int) -> None:
    """--config, --dtype, --batch-size, --input-len, --threads (the shape both sides decode)."""
    p.add_argument("--config", default="small", choices=sorted(PRESETS))
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--input-len", type=int, default=input_len)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")


def add_block_args(p: argparse.ArgumentParser, steps: int) -> None:
    """--steps (timed decode steps per side) and --block (steps per block), for ``alternate_sides``."""
    p.add_argument("--steps", type=int, default=steps, help="Timed decode steps per side.")
    p.add_argument("--block", type=int, default=4, help="Steps per block (3+: the first is not timed).")


def shape_runner(args: argparse.Namespace, model_dir: str, decode_steps: int, extra: list[str]):
    """A ModelRunner on ``args``' preset (dummy weights written to ``model_dir``), with room for
    ``decode_steps`` decode steps, and ``extra`` bench_one_batch flags; sets the threads first."""
    if args.threads:
        torch.set_num_threads(args.threads)
    runner_args = one_batch_args(
        ["--config", args.config, "--dtype", args.dtype, "--batch-size", str(args.batch_size)]
        + ["--input-len", str(args.input_len), "--output-len", str(decode_steps + 1), *extra]
    )
    return build_runner(runner_args, str(write_preset(args.config, model_dir)))


def block_count(steps: int, block: int) -> int:
    """How many blocks (an even number) give each side at least ``steps`` timed steps, as ``alternate_sides``
    times them (every step of a block but its first when ``block`` > 2)."""
    timed_per_block = block - 1 if block > 2 else block
    return 2 * -(-steps // timed_per_block)


@torch.inference_mode()
def alternate_sides(
    runner,
    args: argparse.Namespace,
    sides: tuple[str, str],
    switch: Callable[[str], None],
    blocks: int,
    block: int,
) -> dict[str, list[float]]:
    """Prefill a static batch of ``args``' shape, then ``blocks`` blocks of ``block`` decode steps, side
    ``sides[i % 2]`` for block i (``switch(side)`` before it); seconds of every step but each block's first when
    ``block`` > 2 (that one pays for the switch), else of every step. Leaves the last side switched on."""
    total_steps = blocks * block
    batch = StaticBatch(runner, args.batch_size, args.input_len, total_steps + 1)
    ids = runner.forward(batch.prefill()).argmax(-1)
    times: dict[str, list[float]] = {side: [] for side in sides}
    for step in range(total_steps):
        side = sides[(step // block) % 2]
        if step % block == 0:
            switch(side)
        forward_batch = batch.decode(step, ids)
        tic = time.perf_counter()
        ids = runner.forward(forward_batch).argmax(-1)
        if block <= 2 or step % block:
            times[side].append(time.perf_counter() - tic)
    return times


def side_by_side(
    args: argparse.Namespace, times: dict[str, list[float]], fast: str, slow: str, labels: dict[str, str]
) -> tuple[dict, str]:
    """The result of an A/B run (the shape, each side's median in ms as ``<side>_ms``, ``<slow>_over_<fast>``)
    and its one-line summary; ``labels`` name the sides in that line."""
    fast_ms, slow_ms = (statistics.median(times[side]) * 1e3 for side in (fast, slow))
    ratio = slow_ms / fast_ms
    result = {
        "config": args.config,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "input_len": args.input_len,
        f"{fast}_ms": fast_ms,
        f"{slow}_ms": slow_ms,
        f"{slow}_over_{fast}": ratio,
    }
    line = (
        f"decode step, {args.config} {args.dtype}, batch {args.batch_size}, ~{args.input_len} tokens of KV each, "
        f"{len(times[fast])} steps a side: {labels[fast]} {fast_ms:.2f} ms, {labels[slow]} {slow_ms:.2f} ms, "
        f"{labels[slow]} / {labels[fast]} {ratio:.3f}"
    )
    return result, line


def main_in_temp_folder(
    parse_args: Callable[[list[str] | None], argparse.Namespace],
    run: Callable[[argparse.Namespace, str], dict],
    name: str,
    argv: list[str] | None = None,
) -> dict:
    """A bench's ``main``: parse ``argv``, run it with a temporary model folder (``sglkit-<name>-*``), return the
    result."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix=f"sglkit-{name}-") as model_dir:
        return run(args, model_dir)
