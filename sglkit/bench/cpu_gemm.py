"""``python -m sglkit.bench.cpu_gemm``: sglkit's CPU GEMM against oneDNN's packed GEMM, per shape and row count.

For each linear shape of a ``bench_one_batch`` preset (q/k/v, gate/up, down, the logits head) it makes
``--copies`` random weights (more than the last-level cache holds, so every call streams its weight from memory,
as in a model), blocks them for sglkit's kernel (``sglkit.layers.cpu_kernels``) and packs them for oneDNN (batch
hint 1, sglkit's oneDNN default, or ``--onednn-hint any``), then times both over the same inputs, alternating
rounds. Prints milliseconds per GEMM, the weight bandwidth or GFLOP/s, and oneDNN / sglkit (above 1: sglkit's
kernel is faster). Whole-model figures: ``python -m sglkit.bench.linear_methods --methods packed-1 blocked``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["SHAPES", "main", "parse_args", "run"]

# name -> (out_features, in_features) of the 360M `small` preset (hidden 960, 15 / 5 heads of 64, MLP 2560)
SHAPES = {
    "qkv": (1600, 960),
    "o": (960, 960),
    "gate_up": (5120, 960),
    "down": (960, 2560),
    "logits": (32000, 960),
}


def _round(calls: list[Callable[[], object]]) -> float:
    """Seconds per call over one pass through ``calls``."""
    start = time.perf_counter()
    for call in calls:
        call()
    return (time.perf_counter() - start) / len(calls)


def run(args: argparse.Namespace, log=print) -> list[dict]:
    """Time every (shape, rows) pair; one dict per pair."""
    from sglkit.layers.cpu_kernels.blocked_gemm import block_weight, blocked_gemm_available
    from sglkit.layers.quantization.packed import pack_weight, packed_matmul

    dtype = getattr(torch, args.dtype)
    if not blocked_gemm_available(dtype):
        raise SystemExit(
            f"sglkit's CPU GEMM does not run {args.dtype} on this CPU (see sglkit.layers.cpu_kernels)."
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    hint = None if args.onednn_hint == "any" else int(args.onednn_hint)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for name in args.shapes:
        n, k = SHAPES[name]
        copies = max(1, args.copies if name != "logits" else args.copies // 8)
        weights = [torch.randn(n, k, generator=gen).to(dtype) for _ in range(copies)]
        onednn = [pack_weight(w, hint, kernel="onednn") for w in weights]
        blocked = [block_weight(w) for w in weights]
        if any(p is None for p in onednn):
            raise SystemExit(f"oneDNN does not pack {args.dtype} on this CPU.")
        del weights
        for m in args.rows:
            x = torch.randn(m, k, generator=gen).to(dtype)
            sides = {
                "onednn": [lambda p=p, x=x: packed_matmul(x, p) for p in onednn],
                "sglkit": [lambda p=p, x=x: packed_matmul(x, p) for p in blocked],
            }
            times: dict[str, list[float]] = {side: [] for side in sides}
            with torch.inference_mode():
                for side in sides:
                    _round(sides[side])  # warm-up
                for _ in range(args.rounds):
                    for side, calls in sides.items():
                        times[side].append(_round(calls))
            onednn_s, sglkit_s = (statistics.median(times[s]) for s in ("onednn", "sglkit"))
            row = {
                "shape": name,
                "rows": m,
                "onednn_ms": onednn_s * 1e3,
                "sglkit_ms": sglkit_s * 1e3,
                "sglkit_gb_s": n * k * x.element_size() / sglkit_s / 1e9,
                "sglkit_gflop_s": 2 * m * n * k / sglkit_s / 1e9,
                "speedup": onednn_s / sglkit_s,
            }
            rows.append(row)
            log(
                f"{args.dtype} {name:<7} [{n} x {k}] rows {m:4d}: oneDNN {row['onednn_ms']:8.3f} ms, "
                f"sglkit {row['sglkit_ms']:8.3f} ms ({row['sglkit_gb_s']:5.1f} GB/s, "
                f"{row['sglkit_gflop_s']:6.1f} GFLOP/s), oneDNN / sglkit {row['speedup']:.2f}"
            )
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """--dtype, --shapes, --rows, --copies, --rounds, --threads, --onednn-hint."""
    p = argparse.ArgumentParser(prog="python -m sglkit.bench.cpu_gemm", description=__doc__.split("\n")[0])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument(
        "--shapes", nargs="+", default=["qkv", "gate_up", "down", "logits"], choices=sorted(SHAPES)
    )
    p.add_argument("--rows", nargs="+", type=int, default=[1, 2, 4, 8, 32, 128, 512])
    p.add_argument("--copies", type=int, default=16, help="Weights per shape, cycled (logits: copies / 8).")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    p.add_argument("--onednn-hint", default="1", help="oneDNN's batch-size hint: a number or 'any'.")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    """Entry point of ``python -m sglkit.bench.cpu_gemm``."""
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
