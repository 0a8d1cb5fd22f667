"""Benchmarks: decode steps of one runner alternating between two settings (the side-by-side A/B helpers).

``python -m sglkit.bench.compiled_decode`` (eager vs compiled) and ``python -m sglkit.bench.decode_attention``
(SDPA vs sglkit's CPU kernel) build one ModelRunner on a ``bench_one_batch`` preset, prefill one static batch and
then time decode steps in blocks, switching the setting between blocks, so both sides share the runner, KV pool,
weights, threads and the machine's drift.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from sglkit.bench.one_batch import PRESETS, StaticBatch, build_runner, write_preset
from sglkit.bench.one_batch import parse_args as one_batch_args

__all__ = ["add_shape_args", "alternate_sides", "shape_runner"]


def add_shape_args(p: argparse.ArgumentParser, batch_size: int, input_len: int) -> None:
    """--config, --dtype, --batch-size, --input-len, --threads (the shape both sides decode)."""
    p.add_argument("--config", default="small", choices=sorted(PRESETS))
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--input-len", type=int, default=input_len)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")


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
