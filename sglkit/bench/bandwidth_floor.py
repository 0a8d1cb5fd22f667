"""``python -m sglkit.bench.bandwidth_floor``: batch-1 decode against the machine's memory bandwidth, back to back.

A batch-1 decode step must read every weight once (the embedding's one row aside) and the request's KV, so its
floor is those bytes over the memory bandwidth. This VM's bandwidth moves by a third within an hour, so the
benchmark measures both side by side in one process, ``--rounds`` times: a read loop (``sum`` over distinct
float32 buffers as large as the step's bytes, best of 5 passes, ``--threads`` threads), then ``sglkit.Engine``'s
batch-1 decode ((t(N tokens) - t(1 token)) / (N - 1), greedy, best of 2), then the read loop again. Each round
prints the step, the floor at the two read loops' mean rate, and floor / step: the share of the bandwidth a
decode step gets. Figures: docs/benchmarks_peers.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

__all__ = ["decode_step_bytes", "main", "parse_args", "read_rate", "run"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """--model-path or --model-shape, --dtype, --prompt-len, --decode-len, --rounds, --threads, --seed."""
    p = argparse.ArgumentParser(
        prog="python -m sglkit.bench.bandwidth_floor", description=__doc__.split("\n")[0]
    )
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--model-path", help="An HF-format model folder.")
    group.add_argument("--model-shape", help="A bench_one_batch preset with random weights (e.g. small).")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--decode-len", type=int, default=128, help="N: tokens generated per timed request.")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def decode_step_bytes(runner, context_len: int) -> int:
    """Bytes a batch-1 decode step of ``runner``'s model reads: every linear's held weight (packed or quantized
    form), the logits head (its packed copy where it holds one) and one request's KV of ``context_len`` tokens."""
    from sglkit.layers.linear import Linear
    from sglkit.layers.quantization.packed import packed_nbytes

    model = runner.model
    total = sum(m.linear_method.weight_bytes(m) for m in model.modules() if isinstance(m, Linear))
    head = getattr(model, "logits_head", None)
    if head is not None:
        packed = getattr(head, "packed_logits_weight", None)
        total += (
            packed_nbytes(packed) if packed is not None else head.weight.numel() * head.weight.element_size()
        )
    pool = runner.token_to_kv_pool
    k_buf, v_buf = pool.get_kv_buffer(0)
    per_token = (
        k_buf[0].numel() * k_buf.element_size() + v_buf[0].numel() * v_buf.element_size()
    ) * pool.num_layers
    return total + per_token * context_len


def read_rate(nbytes: int, passes: int = 5) -> float:
    """GB/s of ``sum`` over 32 distinct float32 buffers of ``nbytes`` in all: the best of ``passes`` passes."""
    buffers = [torch.ones(max(1, nbytes // 32 // 4)) for _ in range(32)]
    size = sum(b.numel() * 4 for b in buffers)
    best = float("inf")
    for _ in range(passes):
        tic = time.perf_counter()
        for b in buffers:
            b.sum()
        best = min(best, time.perf_counter() - tic)
    return size / best / 1e9


def _decode_step_s(engine, prompt: list[int], n: int) -> float:
    """Seconds per decode step of one request: (t(n tokens) - t(1 token)) / (n - 1), the best of two."""

    def timed(tokens: int) -> float:
        params = {"temperature": 0, "max_new_tokens": tokens, "ignore_eos": True}
        tic = time.perf_counter()
        engine.generate(input_ids=[prompt], sampling_params=[params])
        return time.perf_counter() - tic

    return min((timed(n) - timed(1)) / (n - 1) for _ in range(2))


def run(args: argparse.Namespace, model_path: str, log=print) -> dict:
    """Build the Engine, measure ``args.rounds`` rounds; returns the bytes, each round's figures and the median
    floor / step."""
    import sglkit

    torch.set_num_threads(args.threads)
    if args.decode_len < 2:
        raise SystemExit("--decode-len must be at least 2 (a step is timed between 1 and N tokens).")
    engine = sglkit.Engine(
        model_path=model_path,
        dtype=args.dtype,
        random_seed=args.seed,
        max_running_requests=1,
        max_total_tokens=args.prompt_len + args.decode_len + 16,
        disable_radix_cache=True,
    )
    try:
        runner = engine.scheduler.model_runner
        nbytes = decode_step_bytes(runner, args.prompt_len + args.decode_len // 2)
        prompt = torch.randint(
            3, runner.vocab_size, (args.prompt_len,), generator=torch.Generator().manual_seed(0)
        )
        prompt = prompt.tolist()
        _decode_step_s(engine, prompt, min(args.decode_len, 8))  # warm-up
        rounds = []
        for i in range(args.rounds):
            before = read_rate(nbytes)
            step_s = _decode_step_s(engine, prompt, args.decode_len)
            after = read_rate(nbytes)
            rate = (before + after) / 2
            floor_s = nbytes / (rate * 1e9)
            rounds.append(
                dict(
                    read_gbps_before=before,
                    read_gbps_after=after,
                    step_ms=step_s * 1e3,
                    floor_ms=floor_s * 1e3,
                )
            )
            log(
                f"round {i + 1}: read {before:.1f} / {after:.1f} GB/s, decode step {step_s * 1e3:.2f} ms "
                f"({1 / step_s:.1f} tok/s), floor {floor_s * 1e3:.2f} ms: {floor_s / step_s:.0%} of the bandwidth"
            )
    finally:
        engine.shutdown()
    share = statistics.median(r["floor_ms"] / r["step_ms"] for r in rounds)
    log(f"{nbytes / 1e6:.0f} MB read per step; median floor / step {share:.0%}")
    return {"bytes_per_step": nbytes, "rounds": rounds, "floor_over_step": share}


def main(argv: list[str] | None = None) -> dict:
    """Parse, find or write the model, run."""
    args = parse_args(argv)
    model_path = args.model_path
    if model_path is None:
        from sglkit.bench.one_batch import write_preset
        from sglkit.bench.peers.models import ensure_shape_model

        model_path = str(ensure_shape_model(args.model_shape, write_preset, args.seed))
    return run(args, model_path)


if __name__ == "__main__":
    main()
