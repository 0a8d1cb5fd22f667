"""Benchmark workloads: random token prompts and shared-prefix prompts, deterministic from a seed; the serving
benchmark's ``Workload`` (prompts with the number of tokens each request must generate)."""

from __future__ import annotations

import random
from dataclasses import dataclass


def random_prompts(
    num_prompts: int,
    input_len: int,
    vocab_size: int,
    seed: int = 0,
    range_ratio: float = 1.0,
    reserved_ids: set[int] | None = None,
) -> list[list[int]]:
    """``num_prompts`` prompts of token ids; lengths uniform in [range_ratio * input_len, input_len]."""
    rng = random.Random(seed)
    allowed = [t for t in range(vocab_size) if t not in (reserved_ids or set())]
    low = max(1, int(input_len * range_ratio))
    return [[rng.choice(allowed) for _ in range(rng.randint(low, input_len))] for _ in range(num_prompts)]


def shared_prefix_prompts(
    num_prompts: int,
    prefix_len: int,
    suffix_len: int,
    vocab_size: int,
    seed: int = 0,
    reserved_ids: set[int] | None = None,
) -> list[list[int]]:
    """``num_prompts`` prompts sharing one ``prefix_len``-token prefix, each with its own suffix."""
    prefix = random_prompts(1, prefix_len, vocab_size, seed, 1.0, reserved_ids)[0]
    suffixes = random_prompts(num_prompts, suffix_len, vocab_size, seed + 1, 1.0, reserved_ids)
    return [prefix + s for s in suffixes]


@dataclass
class Workload:
    """Prompts (token ids) with the number of tokens each request must generate."""

    prompts: list[list[int]]
    output_lens: list[int]


def make_workload(
    num_prompts: int,
    input_len: int,
    output_len: int,
    range_ratio: float,
    vocab_size: int,
    seed: int = 0,
    reserved_ids: set[int] | None = None,
) -> Workload:
    """Random prompts and output lengths, both uniform in [range_ratio * len, len]."""
    prompts = random_prompts(num_prompts, input_len, vocab_size, seed, range_ratio, reserved_ids)
    rng = random.Random(seed + 1)
    low = max(1, int(output_len * range_ratio))
    return Workload(prompts, [rng.randint(low, output_len) for _ in range(num_prompts)])
