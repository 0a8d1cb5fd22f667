"""Benchmarks: the sampler's step on CPU, read-back paths on vs off, interleaved in one process.

``python -m sglkit.bench.sampler_step --batch-size 32 --vocab-size 32000 --steps 64`` runs the scheduler's
sampling work for one decode step (``SamplingBatchInfo.from_reqs`` with persistent penalty rows,
``Sampler.sample``, ``record_output``) on random logits, for two copies of the same requests: one sampler with
``cpu_readback=True`` (the CPU default: top_p as wide as it needs, penalties only on seen tokens) and one with
``cpu_readback=False`` (the accelerator's dense, sync-free path run on CPU). Steps alternate between the two, so
both see the same machine load; it prints each side's median step time and their ratio. Workloads: ``sampled``
(temperature 0.8, top_p 0.9, top_k 50, min_p 0.02, all three penalties, half the rows seeded), ``penalised``
(temperature 1.0 and the three penalties only), ``greedy``. Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

__all__ = ["WORKLOADS", "main", "make_reqs", "parse_args", "run"]

WORKLOADS = ("sampled", "penalised", "greedy")


def make_reqs(workload: str, batch_size: int, prompt_len: int, vocab_size: int, seed: int = 0) -> list:
    """``batch_size`` Req objects with random prompts of ``prompt_len`` tokens and ``workload``'s parameters."""
    from sglkit.core.req import Req
    from sglkit.core.sampling_params import SamplingParams

    gen = torch.Generator().manual_seed(seed)
    reqs = []
    for i in range(batch_size):
        if workload == "greedy":
            params = SamplingParams(temperature=0.0)
        elif workload == "penalised":
            params = SamplingParams(
                temperature=1.0, repetition_penalty=1.1, frequency_penalty=0.3, presence_penalty=0.2
            )
        else:
            params = SamplingParams(
                temperature=0.8,
                top_p=0.9,
                top_k=50,
                min_p=0.02,
                repetition_penalty=1.1,
                frequency_penalty=0.3,
                presence_penalty=0.2,
                sampling_seed=i if i % 2 else None,
            )
        prompt = torch.randint(0, vocab_size, (prompt_len,), generator=gen).tolist()
        reqs.append(Req(rid=str(i), origin_input_ids=prompt, sampling_params=params))
    return reqs


class _Side:
    """One sampler and its own copy of the requests and penalty rows."""

    def __init__(self, args: argparse.Namespace, cpu_readback: bool) -> None:
        from sglkit.runtime.executor.sampling import PenaltyCounts, Sampler

        self.reqs = make_reqs(args.workload, args.batch_size, args.prompt_len, args.vocab_size)
        self.counts = PenaltyCounts(args.vocab_size)
        self.sampler = Sampler(cpu_readback=cpu_readback)
        self.vocab_size = args.vocab_size
        self.times: list[float] = []

    def step(self, logits: torch.Tensor) -> None:
        """Build the step's info, sample, record: logits [B, V] float32."""
        from sglkit.runtime.executor.sampling import SamplingBatchInfo

        start = time.perf_counter()
        info = SamplingBatchInfo.from_reqs(self.reqs, self.vocab_size, {0}, "cpu", self.counts)
        ids = self.sampler.sample(logits, info)
        info.record_output(ids)
        for req, token_id in zip(self.reqs, ids.tolist()):
            req.output_ids.append(token_id)
        self.times.append(time.perf_counter() - start)


def run(args: argparse.Namespace, log=print) -> dict[str, float]:
    """Median step seconds of both sides and ``dense_over_readback`` (how many times slower the dense path is)."""
    torch.manual_seed(0)
    readback, dense = _Side(args, cpu_readback=True), _Side(args, cpu_readback=False)
    gen = torch.Generator().manual_seed(1)
    for step in range(args.steps):
        logits = torch.randn(args.batch_size, args.vocab_size, generator=gen) * 4
        first, second = (readback, dense) if step % 2 else (dense, readback)
        first.step(logits)
        second.step(logits)
    result = {
        "readback_ms": statistics.median(readback.times[1:]) * 1e3,
        "dense_ms": statistics.median(dense.times[1:]) * 1e3,
    }
    result["dense_over_readback"] = result["dense_ms"] / result["readback_ms"]
    log(
        f"sampler step, {args.workload}, batch {args.batch_size}, vocab {args.vocab_size}, "
        f"{torch.get_num_threads()} threads: cpu_readback {result['readback_ms']:.2f} ms, "
        f"dense {result['dense_ms']:.2f} ms, ratio {result['dense_over_readback']:.2f}x"
    )
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=WORKLOADS, default="sampled")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Entry point of ``python -m sglkit.bench.sampler_step``."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return run(args)


if __name__ == "__main__":
    main()
