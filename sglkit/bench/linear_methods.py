"""Benchmarks: linear methods side by side (one model runner each, decode steps interleaved, paired ratios).

``python -m sglkit.bench.linear_methods --config small --dtype float32 --methods packed int8wo int4wo-64
--batch-size 1`` builds one ``ModelRunner`` per method on the same dummy weights (``bench_one_batch``'s presets),
gives the linears that method (``dense``: ``F.linear``; ``packed``: the default oneDNN packing, ``packed-1`` /
``packed-any``: oneDNN's layout for one row / for any batch, ``blocked``: sglkit's bf16 kernel; a
``--torchao-config`` value: the "proj" linears quantized), then times prefill and decode steps alternating
between the runners, so every method sees the same machine load. It prints each method's median step time and
the median of its per-step speed ratios against the first method: steadier than separate runs on a shared
machine. Figures: docs/quantization.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

__all__ = ["PACKING_HINTS", "main", "parse_args", "run", "use_method"]

# method name -> PackedLinearMethod's (batch_size_hint, kernel): the default; oneDNN's one-row and general
# layouts; sglkit's own kernel (sglkit.layers.cpu_kernels). The logits head follows the kernel.
PACKING_HINTS: dict[str, tuple] = {
    "packed": (1, "auto"),
    "packed-1": (1, "onednn"),
    "packed-any": (None, "onednn"),
    "blocked": (1, "blocked"),
}


def use_method(model: torch.nn.Module, method: str) -> None:
    """Give ``model``'s linears ``method`` ("dense", "packed" or a --torchao-config value) and process them."""
    from sglkit.layers.linear import Linear, pack_linear_weights, quantize_linear_weights
    from sglkit.layers.quantization import DenseLinearMethod, PackedLinearMethod

    hint, kernel = PACKING_HINTS.get(method, (1, "auto"))
    for module in model.modules():
        if isinstance(module, Linear):
            module.set_linear_method(
                DenseLinearMethod() if method == "dense" else PackedLinearMethod(hint, kernel)
            )
    if method not in ("dense", *PACKING_HINTS):
        quantize_linear_weights(model, method)
    pack_linear_weights(model)  # the logits head with the default kernel
    head = getattr(model, "logits_head", None)
    if kernel != "auto" and hasattr(head, "pack_for_logits"):
        head.pack_for_logits(kernel)


def run(args: argparse.Namespace, log=print) -> dict[str, dict[str, float]]:
    """Time every method of ``args``; per method: median decode / prefill seconds and ratios vs the first."""
    from sglkit.bench.one_batch import PRESETS, StaticBatch, build_runner, write_preset
    from sglkit.bench.one_batch import parse_args as one_batch_args
    from sglkit.layers.linear import linear_weight_bytes

    if args.config not in PRESETS:
        raise ValueError(f"--config must be one of {sorted(PRESETS)}.")
    argv = ["--config", args.config, "--dtype", args.dtype, "--batch-size", str(args.batch_size)]
    argv += ["--input-len", str(args.input_len), "--output-len", str(args.steps + 1)]
    shape = one_batch_args(argv)
    runners = {}
    with tempfile.TemporaryDirectory(prefix="sglkit-linear-methods-") as tmp:
        path = str(write_preset(args.config, tmp))
        for method in args.methods:
            runners[method] = build_runner(shape, path)
            use_method(runners[method].model, method)
    decode: dict[str, list[float]] = {m: [] for m in args.methods}
    prefill: dict[str, list[float]] = {m: [] for m in args.methods}
    with torch.inference_mode():
        for _ in range(args.rounds):
            state = {}
            for method, runner in runners.items():
                batch = StaticBatch(runner, args.batch_size, args.input_len, args.steps + 1)
                start = time.perf_counter()
                logits = runner.forward(batch.prefill())
                prefill[method].append(time.perf_counter() - start)
                state[method] = (batch, logits.argmax(-1))
            for step in range(args.steps):
                order = args.methods if step % 2 == 0 else args.methods[::-1]
                for method in order:
                    batch, next_ids = state[method]
                    forward_batch = batch.decode(step, next_ids)
                    start = time.perf_counter()
                    logits = runners[method].forward(forward_batch)
                    decode[method].append(time.perf_counter() - start)
                    state[method] = (batch, logits.argmax(-1))
    base = args.methods[0]
    results = {}
    bs, tokens = args.batch_size, args.batch_size * args.input_len
    for method, runner in runners.items():
        row = {
            "linear_weight_mib": linear_weight_bytes(runner.model) / 2**20,
            "decode_s": statistics.median(decode[method]),
            "prefill_s": statistics.median(prefill[method]),
            "decode_vs_first": statistics.median(a / b for a, b in zip(decode[base], decode[method])),
            "prefill_vs_first": statistics.median(a / b for a, b in zip(prefill[base], prefill[method])),
        }
        results[method] = row
        log(
            f"{args.dtype} bs={bs} threads={torch.get_num_threads()} {method:<10} "
            f"linear {row['linear_weight_mib']:7.0f} MiB | decode {bs / row['decode_s']:7.1f} tok/s "
            f"({row['decode_vs_first']:4.2f}x {base}) | prefill {tokens / row['prefill_s']:7.1f} tok/s "
            f"({row['prefill_vs_first']:4.2f}x)"
        )
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (bench_one_batch's shapes; methods compared against the first)."""
    p = argparse.ArgumentParser(
        prog="python -m sglkit.bench.linear_methods", description=__doc__.split("\n")[0]
    )
    p.add_argument("--config", default="small", help="A bench_one_batch preset (dummy weights).")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--methods", nargs="+", default=["packed", "int8wo", "int4wo-64"])
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="Decode steps per round.")
    p.add_argument("--rounds", type=int, default=3)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Entry point of ``python -m sglkit.bench.linear_methods``."""
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
